"""Token embedding rows of a graph that takes `inputs_embeds`, read from its weights file at the byte offsets of the
manifest's `embedding` entry, as the Rust engine reads them: the one Python reader of that format (verify.py and the
scripts/ benchmarks use it). numpy only, so it runs in the importer's venv and in the bench venv alike.

The entry (on a model file of manifest.json, written by manifest.embedding_table):
  {"weights": FILE, "encoding": "f32", "table": T}                                         (fp32)
  {"weights": FILE, "encoding": "q8_0_nibble_planes", "high": H, "low": L, "scales": S}   (int4)
  {"weights": FILE, "encoding": "q8_0_offset_128", "codes": C, "scales": S}               (int4-fast)
A table of vocab_size rows x hidden columns, the lm_head's own initializers (graph.EMBEDDING_TABLES):
  f32: row r is the hidden little-endian float32 values at T + r * hidden * 4, the row itself.
A Q8_0 table in blocks of 32 (nb = hidden / 32 blocks a row):
  q8_0_nibble_planes: row r of each plane is the hidden / 2 bytes at H + r * hidden / 2 (L for the low plane);
    column j is byte j / 2's low nibble for even j, its high nibble for odd j; q = 16 * (high - 8) + low (int8).
  q8_0_offset_128: row r is the hidden bytes at C + r * hidden; q = code - 128.
  Scales: little-endian float32 d at S + (r * nb + j / 32) * 4. The row's value is float32(q) * d.
hidden is the graph's own: dim 2 of its `inputs_embeds` input (read from the .onnx file).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

BLOCK = 32
PARTS = {"f32": ("table",), "q8_0_nibble_planes": ("high", "low", "scales"), "q8_0_offset_128": ("codes", "scales")}
FLOAT_PARTS = ("table", "scales")  # little-endian float32; the others are bytes (uint8)


def row_bytes(part: str, hidden: int) -> int:
    """Bytes of one row of a table part."""
    return {"table": hidden * 4, "high": hidden // 2, "low": hidden // 2, "codes": hidden,
            "scales": hidden // BLOCK * 4}[part]


def model_entry(manifest: dict, variant: str) -> dict:
    """The manifest's model file entry of a variant."""
    for f in manifest["files"]:
        if f["kind"] == "model" and f.get("variant") == variant:
            return f
    raise KeyError(f"variant {variant!r} has no model file in the manifest")


def embedding_entry(manifest: dict, variant: str) -> dict | None:
    """The variant's `embedding` entry; None for a graph that takes input_ids (a folder of an importer before
    version 7 for fp32, before 6 for every variant; toy models)."""
    return model_entry(manifest, variant).get("embedding")


def token_feeds(model_dir: Path | str, manifest: dict, variant: str, ids, keep: int = 0) -> dict:
    """The token input of one run of the variant's graph for ids [batch, seq]: {io.inputs_embeds: float32
    [batch, seq, hidden]} when its model entry has `embedding`, else {io.input_ids: int64 [batch, seq]}; plus
    {io.logits_to_keep: [keep]} when the manifest names that input (importer version 8 on): the logits of the
    last `keep` positions, 0 for every position's (what a graph without the input returns)."""
    ids = np.asarray(ids, np.int64)
    io = manifest["io"]
    feeds = {io["logits_to_keep"]: np.array([keep], np.int64)} if io.get("logits_to_keep") else {}
    if embedding_entry(manifest, variant) is None:
        return {io["input_ids"]: ids, **feeds}
    rows = embedding_rows(model_dir, manifest, variant, ids.reshape(-1))
    return {io["inputs_embeds"]: rows.reshape(*ids.shape, rows.shape[-1]), **feeds}


