#!/usr/bin/env python3
"""Make tests/golden/sched/sched.safetensors: diffusers 0.31.0 sampler runs for core/sched.c.

The schedulers are built as users build them: the base scheduler from SD's scheduler_config.json
(SD1.5: PNDMScheduler; SD2.1: DDIMScheduler with v_prediction; REFERENCE.md section 8, loaded
with from_config as from_pretrained does), then every other one with
Scheduler.from_config(base.config[, use_karras_sigmas=True]).  epsilon cases start from the SD1.5
config, v cases from the SD2.1 one.  Note what from_config really passes on: the JSON files have
no timestep_spacing, so the base scheduler's "leading" is a filled-in default, recorded in
config["_use_default_values"], and from_config drops it: DDIM and PNDM run "leading", but Euler,
Euler a and DPMSolverMultistep fall back to their own default "linspace" (steps_offset 1 is
passed on but only "leading" uses it).  Cases with "_leading" pass timestep_spacing="leading"
to from_config explicitly, as diffusers' single-file SCHEDULER_DEFAULT_CONFIG does.

Each case runs StableDiffusionPipeline.__call__'s denoising loop (diffusers 0.31.0
pipeline_stable_diffusion.py lines 698-703 and 1010-1040) on a [1,4,4,4] latent, without CFG:
    gen = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn([1,4,4,4], generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(latents, t)
        out = MODEL(inp, t)
        latents = scheduler.step(out, t, latents, **extra).prev_sample
where extra holds eta=0.0 and generator=gen when step() accepts them (prepare_extra_step_kwargs).
MODEL is a synthetic closed-form stand-in for the UNet that C computes identically (double
arithmetic on the float32 input with libm exp/pow/sqrt/sin, rounded once to float32): the exact
denoiser of toy data x0[i] ~ N(mu[i], S2) under an approximate schedule a(t), so the latents stay
at a realistic scale (|x| < 3) and errors are not amplified:
    a = exp(-5.4 (t/1000)^1.8), mu[i] = 0.8 sin(0.37 i + 0.5), S2 = 0.25, r = x[i] - sqrt(a) mu[i]
    eps = sqrt(1-a) r / (a S2 + 1 - a);   x0 = mu[i] + sqrt(a) S2 r / (a S2 + 1 - a)
    epsilon models return eps, v models sqrt(a) eps - sqrt(1-a) x0.
EulerAncestral's noise comes from randn_tensor(..., generator=gen); every draw is recorded
(randn_tensor is wrapped) and checked against the shared stream below, so the C test replays
it through the noise callback and needs no RNG.

Contents (all F32 unless said):
  noise                 [51,64]  row 0 = the initial randn latents, row k = the k-th
                                 per-step draw of the same generator (Euler a uses rows 1..steps)
  alphas_cumprod        [1000]   DDIMScheduler(SD config).alphas_cumprod
  train_sigmas          [1000]   ((1-ac)/ac)**0.5 as torch computes it (float32)
  C.t                   [calls]  the timestep each model call received (int ones are exact)
  C.init_sigma          [1]      scheduler.init_noise_sigma
  C.input_calls         I32 [k]  which calls' inputs are recorded (the first two and the last)
  C.inputs              [k,64]   the (scaled) model inputs of those calls
  C.final               [64]     the latents after the last step
  train.x0, train.eps   [3,64], train.t I64 [3] (0, 500, 999)
  train.add_noise, train.velocity [3,64]  DDPMScheduler(SD config).add_noise / get_velocity
Case names C: "<sampler>_<eps|v>[_karras][_<leading|linspace|trailing>]_s<steps>" with samplers
ddim, pndm, euler, euler_a, dpmpp_2m; no spacing = what from_config gives.  __metadata__ "cases"
lists them (comma separated) and "config_*" keep the resulting configs as JSON.

euler_a_*_karras is an extension: diffusers 0.31's EulerAncestralDiscreteScheduler has no
use_karras_sigmas (from_config ignores the key), so those cases take the sigmas and timesteps of
EulerDiscreteScheduler.from_config(base.config, use_karras_sigmas=True) and run EulerAncestral's
step on them.  Every combination asked for runs in diffusers (none is rejected).

Exact command (from the repo root; deterministic, CPU, a few seconds):
    tools/reference/.venv/bin/python tools/reference/make_sched_goldens.py [--out tests/golden/sched]
"""
import argparse
import inspect
import json
import math
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler)
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_write import save as save_file  # noqa: E402

