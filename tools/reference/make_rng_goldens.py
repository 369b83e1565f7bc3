#!/usr/bin/env python3
"""Make the RNG goldens tests/golden/rng/{torch_cpu,philox}.safetensors (see tests/golden/README.md).

torch_cpu.safetensors: torch 2.5.1's CPU generator, run for real. Each case is
torch.manual_seed(seed) followed by a sequence of calls on the default generator:
  randn(n)                  torch.randn(n) (float32; any shape with n elements draws the same)
  rand(n)                   torch.rand(n) (float32)
  randint(low, high, n)     torch.randint(low, high, (n,)) (int64)
Sequences pin down the generator state between calls: the cached second normal of the
small-tensor path survives a 16-or-more call and rand/randint calls, and manual_seed clears it.
torch runs its AVX2 kernel for randn on x86 CPUs with AVX2 or AVX512 (there is no AVX512 copy)
and a libm one elsewhere; the two differ by up to ~2e-6, so this script insists on AVX2/AVX512
and the goldens are those of the AVX2 kernel.

philox.safetensors: torch CUDA randn as AUTOMATIC1111's modules/rng_philox.py reproduces it
on the CPU (no GPU is needed or used). PhiloxA1111 below is an independent numpy
implementation of that algorithm, written from its description, that keeps A1111's numpy dtype
behaviour: the Box-Muller constants are float32 arrays but uint32 * float32 promotes to
float64, so the transform runs in double precision and only the result is float32. It is
checked against (a) the Random123 known-answer vectors for Philox4x32-10 and (b) the output
printed in rng_philox.py's docstring for Generator(0).randn((3, 4)), which matches to 2.7e-7
only (those digits come from a different evaluation of the transform, presumably torch CUDA's
fast-math __logf/__sincosf), so the check is 1e-6.

Layout of both files (byte-deterministic, written by st_write.py):
  __metadata__ "cases": JSON list of {"name", "seed" (decimal string, u64), "calls": [...]},
    a call being ["randn", n] / ["rand", n] / ["randint", n, "low", "high"] (bounds as decimal
    strings: they can exceed a double's 53 bits);
  "<name>#<k>" the output of call k (0-based) when it has <= 128 values, else
  "<name>#<k>.head" / ".tail" (first / last 64 values) and ".stats" F64 [2] = sum and sum of
  squares of all values in float64. randn/rand outputs are F32, randint I64.
  "generator", "torch", "numpy", "cpu_capability" record how the file was made.

Exact command (from the repo root; deterministic, CPU, about 2 s):
    tools/reference/.venv/bin/python tools/reference/make_rng_goldens.py [--out tests/golden/rng]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_write import save as save_file  # noqa: E402

FULL_MAX = 128      # store every value up to this many
EDGE = 64           # else the first and last EDGE values plus sums

SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1]
# (3,4) = 12, (1,4,8,8) = 256, (1,4,64,64) = 16384; 1000 and 100003 have a tail (n % 16 != 0).
SIZES = [1, 3, 12, 15, 16, 17, 33, 256, 16384]


def cpu_cases():
    cases = []
    for s in SEEDS:
        for n in SIZES:
            cases.append((s, [("randn", n)]))
    for s in (0, 42):
        cases += [
            (s, [("randn", 1000)]),
            (s, [("randn", 100003)]),
            (s, [("randn", 3), ("randn", 20), ("randn", 1)]),    # cache outlives a >= 16 call
            (s, [("randn", 20), ("randn", 5)]),
            (s, [("randn", 1), ("randn", 1), ("randn", 1), ("randn", 2)]),
            (s, [("randn", 15), ("randn", 16), ("randn", 1)]),
            (s, [("randn", 7), ("randn", 16), ("randn", 9)]),
            (s, [("randn", 3), ("randn", 0), ("randn", 1)]),     # an empty call draws nothing
            (s, [("randn", 3), ("rand", 2), ("randn", 1)]),      # rand leaves the cache alone
            (s, [("randn", 1), ("randint", 4, 0, 1000), ("randn", 1)]),
            (s, [("rand", 5)]),
            (s, [("rand", 1000)]),
            (s, [("rand", 3), ("randn", 17), ("rand", 3)]),
            (s, [("randint", 8, 0, 1000)]),
            (s, [("randint", 1, 0, 1000), ("randint", 1, 0, 1000)]),
            (s, [("randint", 1000, 0, 1000)]),
            (s, [("randint", 20, -5, 5)]),
            (s, [("randint", 5, 0, 1)]),                         # range 1: draws, gives 0
            (s, [("randint", 10, 0, 2**32 - 1)]),                # largest 32-bit-draw range
            (s, [("randint", 10, 0, 2**32)]),                    # smallest 64-bit-draw range
            (s, [("randint", 10, 0, 2**40)]),
            (s, [("randint", 10, -2**62, 2**62)]),
            (s, [("randint", 10, -2**63, 2**63 - 1)]),
        ]
    return cases


def philox_cases():
    cases = []
    for s in SEEDS:
        for n in SIZES:
            cases.append((s, [("randn", n)]))
    for s in (0, 42):
        cases += [
            (s, [("randn", 12), ("randn", 12), ("randn", 1)]),   # offset moves once per call
            (s, [("randn", 16384), ("randn", 16384)]),
            (s, [("randn", 1), ("randn", 0), ("randn", 1)]),     # an empty call still counts
        ]
    return cases


def call_desc(c):
    if c[0] == "randint":
        return "randint(%d,%d,%d)" % (c[2], c[3], c[1])
    return "%s(%d)" % c


def case_name(seed, calls):
    return "s%d:%s" % (seed, ",".join(call_desc(c) for c in calls))


def call_json(c):
    if c[0] == "randint":
        return ["randint", c[1], str(c[2]), str(c[3])]
    return [c[0], c[1]]


def store(tensors, name, t):
    t = t.reshape(-1).contiguous()
    if t.numel() <= FULL_MAX:
        tensors[name] = t.clone()
        return
    tensors[name + ".head"] = t[:EDGE].clone()
    tensors[name + ".tail"] = t[-EDGE:].clone()
    d = t.to(torch.float64)
    tensors[name + ".stats"] = torch.stack([d.sum(), (d * d).sum()])


# ---------------------------------------------------------------- torch CPU

def torch_call(c):
    if c[0] == "randn":
        return torch.randn(c[1])
    if c[0] == "rand":
        return torch.rand(c[1])
    return torch.randint(c[2], c[3], (c[1],))


def make_cpu():
    tensors, meta_cases = {}, []
    for seed, calls in cpu_cases():
        name = case_name(seed, calls)
        torch.manual_seed(seed)
        for k, c in enumerate(calls):
            out = torch_call(c)
            assert out.dtype == (torch.int64 if c[0] == "randint" else torch.float32)
            store(tensors, "%s#%d" % (name, k), out)
        meta_cases.append({"name": name, "seed": str(seed), "calls": [call_json(c) for c in calls]})
    return tensors, meta_cases


def check_cpu_facts():
    """Facts about torch's CPU generator that the C code relies on, asserted here."""
    # Only the low 32 bits of the seed reach mt19937 (2**64-1 is what -1 becomes).
    torch.manual_seed(5)
    a = torch.randn(20)
    torch.manual_seed(2**32 + 5)
    assert torch.equal(a, torch.randn(20))
    # The small-tensor path caches the second normal across calls: three randn(1) calls
    # equal one randn(3).
    torch.manual_seed(0)
    a = torch.randn(3)
    torch.manual_seed(0)
    assert torch.equal(a, torch.cat([torch.randn(1), torch.randn(1), torch.randn(1)]))
    # A float64 small tensor and a float32 one draw the same doubles (the float path is
    # normal_distribution<double> cast to float).
    torch.manual_seed(0)
    b = torch.randn(3, dtype=torch.float64)
    assert torch.equal(a, b.float())
    # A 2-D shape draws exactly what the flat count draws.
    torch.manual_seed(0)
    a = torch.randn(1, 4, 8, 8)
    torch.manual_seed(0)
    assert torch.equal(a.reshape(-1), torch.randn(256))
    # torch.Generator("cpu") objects behave like the default generator.
    g = torch.Generator().manual_seed(42)
    torch.manual_seed(42)
    assert torch.equal(torch.randn(17, generator=g), torch.randn(17))


