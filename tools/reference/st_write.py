"""Byte-deterministic safetensors writer used by the golden generators.

safetensors' own save_file (0.4.5) writes the "__metadata__" map in hash order, so two runs of
the same script give different bytes. This writer produces a canonical file instead:
  - header JSON: "__metadata__" first (keys sorted), then the tensors, compact separators;
  - tensors ordered by element size descending, then by name (so every tensor's data offset is
    a multiple of its element size, as in safetensors' own writer);
  - header padded with spaces to a multiple of 8 bytes.
The result loads with safetensors.torch.load_file (checked by the callers).
"""
import json
import struct

import torch

_DT = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
       torch.bool: "BOOL"}


def save(tensors, path, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    blobs, off = [], 0
    for name, t in items:
        t = t.detach().contiguous().cpu()
        # raw little-endian bytes (view as uint8 works for every dtype, bf16 included)
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