GENERATOR = "tools/reference/.venv/bin/python tools/reference/make_sched_goldens.py"
SEED = 1234
SHAPE = (1, 4, 4, 4)
N = 64
STEPS = (1, 2, 4, 10, 50)
S2 = 0.25  # the toy data variance

# REFERENCE.md section 8, verbatim.
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}
SD21 = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
        "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}

CLASSES = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
           "euler_a": EulerAncestralDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}
KARRAS_OK = ("euler", "euler_a", "dpmpp_2m")


def model(x, t, pred):
    """The synthetic denoiser; see the module docstring (C: tests/test_sched.c toy_model)."""
    t = float(t)
    a = math.exp(-5.4 * (t / 1000.0) ** 1.8)
    sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
    den = a * S2 + 1.0 - a
    out = []
    for i, v in enumerate(x.reshape(-1).tolist()):
        mu = 0.8 * math.sin(0.37 * i + 0.5)
        r = v - sa * mu
        eps = sb * r / den
        if pred == "eps":
            out.append(eps)
        else:
            x0 = mu + sa * S2 * r / den
            out.append(sa * eps - sb * x0)
    return torch.tensor(out, dtype=torch.float32).reshape(x.shape)


def base_config(pred):
    cfg = SD15 if pred == "eps" else SD21
    cls = PNDMScheduler if cfg["_class_name"] == "PNDMScheduler" else DDIMScheduler
    return cls.from_config(cfg).config


def make_scheduler(name, pred, karras, spacing):
    base = base_config(pred)
    extra = {}
    if spacing:
        extra["timestep_spacing"] = spacing
    if karras and name != "euler_a":
        extra["use_karras_sigmas"] = True
    s = CLASSES[name].from_config(base, **extra)
    return s


def noise_stream(count):
    gen = torch.Generator("cpu").manual_seed(SEED)
    return torch.stack([torch.randn(SHAPE, generator=gen, dtype=torch.float32).reshape(-1) for _ in range(count)])


class NoiseRecorder:
    """Wraps randn_tensor inside the Euler ancestral module to record each draw."""

    def __init__(self):
        self.draws = []
        self.orig = ea_mod.randn_tensor

    def __call__(self, *a, **k):
        r = self.orig(*a, **k)
        self.draws.append(r.detach().clone().reshape(-1))
        return r