# ------------------------------------------------------------------- Philox

M32 = 0xFFFFFFFF


class PhiloxA1111:
    """rng_philox.py's Generator: counter (offset, 0, i, 0), key (seed lo, seed hi),
    Philox4x32-10, Box-Muller sine branch of outputs 0 and 1; offset += 1 per call."""

    MUL = (0xD2511F53, 0xCD9E8D57)
    BUMP = (0x9E3779B9, 0xBB67AE85)

    def __init__(self, seed):
        self.seed = seed
        self.offset = 0

    @classmethod
    def block(cls, c0, c1, c2, c3, k0, k1):
        """Philox4x32-10 on uint64 arrays holding 32-bit values (so products cannot wrap)."""
        c = [np.asarray(v, dtype=np.uint64) for v in (c0, c1, c2, c3)]
        k0, k1 = int(k0), int(k1)
        for r in range(10):
            if r:
                k0 = (k0 + cls.BUMP[0]) & M32
                k1 = (k1 + cls.BUMP[1]) & M32
            p0 = c[0] * np.uint64(cls.MUL[0])
            p1 = c[2] * np.uint64(cls.MUL[1])
            c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & np.uint64(M32),
                 (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & np.uint64(M32)]
        return [v.astype(np.uint32) for v in c]

    @staticmethod
    def box_muller(x, y):
        # float32 constant arrays, as in rng_philox.py; the arithmetic promotes to float64.
        inv = np.array([2.3283064e-10], dtype=np.float32)
        inv_2pi = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)
        u = x * inv + inv / 2
        v = y * inv_2pi + inv_2pi / 2
        assert u.dtype == np.float64 and v.dtype == np.float64
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)

    def randn(self, n):
        i = np.arange(n, dtype=np.uint64) & np.uint64(M32)
        z = np.zeros(n, dtype=np.uint64)
        c = self.block(z + np.uint64(self.offset), z, i, z, self.seed & M32, self.seed >> 32)
        self.offset += 1
        return self.box_muller(c[0], c[1])


