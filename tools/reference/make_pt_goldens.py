#!/usr/bin/env python3
"""Make the torch.save embedding goldens tests/golden/pt/ and the fuzz seeds tests/fuzz/corpus_pt/.

Read by tests/test_pickle_pt.c (core/pickle_pt.c, the restricted .pt reader); see
tests/golden/README.md, section "pt/".

Valid files are written by torch 2.5.1's own torch.save (miniz zip, data descriptors, zip64 end
record), except a few that exercise what torch does not emit but other writers do (deflate, a
zip64 central directory, Python's zipfile layout); those are assembled here and checked to load
with torch.load(weights_only=True).  Their expected vectors (torch's .float() of the tensor) go to
expected.safetensors, one F32 [N, D] tensor named after each file.

Malicious and broken files are assembled here: a small pickle assembler (the opcodes torch.save
uses) and a zip writer that can set every field.  Each is listed in manifest.txt with the status
code and a piece of the message the reader must give.  Malicious pickles are never loaded.

manifest.txt, one file per line:
    ok  <file> <token or -> <n> <width>
    bad <file> <coin_status> <message substring (rest of the line)>

Exact command (from the repo root; deterministic, CPU, about 3 s):
    tools/reference/.venv/bin/python tools/reference/make_pt_goldens.py
"""
import io
import os
import re
import shutil
import struct
import sys
import tempfile
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "pt")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus_pt")
EFORMAT, EUNSUPPORTED = -3, -5

# ---- a zip writer that can set every field ----


