/*
 * main.c - coin's entry point: dispatches to a subcommand.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tui/cli.h"
#include "tui/wb.h"

static const char USAGE[] =
    "coin - teach Stable Diffusion a new word (textual inversion), in a terminal\n"
    "\n"
    "usage: coin                        the workbench (? inside lists the keys)\n"
    "       coin COMMAND [options]      (coin COMMAND --help for its options)\n"
    "\n"
    "commands:\n"
    "  info MODEL           what a checkpoint holds: layout, SD version, prediction\n"
    "                       type, dtypes, parameters per component, problems found\n"
    "  tokenize TEXT        the CLIP token ids of a prompt\n"
    "  encode               run the text encoder on a prompt, save the hidden states\n"
    "  sample               text to image: PNGs that carry how they were made\n"
    "  show IMAGE.png       how an image was made (AUTOMATIC1111 text, coin recipe);\n"
    "  show run|sample N    what the ledger recorded\n"
    "  train                textual inversion: learn a trigger word from images\n"
    "  regen IMAGE.png|N    make an image (or ledger sample N) again and compare pixels;\n"
    "                       --from IMAGE.png also follows AUTOMATIC1111's parameters\n"
    "  runs                 the runs in the ledger ($COIN_HOME), newest first\n"
    "  rate SAMPLE good|bad rate an image; prints the run's acceptance\n"
    "  pause|stop N         ask a training run to write a checkpoint and stop\n"
    "  resume N             continue a paused, stopped or crashed run (the same run)\n"
    "  export EMBEDDING|RUN convert an embedding, or a run's checkpoint, to diffusers,\n"
    "                       a1111 or kohya form\n"
    "  worker               run the queued jobs (coin train and coin sample start one)\n"
    "  help                 this text\n"
    "\n"
    "train and sample queue a job in the ledger and a worker detached from the\n"
    "terminal runs it (one job at a time per device; closing the terminal or losing\n"
    "SSH does not stop it; output in $COIN_HOME/logs/).  The command follows the\n"
    "job's progress; Ctrl-C stops following, not the job.  --foreground runs it in\n"
    "the command itself; --no-follow prints only the run id.\n"
    "\n"
    "MODEL is a single-file .safetensors checkpoint (SD 1.x or 2.x, LDM layout) or\n"
    "a diffusers folder.  Pickle .ckpt/.pt files are refused with the command that\n"
    "converts them.\n"
    "\n"
    "Not built yet: the CUDA backend (everything runs on the CPU).\n";

int main(int argc, char **argv)
{
    /* OpenMP threads that spin while they wait steal the cores from
     * everything else (on a shared machine a UNet step ran 2.5x slower);
     * libgomp reads the policy before main runs, so set it and start again. */
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 1) == 0)
        execv("/proc/self/exe", argv);
    if (argc < 2)
        return workbench_main(argc, argv);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(USAGE, stdout);
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {
        {"info", cmd_info},
        {"tokenize", cmd_tokenize},
        {"encode", cmd_encode},
        {"sample", cmd_sample},
        {"show", cmd_show},
        {"train", cmd_train},
        {"regen", cmd_regen},
        {"runs", cmd_runs},
        {"rate", cmd_rate},
        {"pause", cmd_control},
        {"stop", cmd_control},
        {"resume", cmd_control},
        {"export", cmd_export},
        {"worker", cmd_worker},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "coin: unknown command '%s'\n\n%s", cmd, USAGE);
    return 2;
}