def check_philox():
    # Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key) -> output.
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in kat:
        got = PhiloxA1111.block(*[[v] for v in ctr], *key)
        assert tuple(int(v[0]) for v in got) == want, (ctr, key, got)
    docstring = np.array([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                          [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                          [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    got = PhiloxA1111(0).randn(12).reshape(3, 4).astype(np.float64)
    err = np.abs(got - docstring).max()
    assert err < 1e-6, err
    return err


def make_philox():
    tensors, meta_cases = {}, []
    for seed, calls in philox_cases():
        name = case_name(seed, calls)
        g = PhiloxA1111(seed)
        for k, c in enumerate(calls):
            store(tensors, "%s#%d" % (name, k), torch.from_numpy(g.randn(c[1])))
        meta_cases.append({"name": name, "seed": str(seed), "calls": [call_json(c) for c in calls]})
    return tensors, meta_cases


# --------------------------------------------------------------------- main

def write(path, tensors, cases, extra):
    meta = {"cases": json.dumps(cases, separators=(",", ":")),
            "generator": "tools/reference/.venv/bin/python tools/reference/make_rng_goldens.py",
            "numpy": np.__version__}
    meta.update(extra)
    save_file(tensors, path, meta)
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    print("%s: %d cases, %d tensors, %d bytes" % (path, len(cases), len(tensors), os.path.getsize(path)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/golden/rng")
    args = ap.parse_args()
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        sys.exit("torch runs its %s randn kernel here; the goldens need the AVX2 one (an x86 CPU "
                 "with AVX2, ATEN_CPU_CAPABILITY unset)" % cap)
    if torch.__version__.split("+")[0] != "2.5.1":
        print("warning: torch %s, the goldens were made with 2.5.1" % torch.__version__)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    check_cpu_facts()
    tensors, cases = make_cpu()
    write(os.path.join(args.out, "torch_cpu.safetensors"), tensors, cases,
          {"torch": torch.__version__, "cpu_capability": cap})

    err = check_philox()
    print("philox: Random123 KAT ok; A1111 docstring max abs diff %.3g" % err)
    tensors, cases = make_philox()
    write(os.path.join(args.out, "philox.safetensors"), tensors, cases, {})


if __name__ == "__main__":
    main()