def build_zip(entries, zip64=False, eocd_entries=None):
    """entries: dicts with name (str), data (bytes), and optionally method (0 or 8), flags,
    crc, usize/csize (declared sizes, to lie), lh_off (central offset, to lie)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e["name"].encode()
        raw, method = e["data"], e.get("method", 0)
        if method == 8:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            comp = c.compress(raw) + c.flush()
        else:
            comp = raw
        crc = e.get("crc", zlib.crc32(raw))
        usize, csize = e.get("usize", len(raw)), e.get("csize", len(comp))
        off, flags = len(out), e.get("flags", 0)
        if zip64:
            lx = struct.pack("<HHQQ", 1, 16, usize, csize)
            cx = struct.pack("<HHQQQ", 1, 24, usize, csize, e.get("lh_off", off))
            u32 = c32 = o32 = 0xFFFFFFFF
        else:
            lx = cx = b""
            u32, c32, o32 = usize, csize, e.get("lh_off", off)
        ver = 45 if zip64 else 20
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, ver, flags, method, 0, 0x21, crc, c32, u32,
                           len(name), len(lx)) + name + lx + comp
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, ver, ver, flags, method, 0, 0x21,
                               crc, c32, u32, len(name), len(cx), 0, 0, 0, 0, o32) + name + cx
    n = len(entries) if eocd_entries is None else eocd_entries
    cd_off = len(out)
    out += central
    if zip64:
        z = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_off)
        out += struct.pack("<IIQI", 0x07064B50, 0, z, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_off, 0)
    return bytes(out)


def torch_zip(stem, pkl, storages, extra=(), version=b"3\n", **kw):
    """The records torch.save writes: data.pkl, byteorder, data/<key>, version."""
    entries = [{"name": stem + "/data.pkl", "data": pkl},
               {"name": stem + "/byteorder", "data": b"little"}]
    entries += [{"name": f"{stem}/data/{k}", "data": v} for k, v in storages.items()]
    entries += [{"name": stem + "/version", "data": version}]
    entries += list(extra)
    return build_zip(entries, **kw)


# ---- a pickle assembler for the opcodes torch.save uses ----

MARK, TUPLE, REDUCE, STOP, SETITEMS, EMPTY_DICT = b"(", b"t", b"R", b".", b"u", b"}"


def s(x):
    b = x.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(x):
    if 0 <= x < 256:
        return b"K" + bytes([x])
    if 0 <= x < 65536:
        return b"M" + struct.pack("<H", x)
    if -2**31 <= x < 2**31:
        return b"J" + struct.pack("<i", x)
    b = x.to_bytes(8, "little", signed=True)
    return b"\x8a\x08" + b


def g(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def tup(xs):
    return MARK + b"".join(i(x) for x in xs) + TUPLE


def tensor(stype, key, numel, off, size, stride, nargs=6):
    pid = MARK + s("storage") + g("torch", stype) + s(key) + s("cpu") + i(numel) + TUPLE
    args = pid + b"Q" + i(off) + tup(size) + tup(stride) + b"\x89" + g("collections", "OrderedDict") + b")R"
    args += b"N" * (nargs - 6)
    return g("torch._utils", "_rebuild_tensor_v2") + MARK + args + TUPLE + REDUCE


def pickle(body):
    return b"\x80\x02" + body + STOP


def diffusers_pkl(token, t):
    return pickle(EMPTY_DICT + s(token) + t + b"s")


def f32(t):
    return t.contiguous().numpy().astype("<f4").tobytes()


# ---- the files ----

manifest, expected, written = [], {}, []


def save_valid(name, obj, token, out_dir=OUT, pt_bytes=None, weights_only=True, **save_kw):
    path = os.path.join(out_dir, name)
    if pt_bytes is None:
        torch.save(obj, path, **save_kw)    # the archive's folder is the file's stem, as for users
    else:
        open(path, "wb").write(pt_bytes)
    d = torch.load(path, map_location="cpu", weights_only=weights_only)
    if torch.is_tensor(d):
        t = d
    elif "string_to_param" in d:
        p = d["string_to_param"]
        t = next(iter(getattr(p, "_parameters", p).values()))
    else:
        t = next(iter(d.values()))
    t = t.detach().float()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if out_dir == OUT:
        expected[name] = t.contiguous()
        manifest.append(f"ok {name} {token} {t.shape[0]} {t.shape[1]}")
    written.append(path)


def save_bad(name, data, code, msg, out_dir=OUT):
    path = os.path.join(out_dir, name)
    open(path, "wb").write(data)
    if out_dir == OUT:
        manifest.append(f"bad {name} {code} {msg}")
    written.append(path)


def a1111(vec, name="cat"):
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name,
            "step": 1500, "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5-pruned-emaonly"}


def torch_bytes(obj, stem, **kw):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, stem + ".pt")
        torch.save(obj, p, **kw)
        return open(p, "rb").read()


def legacy_bytes(obj):
    """torch.save's legacy format, its storage keys (memory addresses) replaced by fixed digits
    so that reruns give the same bytes; torch.load must still read it."""
    data = torch_bytes(obj, "legacy", _use_new_zipfile_serialization=False)
    keys = set(re.findall(rb"X[\x08-\x20]\x00\x00\x00([0-9]{8,32})", data))
    for n, k in enumerate(sorted(keys)):
        data = data.replace(k, str(n + 1).encode().rjust(len(k), b"0"))
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "l.pt"), "wb").write(data)
        torch.load(os.path.join(d, "l.pt"), weights_only=True)
    return data


def patch_central(data, entry_name, **fields):
    """Rewrites fields of one central-directory entry of a torch-made file."""
    b = bytearray(data)
    at = b.find(b"PK\x01\x02")
    while at >= 0:
        nl = struct.unpack_from("<H", b, at + 28)[0]
        if bytes(b[at + 46:at + 46 + nl]) == entry_name.encode():
            offs = {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "csize": (20, "<I"),
                    "usize": (24, "<I"), "lh_off": (42, "<I")}
            for k, v in fields.items():
                struct.pack_into(offs[k][1], b, at + offs[k][0], v)
            return bytes(b)
        at = b.find(b"PK\x01\x02", at + 1)
    raise KeyError(entry_name)


def main():
    for d in (OUT, CORPUS):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    torch.manual_seed(1234)

    # -- valid, written by torch.save --
    v1 = torch.randn(1, 768)
    v1.requires_grad_(True)         # as A1111 saves it mid-training
    save_valid("a1111_1vec_f32.pt", a1111(v1), "-")
    v3 = torch.randn(3, 768).half()
    v3[0, :4] = torch.tensor([65504.0, 6e-8, -0.0, float("inf")])  # max, subnormal, -0, inf
    save_valid("a1111_3vec_f16.pt", a1111(v3), "-")
    save_valid("a1111_param_bf16.pt", a1111(torch.nn.Parameter(torch.randn(2, 16).bfloat16())), "-")
    # the original textual-inversion code saved an nn.ParameterDict (A1111 reads _parameters)
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(2, 16))})
    save_valid("ti_parameterdict.pt", {"string_to_token": {"*": 265}, "string_to_param": pd}, "-",
               weights_only=False)
    save_valid("diffusers_2vec.bin", {"<cat-toy>": torch.randn(2, 768)}, "<cat-toy>")
    save_valid("diffusers_1d.bin", {"<cat-toy>": torch.randn(768)}, "<cat-toy>")
    save_valid("diffusers_f16.bin", {"<x>": torch.randn(4, 16).half()}, "<x>")
    # CPU training saves a view of the whole token matrix: the storage is bigger than the tensor
    save_valid("diffusers_view.bin", {"<v>": torch.randn(16, 32)[5:7]}, "<v>")
    save_valid("tensor_p4_strided.bin", torch.randn(16, 3).t(), "-", pickle_protocol=4,
               weights_only=False)     # transposed; torch's safe loader has no FRAME
    save_valid("tensor_f64.bin", torch.randn(2, 8, dtype=torch.float64), "-")
    save_valid("kohya_emb_params.pt", {"emb_params": torch.randn(2, 16)}, "-")

    # -- valid, assembled: other zip writers --
    w = torch.randn(2, 16)
    pkl = diffusers_pkl("<z>", tensor("FloatStorage", "0", 32, 0, (2, 16), (16, 1)))
    dflt = build_zip([{"name": "deflated/data.pkl", "data": pkl, "method": 8},
                      {"name": "deflated/data/0", "data": f32(w), "method": 8},
                      {"name": "deflated/version", "data": b"3\n", "method": 8}])
    save_valid("deflated.pt", None, "<z>", pt_bytes=dflt)
    save_valid("zip64.pt", None, "<z>", pt_bytes=torch_zip("zip64", pkl, {"0": f32(w)}, zip64=True))
    # Python's zipfile layout (local sizes, no descriptors), and a 7-argument rebuild call
    zf = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(zf, "w", zipfile.ZIP_STORED) as z:
        for n, dat in (("pyzip/data.pkl", diffusers_pkl("<z>", tensor("FloatStorage", "0", 32, 0, (2, 16),
                                                                       (16, 1), nargs=7))),
                       ("pyzip/data/0", f32(w)), ("pyzip/version", b"3\n")):
            z.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), dat)
    save_valid("pyzip.pt", None, "<z>", pt_bytes=zf.getvalue())

    # -- malicious pickles (never loaded here) --
    def evil(name, body, msg, code=EFORMAT):
        save_bad(name, torch_zip(os.path.splitext(name)[0], pickle(body), {}), code, msg)
    evil("evil_os_system.pt", g("os", "system") + s("echo pwned") + b"\x85" + REDUCE,
         "refusing the name 'os.system'")
    evil("evil_builtins_eval.pt", g("builtins", "eval") + s("__import__('os')") + b"\x85" + REDUCE,
         "refusing the name 'builtins.eval'")
    evil("evil_stack_global.pt", b"\x8c\x02os\x8c\x06system\x93" + s("id") + b"\x85" + REDUCE,
         "refusing the name 'os.system'")
    evil("evil_reduce_storage.pt", g("torch", "FloatStorage") + b")" + REDUCE,
         "called like a function")
    evil("evil_inst.pt", MARK + s("id") + b"ios\nsystem\n", "INST: this opcode is not allowed")
    evil("evil_build.pt", EMPTY_DICT + EMPTY_DICT + b"b", "only a new ParameterDict may be given state")
    evil("evil_long_storage.pt", g("torch", "LongStorage"), "'torch.LongStorage' is not a float storage",
         EUNSUPPORTED)

    # -- broken tensors --
    def bad_tensor(name, t, storages, msg, code=EFORMAT):
        save_bad(name, torch_zip(os.path.splitext(name)[0], diffusers_pkl("<b>", t), storages), code, msg)
    st = {"0": f32(torch.zeros(2, 16))}
    bad_tensor("bad_storage_size.pt", tensor("FloatStorage", "0", 33, 0, (2, 16), (16, 1)), st,
               "should hold 33 elements of 4 bytes, but its zip entry is 128 bytes")
    bad_tensor("bad_offset.pt", tensor("FloatStorage", "0", 32, 17, (1, 16), (16, 1)), st,
               "reaches beyond its storage of 32 elements (offset 17)")
    bad_tensor("bad_stride.pt", tensor("FloatStorage", "0", 32, 0, (2, 16), (17, 1)), st,
               "reaches beyond its storage")
    bad_tensor("bad_missing_storage.pt", tensor("FloatStorage", "7", 32, 0, (2, 16), (16, 1)), st,
               "has no zip entry 'bad_missing_storage/data/7'")
    bad_tensor("bad_3d.pt", tensor("FloatStorage", "0", 32, 0, (1, 2, 16), (32, 16, 1)), st,
               "has 3 dimensions, expected [N, D] or [D]")
    save_bad("bad_int64.bin", torch_bytes({"<i>": torch.arange(4)}, "bad_int64"), EUNSUPPORTED,
             "'torch.LongStorage' is not a float storage")
    save_bad("bad_sdxl.pt", torch_bytes({"clip_g": torch.zeros(1, 8), "clip_l": torch.zeros(1, 4)},
                                        "bad_sdxl"), EUNSUPPORTED, "SDXL embedding")
    save_bad("bad_two_tensors.pt", torch_bytes({"a": torch.zeros(1, 8), "b": torch.zeros(1, 8)},
                                               "bad_two_tensors"), EFORMAT,
             "found a dict of 2 entries {'a', 'b'}")
    save_bad("bad_legacy.pt", legacy_bytes({"<x>": torch.zeros(1, 8)}), EUNSUPPORTED,
             "the legacy torch.save format")

    # -- broken or hostile zip containers --
    good = torch_bytes(a1111(torch.randn(2, 16)), "good")
    save_bad("zip_truncated.pt", good[:len(good) * 6 // 10], EFORMAT, "no end record")
    k = good.find(b"good/data/0") + 11
    k = k + struct.unpack_from("<H", good, good.rfind(b"PK\x03\x04", 0, k) + 28)[0]   # skip padding
    save_bad("zip_bad_crc.pt", good[:k] + bytes([good[k] ^ 1]) + good[k + 1:], EFORMAT,
             "zip entry 'good/data/0' is damaged: its CRC-32")
    save_bad("zip_overlap.pt", patch_central(good, "good/data.pkl", csize=400, usize=400), EFORMAT,
             "zip entries 'good/data.pkl' and 'good/byteorder' overlap in the file")
    save_bad("zip_duplicate.pt", torch_zip("dup", pkl, {"0": f32(w)},
                                           extra=[{"name": "dup/data.pkl", "data": pickle(b"N")}]),
             EFORMAT, "two entries named 'dup/data.pkl'")
    save_bad("zip_traversal.pt", build_zip([{"name": "trav/../../../etc/cron.d/x", "data": b"x"},
                                            {"name": "trav/data.pkl", "data": pkl}]),
             EFORMAT, "zip entry 'trav/../../../etc/cron.d/x' is not a plain relative path")
    save_bad("zip_absolute.pt", build_zip([{"name": "/abs/data.pkl", "data": pkl}]), EFORMAT,
             "is not a plain relative path")
    # a zip bomb: a tiny deflate stream that declares 2 GB (the pickle agrees, to get that far)
    bomb_pkl = diffusers_pkl("<b>", tensor("FloatStorage", "0", 0x1FFFFFFC, 0, (2, 16), (16, 1)))
    save_bad("zip_bomb_declared.pt", torch_zip("bomb", bomb_pkl, {}, extra=[
        {"name": "bomb/data/0", "data": bytes(4096), "method": 8, "usize": 0x7FFFFFF0}]),
        EUNSUPPORTED, "would unpack to 2147483632 bytes")
    # ... and one that declares 4 KB but inflates to 1 MB
    save_bad("zip_bomb_longer.pt", torch_zip("bomb2", diffusers_pkl("<b>", tensor(
        "FloatStorage", "0", 1024, 0, (2, 16), (16, 1))), {}, extra=[
        {"name": "bomb2/data/0", "data": bytes(1 << 20), "method": 8, "usize": 4096}]),
        EFORMAT, "does not unpack to its declared 4096 bytes")
    save_bad("zip_huge_stored.pt", torch_zip("huge", pkl, {}, extra=[
        {"name": "huge/data/0", "data": f32(w), "usize": 0x7FFFFFFF, "csize": 0x7FFFFFFF}]),
        EFORMAT, "claims 2147483647 bytes of data")
    save_bad("zip_offset_oob.pt", patch_central(good, "good/version", lh_off=0x7FFFFFFF), EFORMAT,
             "no local header at byte 2147483647")
    save_bad("zip_bzip2.pt", patch_central(good, "good/data/0", method=12), EUNSUPPORTED,
             "uses compression method 12")
    save_bad("zip_encrypted.pt", patch_central(good, "good/data.pkl", flags=0x809), EUNSUPPORTED,
             "zip entry 'good/data.pkl' is encrypted")
    save_bad("zip_no_zip64.pt", build_zip([{"name": "nz/data.pkl", "data": pkl}], eocd_entries=0xFFFF),
             EFORMAT, "refers to a zip64 record that is missing")
    save_bad("zip_no_pickle.pt", build_zip([{"name": "np/version", "data": b"3\n"}]), EFORMAT,
             "has no 'np/data.pkl' entry")
    save_bad("zip_big_endian.pt", build_zip([{"name": "be/data.pkl", "data": pkl},
                                             {"name": "be/byteorder", "data": b"big"},
                                             {"name": "be/version", "data": b"3\n"}]),
             EUNSUPPORTED, "byte order 'big'")
    save_bad("zip_version_99.pt", torch_zip("v99", pkl, {"0": f32(w)}, version=b"99\n"),
             EUNSUPPORTED, "the torch file format version is '99\\x0a'")
    save_bad("not_a_zip.pt", b"#!/bin/sh\nrm -rf ~\n", EFORMAT, "expected a zip archive")

    # -- the expected vectors --
    st_write.save(expected, os.path.join(OUT, "expected.safetensors"),
                  {"torch": torch.__version__, "made_by": "tools/reference/make_pt_goldens.py"})
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("# made by tools/reference/make_pt_goldens.py; see tests/golden/README.md (pt/)\n")
        f.write("\n".join(manifest) + "\n")

    # -- fuzz seeds: small valid files of every shape, and small broken ones --
    torch.manual_seed(99)
    small = torch.randn(2, 8)
    save_valid("valid_a1111_f32.pt", a1111(small.clone().requires_grad_(True)), "-", CORPUS)
    save_valid("valid_a1111_f16.pt", a1111(small.half()), "-", CORPUS)
    save_valid("valid_param_bf16.pt", a1111(torch.nn.Parameter(small.bfloat16())), "-", CORPUS)
    save_valid("valid_parameterdict.pt", {"string_to_param": torch.nn.ParameterDict(
        {"*": torch.nn.Parameter(small)})}, "-", CORPUS, weights_only=False)
    save_valid("valid_diffusers_1d.bin", {"<t>": torch.randn(8)}, "<t>", CORPUS)
    save_valid("valid_view.bin", {"<v>": torch.randn(6, 4)[2:4]}, "<v>", CORPUS)
    save_valid("valid_p4_strided.bin", torch.randn(8, 2).t(), "-", CORPUS, pickle_protocol=4,
               weights_only=False)
    spkl = diffusers_pkl("<z>", tensor("FloatStorage", "0", 16, 0, (2, 8), (8, 1)))
    save_valid("valid_zip64.pt", None, "<z>", CORPUS, pt_bytes=torch_zip("valid_zip64", spkl,
                                                                         {"0": f32(small)}, zip64=True))
    save_valid("valid_deflated.pt", None, "<z>", CORPUS, pt_bytes=build_zip([
        {"name": "d/data.pkl", "data": spkl, "method": 8},
        {"name": "d/data/0", "data": f32(small), "method": 8},
        {"name": "d/version", "data": b"3\n"}]))
    for name in ("evil_os_system.pt", "evil_stack_global.pt", "evil_build.pt", "bad_offset.pt",
                 "bad_legacy.pt", "bad_sdxl.pt", "zip_duplicate.pt", "zip_traversal.pt",
                 "zip_bomb_longer.pt", "zip_overlap.pt"):
        data = open(os.path.join(OUT, name), "rb").read()
        if len(data) < 8192:
            save_bad("bad_" + name.replace("bad_", ""), data, 0, "", CORPUS)

    total = sum(os.path.getsize(p) for p in written) + os.path.getsize(
        os.path.join(OUT, "expected.safetensors"))
    print(f"wrote {len(written)} files ({total} bytes) to {OUT} and {CORPUS}")


if __name__ == "__main__":
    main()
