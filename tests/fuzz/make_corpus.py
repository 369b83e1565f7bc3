#!/usr/bin/env python3
"""Writes the seed corpus for fuzz_safetensors into tests/fuzz/corpus/.

Standard library only.  Each seed is a small safetensors image, valid or
broken in one way, so the fuzzer starts from every branch of the reader.
Run from the repository root: python3 tests/fuzz/make_corpus.py
"""
import json, os, struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def image(header, data=b"", pad=True):
    h = header if isinstance(header, bytes) else header.encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

def st(tensors, meta=None):
    """tensors: list of (name, dtype, shape, raw bytes), laid out in order."""
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return image(json.dumps(hdr, separators=(",", ":")), data)

f32 = lambda *v: struct.pack("<%df" % len(v), *v)
f64 = lambda *v: struct.pack("<%dd" % len(v), *v)
f16 = lambda *v: struct.pack("<%de" % len(v), *v)
bf16 = lambda *v: b"".join(struct.pack("<f", x)[2:] for x in v)

seeds = {
    "valid_f32": st([("w", "F32", [2, 3], f32(1, 2, 3, -1.5, 0.25, 1e-3))]),
    "valid_f16_subnormal_inf_nan": st([("h", "F16", [6], f16(0.5, -2, 65504, 6e-8, float("inf"), float("nan")))]),
    "valid_bf16": st([("b", "BF16", [2, 2], bf16(1, -3, 0.5, 1e30))]),
    "valid_f64": st([("d", "F64", [3], f64(1e300, -0.0, 3.25))]),
    "valid_i64_u8_meta": st([("ids", "I64", [1, 4], struct.pack("<4q", 0, 1, 2, 3)),
                             ("mask", "U8", [3], b"\1\0\1")], {"format": "pt", "k": "v"}),
    "valid_scalar": st([("s", "F32", [], f32(7.5))]),
    "valid_empty_tensor": st([("e", "F16", [0, 4], b""), ("x", "F32", [1], f32(2))]),
    "valid_no_tensors": image("{}"),
    "valid_meta_only": st([], {"a": "\u00e9\u4e2d\U0001F600", "b": "line\nbreak"}),
    "valid_unknown_field": image('{"t":{"dtype":"BF16","shape":[1],"data_offsets":[0,2],'
                                 '"extra":{"x":[1,2.5e3,null,true]}}}', bf16(1)),
    "valid_escapes_leading_ws": image(' \n{"a\\"b\\u00e9\\ud83d\\ude00":{"dtype":"F\\u0033\\u0032",'
                                      '"shape":[1],"data_offsets":[0,4]}}', f32(1)),
    "valid_f4_unsorted": image('{"b":{"dtype":"F4","shape":[2],"data_offsets":[4,5]},'
                               '"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 5),
    "bad_gap": image('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                     '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b"\0" * 12),
    "bad_size": image('{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}', b"\0" * 12),
    "bad_duplicate": image('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                           '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
    "bad_utf8": image(b'{"a\xc0\x80":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
    "bad_nul_name": image('{"a\\u0000":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
    "bad_header_length": struct.pack("<Q", 1 << 40) + b"{}",
    # found by the fuzzer: an ignored object whose key lacks its ':'
    "bad_fuzz_key_without_colon": struct.pack("<Q", 56) + b'{"s":{"d":{"dtype"' + b"\0" * 7 +
        b']}} s":{"}dtype"' + b"\0" * 7 + b"]}}   " + b"\0\0\xf0",
    "bad_overflow": image('{"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}'),
}

os.makedirs(OUT, exist_ok=True)
for name, blob in seeds.items():
    with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
        f.write(blob)
print("%d seeds, %d bytes" % (len(seeds), sum(map(len, seeds.values()))))