def embedding_rows(model_dir: Path | str, manifest: dict, variant: str, ids) -> np.ndarray:
    """float32 [len(ids), hidden]: the rows of `ids` as the manifest entry describes them (only those rows are read)."""
    entry = embedding_entry(manifest, variant)
    if entry is None:
        raise ValueError(f"variant {variant!r} has no embedding entry (its graph takes input_ids)")
    encoding = entry["encoding"]
    if encoding not in PARTS or set(entry) != {"weights", "encoding", *PARTS[encoding]}:
        raise ValueError(f"unknown embedding entry {entry}")
    model_dir = Path(model_dir)
    hidden = graph_hidden(model_dir / model_entry(manifest, variant)["path"])
    vocab, nb = manifest["vocab_size"], hidden // BLOCK
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids outside 0..{vocab - 1}")
    with open(model_dir / entry["weights"], "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size

        def table(part: str) -> np.ndarray:  # uint8 [n, row bytes]: the rows of ids, one positioned read each
            width = row_bytes(part, hidden)
            start, end = entry[part], entry[part] + vocab * width
            if end > size:
                raise ValueError(f"{entry['weights']}: {part} table ends at byte {end}, past the file's {size}")
            return _read_rows(fd, start, width, ids)

        if encoding == "f32":
            return table("table").view("<f4").astype(np.float32)  # [n, hidden]
        d = table("scales").view("<f4").astype(np.float32)  # [n, nb]
        if encoding == "q8_0_nibble_planes":
            q = 16 * (_unpack_nibbles(table("high")) - 8) + _unpack_nibbles(table("low"))
        else:
            q = table("codes").astype(np.int16) - 128
    rows = q.astype(np.float32).reshape(len(ids), nb, BLOCK) * d[..., None]
    return rows.reshape(len(ids), hidden)


def _read_rows(fd: int, start: int, width: int, ids: np.ndarray) -> np.ndarray:
    """uint8 [len(ids), width]: row r is the width bytes at start + r * width, read with pread (as the engine reads
    them) rather than through a mapping of the file, which would leave the pages it touched (and the kernel's
    fault-around) mapped in this process's RSS: a Python measurement of a graph's memory would count them. A run of
    consecutive ids (verify.py's whole-table check) is one read."""
    out = np.empty((len(ids), width), np.uint8)
    if len(ids) > 1 and bool((np.diff(ids) == 1).all()):
        runs = [(0, len(ids))]
    else:
        runs = [(i, i + 1) for i in range(len(ids))]
    for a, b in runs:
        n = (b - a) * width
        buf = os.pread(fd, n, start + int(ids[a]) * width)
        if len(buf) != n:
            raise ValueError(f"short read: {len(buf)} of {n} bytes at {start + int(ids[a]) * width}")
        out[a:b] = np.frombuffer(buf, np.uint8).reshape(b - a, width)
    return out


def _unpack_nibbles(b: np.ndarray) -> np.ndarray:
    """uint8 [n, k] -> int16 [n, 2k]: column 2i is byte i's low nibble, 2i + 1 its high nibble."""
    out = np.empty(b.shape[:-1] + (b.shape[-1] * 2,), np.int16)
    out[..., 0::2] = b & 0x0F
    out[..., 1::2] = b >> 4
    return out


@functools.lru_cache(maxsize=None)
def graph_hidden(graph: Path) -> int:
    """Dim 2 of the graph's `inputs_embeds` input, read from the .onnx protobuf (ModelProto.graph 7 ->
    GraphProto.input 11 -> ValueInfoProto name 1 / type 2 -> TypeProto.tensor_type 1 -> shape 2 -> dim 1 ->
    dim_value 1) without the onnx package, which the bench venv does not have."""
    buf = memoryview(Path(graph).read_bytes())
    for field, value in _fields(buf):
        if field != 7:
            continue
        for gfield, vi in _fields(value):
            if gfield != 11 or _first(vi, 1, bytes) != b"inputs_embeds":
                continue
            shape = _first(_first(_first(vi, 2), 1), 2)
            dims = [_first(dim, 1, int) for f, dim in _fields(shape) if f == 1]
            if len(dims) != 3 or not isinstance(dims[2], int):
                raise ValueError(f"{graph}: inputs_embeds has no fixed hidden size ({dims})")
            return dims[2]
    raise ValueError(f"{graph}: no inputs_embeds input")


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: memoryview):
    """(field number, value) of a protobuf message: int for varints, memoryview for length-delimited."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def _first(buf: memoryview, field: int, kind=memoryview):
    """The first value of `field` (memoryview, bytes or int); None when absent."""
    for f, value in _fields(buf):
        if f == field:
            return bytes(value) if kind is bytes else value
    return None


def load_manifest(model_dir: Path | str) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8"))
