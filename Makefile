# coin - build, test and run.  See README.md.
#
#   make            build bin/coin (installs missing Debian packages first)
#   make test       build and run every test; ends with "N passed, N failed"
#   make run        open the workbench (on the shipped toy model, or MODEL=...)
#   make demo       inspect a model, encode a prompt, sample an image (no UI)
#   make fuzz       fuzz the safetensors and .pt readers, FUZZ_SECONDS in all (default 30)
#
# CUDA: when nvcc is on PATH (or NVCC=... is given) the CUDA backend in cuda/
# is compiled and linked in; without it coin is CPU-only.

CC      ?= cc
ifeq ($(origin CC),default)
CC      := gcc
endif
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -MMD -MP
CPPFLAGS += -I. -I/usr/include/cjson
# OpenBLAS built for OpenMP shares libgomp's threads with coin's own loops;
# the pthread build's threads and libgomp's spinning ones fight over the cores
# (measured: a 2-thread VAE decode slower than a 1-thread one).
BLAS_DIR := $(wildcard /usr/lib/x86_64-linux-gnu/openblas-openmp)
ifneq ($(BLAS_DIR),)
LDLIBS  += -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR)
endif
LDLIBS  += -lopenblas -lcjson -lutf8proc -lpng -lsqlite3 -lncursesw -lsixel -lz -lm -fopenmp

NVCC    ?= $(shell command -v nvcc 2>/dev/null)
FUZZ_SECONDS ?= 30
# each fuzz target gets half, at least 1 s (0 would mean no limit)
FUZZ_HALF = $(shell expr \( $(FUZZ_SECONDS) + 1 \) / 2)

