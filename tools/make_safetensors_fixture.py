#!/usr/bin/env python3
"""Writes tests/fixtures/tiny.safetensors with a pure-Python safetensors writer (struct + json).

It is independent of eigenformer's writer, so loading its output checks interoperability: the
tensors are stored in a different order than their names sort, with mixed dtypes (F32 and F64),
a 1-D and a 2-D tensor, and metadata. The values are exact in float, so the test compares exactly.

    python3 tools/make_safetensors_fixture.py [output path]
"""
import json
import os
import struct
import sys

# name -> (dtype, shape, row-major values); written in this order.
TENSORS = [
    ("proj.bias", "F64", [3], [1.5, -2.0, 0.25]),
    ("proj.weight", "F32", [3, 2], [0.5, -1.25, 2.0, 3.5, -0.125, 1024.0]),
    ("embed.weight", "F32", [2, 2], [1.0, 0.0, -0.0, 6.103515625e-05]),
]
METADATA = {"format": "pt", "writer": "make_safetensors_fixture.py"}
FORMATS = {"F32": "<f", "F64": "<d"}


def encode(dtype, shape, values):
    count = 1
    for d in shape:
        count *= d
    assert count == len(values)
    return b"".join(struct.pack(FORMATS[dtype], v) for v in values)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "tiny.safetensors")
    header, data = {"__metadata__": METADATA}, b""
    for name, dtype, shape, values in TENSORS:
        raw = encode(dtype, shape, values)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


if __name__ == "__main__":
    main()
