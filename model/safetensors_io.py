"""The safetensors file format, read and written one tensor at a time.

A safetensors file is: an 8-byte little-endian header length n, n bytes of JSON
(`{name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
offsets relative to the end of the header), then the raw little-endian tensor bytes.

Reading memory-maps the file and returns each tensor as a read-only numpy view, so nothing is read
from disk until it is used and host memory stays near one tensor. bfloat16 and float8 come from
`ml_dtypes` (shipped with jax), which numpy-based readers of the `safetensors` package lack.
Writing streams: the header is computed from the declared names, dtypes and shapes, then each
tensor is produced, checked and written in turn, so a model leaves the devices one tensor at a time.

A checkpoint directory holds either `model.safetensors` or several shards listed by
`model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {name: file}}`);
`CheckpointFiles` reads both layouts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype code -> numpy dtype.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
CODES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

_MAX_HEADER = 100 * 2**20  # the Rust reference implementation's limit


class CheckpointFormatError(ValueError):
    """A safetensors file, an index, or a tensor in them is malformed or not what was expected."""


def dtype_code(dtype) -> str:
    """numpy / jax dtype -> safetensors code ("F32", "BF16", ...)."""
    d = np.dtype(dtype)
    if d not in CODES:
        raise CheckpointFormatError(f"dtype {d} has no safetensors code")
    return CODES[d]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, and what it is."""

    name: str
    file: Path
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parses a safetensors header: ({name: TensorInfo}, metadata). Reads no tensor data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointFormatError(f"{path}: not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointFormatError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"{path}: malformed header entry for tensor {name!r}: {entry!r}") from e
        if code not in DTYPES:
            raise CheckpointFormatError(f"{path}: tensor {name!r} has unknown dtype {code!r}")
        expected = math.prod(shape) * DTYPES[code].itemsize
        if end - begin != expected or begin < 0 or base + end > size:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} ({code} {list(shape)}) spans bytes [{begin}, {end}) but needs "
                f"{expected} bytes inside a {size - base}-byte data section"
            )
        infos[name] = TensorInfo(name, path, code, shape, base + begin, expected)
    return infos, metadata


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor as a read-only, memory-mapped numpy array (no copy until used)."""
    dtype = DTYPES[info.dtype]
    if info.nbytes == 0:
        return np.zeros(info.shape, dtype)
    raw = np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))
    return raw.view(dtype).reshape(info.shape)


class CheckpointFiles:
    """All tensors of a checkpoint directory (single file or sharded with an index), by name."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        single, index = self.directory / SINGLE_FILE, self.directory / INDEX_FILE
        self.tensors: dict[str, TensorInfo] = {}
        if single.exists():
            self.tensors, _ = read_header(single)
            self.files = [single]
        elif index.exists():
            self.files = self._read_index(index)
        else:
            raise CheckpointFormatError(
                f"{self.directory}: no {SINGLE_FILE} and no {INDEX_FILE}; not a safetensors checkpoint"
            )

    def _read_index(self, index: Path) -> list[Path]:
        try:
            data = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointFormatError(f"{index}: not valid JSON: {e}") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointFormatError(
                f"{index}: expected an object with a 'weight_map' of tensor name -> file name, got "
                f"{json.dumps(data)[:200]}"
            )
        files = sorted(set(weight_map.values()))
        headers = {}
        for fname in files:
            fpath = self.directory / fname
            if Path(fname).name != fname or not fpath.exists():
                raise CheckpointFormatError(f"{index}: weight_map names file {fname!r}, which is not in {self.directory}")
            headers[fname], _ = read_header(fpath)
        for name, fname in weight_map.items():
            if name not in headers[fname]:
                raise CheckpointFormatError(
                    f"{index}: weight_map puts tensor {name!r} in {fname}, but that file does not hold it"
                )
            self.tensors[name] = headers[fname][name]
        for fname, infos in headers.items():
            stray = sorted(set(infos) - set(weight_map))
            if stray:
                raise CheckpointFormatError(f"{index}: {fname} holds tensors the weight_map omits: {stray[:5]}")
        return [self.directory / f for f in files]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def names(self) -> set[str]:
        return set(self.tensors)


def write_safetensors(
    path: str | Path,
    entries: Sequence[tuple[str, str, tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> int:
    """Writes a safetensors file, producing one tensor at a time.

    entries: (name, dtype code, shape) in file order; the header is built from them up front.
    produce: name -> array of exactly that dtype and shape (checked), called once per name.
    Returns the number of data bytes written.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, code, shape in entries:
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, code, shape in entries:
            arr = produce(name)
            if arr.dtype != DTYPES[code] or tuple(arr.shape) != tuple(shape):
                raise CheckpointFormatError(
                    f"{path}: tensor {name!r} was declared {code} {list(shape)} but produced "
                    f"{arr.dtype} {list(arr.shape)}"
                )
            f.write(np.ascontiguousarray(arr).tobytes())
            if on_tensor is not None:
                on_tensor(name)
    return offset


def shard_entries(
    entries: Iterable[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int
) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Splits entries, in order, into shards of at most `max_shard_bytes` (a tensor larger than
    the limit gets a shard of its own), as `save_pretrained(max_shard_size=...)` does."""
    shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    size = 0
    for entry in entries:
        nbytes = math.prod(entry[2]) * DTYPES[entry[1]].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    """HF's names: `model.safetensors` for one file, `model-00001-of-00003.safetensors`, ... else."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