BUILD   := build
CORE_SRC := $(wildcard core/*.c)
DB_SRC   := $(wildcard db/*.c)
TUI_SRC  := $(wildcard tui/*.c)
TEST_SRC := $(wildcard tests/*.c)
CUDA_SRC := $(wildcard cuda/*.cu)

CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o) $(BUILD)/vocab_blob.o $(BUILD)/assets_blob.o
DB_OBJ   := $(DB_SRC:%.c=$(BUILD)/%.o)
TUI_OBJ  := $(TUI_SRC:%.c=$(BUILD)/%.o)
# everything of the front end but main(), so tests can call it in-process
TUI_LIB_OBJ := $(filter-out $(BUILD)/tui/main.o,$(TUI_OBJ))
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

ifneq ($(NVCC),)
ifneq ($(CUDA_SRC),)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CPPFLAGS += -DCOIN_HAVE_CUDA=1
LDLIBS   += -lcudart -lcublas -lcurand -lstdc++
endif
endif

VOCAB := $(BUILD)/vocab/bpe_simple_vocab_16e6.txt.gz
DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: all test run demo fuzz deps clean info
all: bin/coin

deps: $(DEPS_STAMP)
$(DEPS_STAMP): tools/install_deps.sh
	@sh tools/install_deps.sh
	@mkdir -p $(BUILD) && touch $@

$(VOCAB): tools/fetch_vocab.sh | $(DEPS_STAMP)
	@sh tools/fetch_vocab.sh $(BUILD)/vocab

# The CLIP merges file is embedded in the library, so coin needs no data
# files at run time.
$(BUILD)/vocab_blob.S: $(VOCAB)
	@mkdir -p $(dir $@)
	@printf '\t.section .rodata\n\t.global coin_vocab_gz\n\t.global coin_vocab_gz_end\n\t.balign 16\ncoin_vocab_gz:\n\t.incbin "%s"\ncoin_vocab_gz_end:\n\t.section .note.GNU-stack,"",@progbits\n' "$(abspath $(VOCAB))" > $@
$(BUILD)/vocab_blob.o: $(BUILD)/vocab_blob.S
	$(CC) -c $< -o $@

# The prompt templates ship inside the binary too; users edit copies of the
# files in assets/ and pass them with --templates.
TEMPLATES := assets/templates/object.txt assets/templates/style.txt
$(BUILD)/assets_blob.S: $(TEMPLATES)
	@mkdir -p $(dir $@)
	@{ printf '\t.section .rodata\n'; \
	   for f in $(TEMPLATES); do n=$$(basename $$f .txt); \
	     printf '\t.global coin_templates_%s\n\t.global coin_templates_%s_end\ncoin_templates_%s:\n\t.incbin "%s"\ncoin_templates_%s_end:\n\t.byte 0\n' \
	       $$n $$n $$n "$(abspath .)/$$f" $$n; done; \
	   printf '\t.section .note.GNU-stack,"",@progbits\n'; } > $@
$(BUILD)/assets_blob.o: $(BUILD)/assets_blob.S
	$(CC) -c $< -o $@

$(BUILD)/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -I. -c $< -o $@

$(BUILD)/libcoin.a: $(CORE_OBJ) $(CUDA_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The ledger (db/) sits between the front end and the engine: tui -> db -> core.
bin/coin: $(TUI_OBJ) $(DB_OBJ) $(BUILD)/libcoin.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TUI_OBJ) $(DB_OBJ) $(BUILD)/libcoin.a $(LDLIBS)

bin/coin_tests: $(TEST_OBJ) $(TUI_LIB_OBJ) $(DB_OBJ) $(BUILD)/libcoin.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(TUI_LIB_OBJ) $(DB_OBJ) $(BUILD)/libcoin.a $(LDLIBS)

# The fuzz target: libFuzzer (clang) over the safetensors reader.  UBSan is
# made fatal, or undefined behaviour would only be printed and pass.
FUZZ_CORE := core/safetensors.c core/fileio.c core/error.c
bin/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c $(FUZZ_CORE) core/safetensors.h | $(DEPS_STAMP)
	@mkdir -p bin
	clang -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -I. -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -o $@ tests/fuzz/fuzz_safetensors.c $(FUZZ_CORE) -lm

# The .pt reader's target.  COIN_FUZZING skips only the zip CRC comparison,
# which no fuzzer could get past.
FUZZ_PT_CORE := core/pickle_pt.c core/safetensors.c core/fileio.c core/error.c
bin/fuzz_pickle_pt: tests/fuzz/fuzz_pickle_pt.c $(FUZZ_PT_CORE) core/pickle_pt.h | $(DEPS_STAMP)
	@mkdir -p bin
	clang -std=c11 -D_GNU_SOURCE -DCOIN_FUZZING -g -O1 -Wall -Wextra -I. -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all -o $@ tests/fuzz/fuzz_pickle_pt.c $(FUZZ_PT_CORE) -lz -lm

fuzz: bin/fuzz_safetensors bin/fuzz_pickle_pt
	@mkdir -p $(BUILD)/fuzz-corpus $(BUILD)/fuzz-corpus-pt
	bin/fuzz_safetensors -max_total_time=$(FUZZ_HALF) -print_final_stats=0 \
	    -dict=tests/fuzz/safetensors.dict -artifact_prefix=$(BUILD)/fuzz- \
	    $(BUILD)/fuzz-corpus tests/fuzz/corpus 2>$(BUILD)/fuzz.log || \
	    { tail -40 $(BUILD)/fuzz.log; echo "fuzz: the safetensors reader crashed; see $(BUILD)/fuzz.log"; exit 1; }
	@grep -E '^(#[0-9]+ +DONE|Done)' $(BUILD)/fuzz.log | tail -1 || true
	@echo "fuzz: $(FUZZ_HALF) s on the safetensors reader, nothing found"
	bin/fuzz_pickle_pt -max_total_time=$(FUZZ_HALF) -print_final_stats=0 \
	    -artifact_prefix=$(BUILD)/fuzz-pt- \
	    $(BUILD)/fuzz-corpus-pt tests/fuzz/corpus_pt 2>$(BUILD)/fuzz_pt.log || \
	    { tail -40 $(BUILD)/fuzz_pt.log; echo "fuzz: the .pt reader crashed; see $(BUILD)/fuzz_pt.log"; exit 1; }
	@grep -E '^(#[0-9]+ +DONE|Done)' $(BUILD)/fuzz_pt.log | tail -1 || true
	@echo "fuzz: $(FUZZ_HALF) s on the .pt reader, nothing found"

test: bin/coin bin/coin_tests fuzz
	@bin/coin_tests

# make run: the workbench, on the toy model coin ships unless MODEL names
# another (COIN_MODEL is what the workbench's forms offer first).
# make demo: the same engine without a terminal UI, on the tiny test model.
MODEL  ?=
PROMPT ?= a photo of a cat giving a thumbs up
DEMO_MODEL ?= $(if $(MODEL),$(MODEL),tests/golden/sd1/model.safetensors)
run: bin/coin
	COIN_MODEL="$(MODEL)" bin/coin

demo: bin/coin
	bin/coin info $(DEMO_MODEL)
	bin/coin encode --model $(DEMO_MODEL) --prompt "$(PROMPT)" --out $(BUILD)/encoded.safetensors
	bin/coin sample --model $(DEMO_MODEL) --prompt "$(PROMPT)" --steps 20 --foreground --out $(BUILD)/sample.png
	bin/coin show $(BUILD)/sample.png

info:
	@echo "CC=$(CC) NVCC=$(if $(NVCC),$(NVCC),none) CUDA sources: $(words $(CUDA_SRC))"

clean:
	rm -rf $(BUILD) bin

-include $(wildcard $(BUILD)/*/*.d)