def run_case(name, pred, karras, spacing, steps):
    s = make_scheduler(name, pred, karras, spacing)
    s.set_timesteps(steps)
    if name == "euler_a" and karras:
        e = make_scheduler("euler", pred, True, spacing)
        e.set_timesteps(steps)
        s.sigmas = e.sigmas.clone()
        s.timesteps = e.timesteps.clone()
    gen = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    init_sigma = s.init_noise_sigma
    latents = latents * init_sigma
    params = set(inspect.signature(s.step).parameters.keys())
    extra = {}
    if "eta" in params:
        extra["eta"] = 0.0
    if "generator" in params:
        extra["generator"] = gen
    rec = NoiseRecorder()
    ea_mod.randn_tensor = rec
    ts, inputs = [], []
    try:
        for t in s.timesteps:
            inp = s.scale_model_input(latents, t)
            ts.append(float(t))
            inputs.append(inp.reshape(-1).clone())
            out = model(inp, t, pred)
            latents = s.step(out, t, latents, **extra, return_dict=False)[0]
    finally:
        ea_mod.randn_tensor = rec.orig
    calls = len(ts)
    keep = sorted(set([i for i in range(min(2, calls))] + [calls - 1]))
    r = {
        "t": torch.tensor(ts, dtype=torch.float32),
        "init_sigma": torch.tensor([float(init_sigma)], dtype=torch.float32),
        "input_calls": torch.tensor(keep, dtype=torch.int32),
        "inputs": torch.stack([inputs[i] for i in keep]),
        "final": latents.reshape(-1).clone(),
    }
    # the float32 the timesteps had is kept exactly
    assert all(float(np.float32(v)) == v for v in ts)
    return r, rec.draws, dict(s.config)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/sched")
    args = ap.parse_args()
    torch.set_num_threads(1)
    assert diffusers.__version__ == "0.31.0", diffusers.__version__

    stream = noise_stream(1 + max(STEPS))
    tensors = {"noise": stream.clone()}
    ddim = DDIMScheduler.from_config(SD15)
    ac = ddim.alphas_cumprod.clone()
    tensors["alphas_cumprod"] = ac
    tensors["train_sigmas"] = ((1 - ac) / ac) ** 0.5
    # REFERENCE.md's test values
    assert abs(ac[999].item() - 0.0046601) < 1e-7
    assert abs(tensors["train_sigmas"][999].item() - 14.6146) < 1e-4
    assert abs(tensors["train_sigmas"][0].item() - 0.029167) < 1e-6

    cases, configs = [], {}
    combos = []
    # what users get: from_config(base.config), each class's own spacing default (see docstring)
    for name in CLASSES:
        for pred in ("eps", "v"):
            for karras in ((False, True) if name in KARRAS_OK else (False,)):
                for steps in STEPS:
                    combos.append((name, pred, karras, None, steps))
    # timestep_spacing="leading" passed explicitly (as SCHEDULER_DEFAULT_CONFIG, or a user, does);
    # DPM++ 2M with Karras ignores the spacing, so it is not repeated
    for name, karras in (("euler", False), ("euler", True), ("euler_a", False), ("dpmpp_2m", False)):
        for pred in ("eps", "v"):
            for steps in STEPS:
                combos.append((name, pred, karras, "leading", steps))
    # the other spacings, epsilon only; 3 and 7 steps do not divide 1000
    for name in CLASSES:
        for spacing in ("linspace", "trailing") if name in ("ddim", "pndm") else ("trailing",):
            for steps in (3, 7, 10):
                combos.append((name, "eps", False, spacing, steps))

    for name, pred, karras, spacing, steps in combos:
        cname = f"{name}_{pred}" + ("_karras" if karras else "") + (f"_{spacing}" if spacing else "") + f"_s{steps}"
        r, draws, cfg = run_case(name, pred, karras, spacing, steps)
        if name == "euler_a":
            assert len(draws) == steps, (cname, len(draws))
            for k, d in enumerate(draws):
                assert torch.equal(d, stream[k + 1]), (cname, k)
        else:
            assert not draws
        for k, v in r.items():
            tensors[f"{cname}.{k}"] = v
        cases.append(cname)
        key = f"config_{name}_{pred}" + ("_karras" if karras else "") + (f"_{spacing}" if spacing else "")
        configs[key] = json.dumps({k: v for k, v in sorted(cfg.items()) if not k.startswith("_")},
                                  sort_keys=True)

    # training: add_noise / get_velocity (textual_inversion.py uses DDPMScheduler.from_pretrained)
    ddpm = DDPMScheduler.from_config(SD15)
    g = torch.Generator("cpu").manual_seed(SEED + 1)
    x0 = torch.randn((3, 4, 4, 4), generator=g)
    eps = torch.randn((3, 4, 4, 4), generator=g)
    tt = torch.tensor([0, 500, 999], dtype=torch.int64)
    tensors["train.x0"] = x0.reshape(3, N)
    tensors["train.eps"] = eps.reshape(3, N)
    tensors["train.t"] = tt
    tensors["train.add_noise"] = ddpm.add_noise(x0, eps, tt).reshape(3, N)
    tensors["train.velocity"] = ddpm.get_velocity(x0, eps, tt).reshape(3, N)

    meta = {"generator": GENERATOR, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "seed": str(SEED), "cases": ",".join(cases)}
    meta.update(configs)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "sched.safetensors")
    save_file(tensors, path, meta)
    from safetensors.torch import load_file
    back = load_file(path)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
