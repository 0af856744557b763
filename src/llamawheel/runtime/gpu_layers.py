"""``N_GPU_LAYERS=auto``: how many layers of a GGUF model fit in the free GPU memory.

The sizes come from the model itself (its GGUF header: every tensor's offset, so its real, quantised size)
and from the KV cache llama.cpp allocates for ``n_ctx``; the free memory from NVML. llama.cpp's own
numbering (llama-cpp-python 0.3.36, llama.cpp since PR #18148, December 2025): a model with B repeating
blocks has B + 1 "layers", the output layer counting as one; ``n_gpu_layers = k`` puts the LAST k of them
on the GPU, so the output layer goes first, then blocks B-1, B-2 ... (each with its KV cache). The token
embeddings always stay in host memory.

Estimates are upper bounds for models whose attention needs less than full f16 K and V for every block
(sliding-window layers, MLA, recurrent layers). Only the first visible GPU is counted: with several,
llama.cpp spreads the layers over all of them, so more would fit.

Standard library only: this file is copied into the runtime image (``python -m llamawheel_runtime.gpu_layers``).
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import math
import os
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_RESERVE = 768 * MIB
"""Memory left free besides the compute buffer: the CUDA context (300-500 MiB, it counts against the free
memory NVML reports before llama.cpp starts), cuBLAS's workspace and llama.cpp's CUDA pool for temporaries."""
N_UBATCH = 512
"""Tokens one compute pass takes (llama-cpp-python's default n_ubatch): sizes the compute buffer."""
CTX_PAD = 256
"""llama.cpp rounds n_ctx up to a multiple of this before sizing the KV cache."""
CHUNK = 1 << 20
"""Bytes read from the file at a time."""
MAX_KEPT_ARRAY = 1024
"""Integer arrays up to this long are kept (per-block values such as head_count_kv); longer ones are skipped."""
NO_GPU = "N_GPU_LAYERS=auto: no NVIDIA GPU visible (NVML not found, or no device): every layer on the CPU"

_SCALARS = {t: struct.Struct("<" + c) for t, c in
            {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}.items()}
"""GGUF metadata value type -> its little-endian layout (8 is a string, 9 an array)."""
_INTEGERS = {0, 1, 2, 3, 4, 5, 10, 11}
_STRING, _ARRAY = 8, 9
_U32, _U64, _TYPE_COUNT = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<IQ")

Value = bool | int | float | str | tuple[int, ...]

MAX_TENSORS = 1 << 16
"""Tensors a header may list. The largest llama.cpp models list a few thousand (a mixture of experts keeps each
block's experts in one tensor); every one costs a few hundred bytes of memory here, so 65,536 stay under 20 MB."""
MAX_KEYS = 1 << 16
"""Metadata keys a header may list: real models have under a hundred (the vocabulary is one array)."""
MAX_ARRAY = 1 << 24
"""Elements of one metadata array: the largest vocabularies and merge lists have well under a million."""
MAX_NAME = (1 << 16) - 1
"""A key's length: the GGUF specification's limit."""
MAX_TENSOR_NAME = 256
"""A tensor name's length: llama.cpp refuses names of 64 bytes or more (GGML_MAX_NAME); with MAX_TENSORS, the
names held here stay under 16 MiB."""
MAX_STRING = 64 * MIB
"""A string value's length: the longest real ones are chat templates (tens of kB) and a whole tokenizer.json
(a few MB). Only short ones are ever read into memory; longer ones are skipped."""
MAX_KEPT_STRING = 1024
"""String values up to this long are kept (the architecture's name); longer ones are skipped."""
MAX_DEPTH = 4
"""Arrays nested in arrays: llama.cpp reads no nested array at all; gguf-py can write them."""
MAX_BLOCKS = 1 << 16
"""``{arch}.block_count``: the deepest models have a few hundred blocks; the plan takes one step per block."""
MAX_KEPT = 256
"""Metadata values kept for sizing (the keys named in ``_USED``): a real model has about ten."""
_USED = ("architecture", "alignment", "block_count", "embedding_length", "attention.head_count",
         "attention.head_count_kv", "attention.key_length", "attention.value_length", "context_length", "vocab_size")
"""Metadata read_layout uses (after the architecture or ``general.``): only these values are kept."""
_MIN_KV = 8 + 4 + 1
"""The fewest bytes a metadata entry takes: an empty key's length, the value type, a one-byte value."""
_MIN_TENSOR = 8 + 4 + 4 + 8
"""The fewest bytes a tensor's entry takes: an empty name's length, no dimensions, the type, the offset."""
_MIN_ELEMENT = {_STRING: 8, _ARRAY: 12}
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292), 16: (256, 66),
    17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17),
}
"""ggml tensor type -> (elements per block, bytes per block), as ggml's type traits give them: a tensor's size."""


class GgufError(ValueError):
    """The file is not a GGUF model this can size; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelLayout:
    """A GGUF model's shape and where its bytes go (sizes include the alignment padding after each tensor)."""

    arch: str
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    """Key/value heads; the largest when the model gives one per block."""
    key_length: int
    value_length: int
    context_length: int
    """The context the model was trained with (0 when the file does not say)."""
    vocab_size: int
    layer_bytes: tuple[int, ...]
    """Index i: the tensors named ``blk.{i}.*``."""
    output_bytes: int
    """The output layer: output.weight and output_norm.* (token_embd.weight when the embeddings are tied:
    llama.cpp then copies it to the GPU, and it counts in other_bytes too)."""
    other_bytes: int
    """Everything else, token_embd.weight above all: stays in host memory."""
    file_size: int


class _Reader:
    """Sequential little-endian reads of a file's header, a megabyte at a time. Every count and length it
    reads is checked against a limit and against the bytes left in the file before anything is read or
    allocated for it."""

    def __init__(self, file: BinaryIO, path: Path, size: int) -> None:
        self.file, self.path, self.size = file, path, size
        self.buf, self.pos, self.base = b"", 0, file.tell()  # base: the file offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    @property
    def left(self) -> int:
        """Bytes in the file after the read position."""
        return self.size - self.offset

    def _truncated(self) -> GgufError:
        return GgufError(f"{self.path}: truncated: the file ends inside its header, at byte {self.size}")

    def _fill(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            return
        if n > self.left:
            raise self._truncated()
        if self.pos > len(self.buf):  # skipped past the buffer
            self.file.seek(self.offset)
        self.base += self.pos
        self.buf = self.buf[self.pos:] + self.file.read(max(n, CHUNK))
        self.pos = 0

    def skip(self, n: int) -> None:
        if n > self.left:
            raise self._truncated()
        self.pos += n

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        self._fill(layout.size)
        values = layout.unpack_from(self.buf, self.pos)
        self.pos += layout.size
        return values

    def u64(self) -> int:
        return int(self.unpack(_U64)[0])

    def count(self, n: int, what: str, limit: int, each: int) -> int:
        """``n`` items the header announces, each at least ``each`` bytes: refused above ``limit`` or when the
        rest of the file cannot hold them."""
        if n > limit:
            raise GgufError(f"{self.path}: the header says {n} {what}; at most {limit} are read"
                            " (a corrupt or crafted file?)")
        if n * each > self.left:
            raise GgufError(f"{self.path}: truncated: the file ends inside its header, at byte {self.size}: the"
                            f" header says {n} {what}, at least {n * each} bytes from byte {self.offset}")
        return n

    def length(self, what: str, limit: int) -> int:
        """A string's length, checked before it is read."""
        at = self.offset
        n = self.u64()
        if n > limit:
            raise GgufError(f"{self.path}: the header says {what} at byte {at} is {n} bytes long; at most {limit}"
                            " (a corrupt or crafted file?)")
        if n > self.left:
            raise self._truncated()
        return n

    def text(self, n: int) -> str:
        self._fill(n)
        text = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def string(self, what: str, limit: int) -> str:
        """A key or a tensor name."""
        return self.text(self.length(what, limit))

    def value(self, vtype: int, key: str, keep: bool, depth: int = 0) -> Value | None:
        """One metadata value; None when it is not kept: ``keep`` is false, or it is a long string or array."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])[0]  # type: ignore[no-any-return]
        if vtype == _STRING:
            n = self.length(f"the string {key}", MAX_STRING)
            if keep and n <= MAX_KEPT_STRING:
                return self.text(n)
            self.skip(n)
            return None
        if vtype != _ARRAY:
            raise GgufError(f"{self.path}: unknown metadata value type {vtype} for {key} (a corrupt file?)")
        if depth >= MAX_DEPTH:
            raise GgufError(f"{self.path}: {key} nests arrays in arrays more than {MAX_DEPTH} deep"
                            " (a corrupt or crafted file?)")
        etype, count = self.unpack(_TYPE_COUNT)
        each = _SCALARS[etype].size if etype in _SCALARS else _MIN_ELEMENT.get(etype)
        if each is None:
            raise GgufError(f"{self.path}: unknown metadata value type {etype} in the array {key} (a corrupt file?)")
        self.count(count, f"elements in the array {key}", MAX_ARRAY, each)
        if keep and etype in _INTEGERS and count <= MAX_KEPT_ARRAY:
            return tuple(int(v) for v in self.unpack(struct.Struct(f"<{count}{_SCALARS[etype].format[-1]}")))
        if etype in _SCALARS:
            self.skip(count * each)
        elif etype == _STRING:  # a vocabulary: 100k+ strings, each with its own length
            for _ in range(count):
                self.skip(self.length(f"a string in {key}", MAX_STRING))
        else:
            for _ in range(count):
                self.value(etype, key, False, depth + 1)
        return None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header lists it."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    """From the start of the tensor data."""

    @property
    def nbytes(self) -> int | None:
        """Its data's size, from its type and dimensions; None for a type GGML_BLOCKS does not know."""
        block = GGML_BLOCKS.get(self.ggml_type)
        return None if block is None else math.prod(self.dims) * block[1] // block[0]


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF file's header, checked against the file: every tensor's data lies inside it."""

    path: Path
    version: int
    metadata: Mapping[str, Value]
    """Only the values read_layout uses (the keys in ``_USED``)."""
    tensors: tuple[TensorInfo, ...]
    data_start: int
    """The file offset of the tensor data (the header, padded to ``general.alignment``)."""
    data_end: int
    """Where the tensor data ends, as the header says: the least size the file can have."""
    file_size: int
    keys: frozenset[str] = frozenset()
    """Every metadata key the file has (the values of most are not kept)."""


def _kept(key: str) -> bool:
    return len(key) <= 256 and key.partition(".")[2] in _USED


def _int(meta: Mapping[str, Value], key: str, default: int) -> int:
    """An integer field; the largest element of a per-block array; ``default`` when missing (or not a number)."""
    value = meta.get(key)
    if isinstance(value, tuple):
        return max(value, default=default)
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return int(value) if isinstance(value, int | float) else default


def read_gguf_header(path: Path) -> GgufHeader:
    """Parse a GGUF file's header (versions 2 and 3, little-endian); the tensor data is never read. Bounded: a
    corrupt or crafted file (huge counts or lengths, deep nesting, a cut file) raises GgufError naming it and
    what is wrong, never a MemoryError or a RecursionError."""
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        magic = file.read(4)
        r = _Reader(file, path, file_size)
        if magic != b"GGUF":
            raise GgufError(f"{path}: not a GGUF file (starts with {magic!r}); llama.cpp reads only GGUF models:"
                            " convert it with llama.cpp's convert_hf_to_gguf.py")
        (version,) = r.unpack(_U32)
        if version not in (2, 3):
            raise GgufError(f"{path}: GGUF version {version} is not supported (only 2 and 3, little-endian)")
        tensor_count = r.count(r.u64(), "tensors", MAX_TENSORS, _MIN_TENSOR)
        kv_count = r.count(r.u64(), "metadata keys", MAX_KEYS, _MIN_KV)
        meta: dict[str, Value] = {}
        keys: set[str] = set()
        for _ in range(kv_count):
            key = r.string("a metadata key", MAX_NAME)
            keys.add(key)
            keep = _kept(key)
            value = r.value(r.unpack(_U32)[0], key, keep)
            if keep and value is not None:
                meta[key] = value
                if len(meta) > MAX_KEPT:
                    raise GgufError(f"{path}: more than {MAX_KEPT} metadata keys about the model's shape"
                                    " (a corrupt or crafted file?)")
        r.count(tensor_count, "tensors", MAX_TENSORS, _MIN_TENSOR)
        tensors: list[TensorInfo] = []
        for _ in range(tensor_count):
            name = r.string("a tensor name", MAX_TENSOR_NAME)
            (n_dims,) = r.unpack(_U32)
            if n_dims > 8:
                raise GgufError(f"{path}: tensor {name} has {n_dims} dimensions (a corrupt file?)")
            dims = r.unpack(struct.Struct(f"<{n_dims}Q"))
            ggml_type, offset = r.unpack(_TYPE_COUNT)
            tensors.append(TensorInfo(name, tuple(int(d) for d in dims), int(ggml_type), int(offset)))
        alignment = _int(meta, "general.alignment", 32) or 32
        if alignment < 0 or alignment & (alignment - 1):
            raise GgufError(f"{path}: general.alignment is {alignment}, not a power of two (a corrupt file?)")
        data_start = -(-r.offset // alignment) * alignment
    data_end, last = data_start, None
    for t in tensors:
        end = data_start + t.offset + (t.nbytes or 0)
        if end > data_end:
            data_end, last = end, t
    if last is not None and data_end > file_size:
        where = "starts" if last.nbytes is None else "ends"
        raise GgufError(f"{path}: truncated: tensor {last.name} {where} at byte {data_end} but the file has"
                        f" {file_size} bytes")
    return GgufHeader(path, version, meta, tuple(tensors), data_start, data_end, file_size, frozenset(keys))


def read_layout(path: Path) -> ModelLayout:
    """The sizes of a GGUF model's layers, from its header (read_gguf_header); the tensor data is never read."""
    header = read_gguf_header(path)
    meta, data_start, file_size = header.metadata, header.data_start, header.file_size
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufError(f"{path}: no general.architecture in the metadata: not a llama.cpp model")
    block_count = _int(meta, f"{arch}.block_count", -1)
    if block_count < 0:
        raise GgufError(f"{path}: no {arch}.block_count in the metadata: cannot tell how many layers the model has")
    if block_count > MAX_BLOCKS:
        raise GgufError(f"{path}: the header says {block_count} blocks; at most {MAX_BLOCKS} are read"
                        " (a corrupt or crafted file?)")
    tensors = sorted((t.offset, t.name, t.dims) for t in header.tensors)
    ends = [offset for offset, _, _ in tensors[1:]] + [file_size - data_start] if tensors else []
    sizes = {name: end - offset for (offset, name, _), end in zip(tensors, ends, strict=True)}
    layers = [0] * block_count
    output = other = 0
    for name, size in sizes.items():
        part, _, rest = name.partition(".")
        block = rest.partition(".")[0]
        if part == "blk" and block.isdigit() and int(block) < block_count:
            layers[int(block)] += size
        elif part in ("output", "output_norm"):
            output += size
        else:
            other += size
    if "output.weight" not in sizes:  # tied embeddings: llama.cpp uses token_embd as the output matrix
        output += sizes.get("token_embd.weight", 0)
    embd_dims = next((dims for _, name, dims in tensors if name == "token_embd.weight"), ())
    embedding_length = _int(meta, f"{arch}.embedding_length", 0)
    head_count = _int(meta, f"{arch}.attention.head_count", 0)
    head_dim = embedding_length // head_count if head_count else 0
    return ModelLayout(
        arch=arch, block_count=block_count, embedding_length=embedding_length, head_count=head_count,
        head_count_kv=_int(meta, f"{arch}.attention.head_count_kv", head_count),
        key_length=_int(meta, f"{arch}.attention.key_length", head_dim),
        value_length=_int(meta, f"{arch}.attention.value_length", head_dim),
        context_length=_int(meta, f"{arch}.context_length", 0),
        vocab_size=int(embd_dims[1]) if len(embd_dims) > 1 else _int(meta, f"{arch}.vocab_size", 0),
        layer_bytes=tuple(layers), output_bytes=output, other_bytes=other, file_size=file_size)


def padded_ctx(n_ctx: int) -> int:
    """n_ctx as llama.cpp sizes its buffers for it: rounded up to a multiple of CTX_PAD."""
    return -(-n_ctx // CTX_PAD) * CTX_PAD


def kv_cache_bytes(layout: ModelLayout, n_ctx: int, layers: int | None = None, bytes_per_element: int = 2) -> int:
    """The KV cache of ``layers`` blocks (default all): n_ctx keys and values per block, f16 by default."""
    per_token = (layout.key_length + layout.value_length) * layout.head_count_kv * bytes_per_element
    return padded_ctx(n_ctx) * per_token * (layout.block_count if layers is None else layers)


def default_reserve(layout: ModelLayout, n_ctx: int) -> int:
    """DEFAULT_RESERVE plus the compute buffer's two biggest f32 intermediates for N_UBATCH tokens: the
    attention scores (n_ctx per head and token: llama-cpp-python's server leaves flash attention off) and
    the logits (vocab_size per token)."""
    return DEFAULT_RESERVE + N_UBATCH * 4 * (padded_ctx(n_ctx) * layout.head_count + layout.vocab_size)


@dataclass(frozen=True)
class LayerPlan:
    """How many layers go to the GPU, and what they need there."""

    layers: int
    """The n_gpu_layers to pass to llama.cpp."""
    total_layers: int
    """block_count + 1: the value meaning "everything"."""
    gpu_bytes: int
    """weights_bytes + kv_bytes."""
    free_bytes: int
    reserve_bytes: int
    weights_bytes: int
    kv_bytes: int
    n_ctx: int
    next_bytes: int
    """What one more layer would need in all (0 when everything fits)."""
    device: str = ""
    sequences: int = 1
    """Chats with a KV cache of n_ctx each (the server's parallel slots)."""

    def describe(self) -> str:
        """One log line saying what was chosen and why."""
        where = f"{_size(self.free_bytes)} free" + (f" on {self.device}" if self.device else "")
        if self.layers == 0:
            return (f"N_GPU_LAYERS=auto: no layer fits on the GPU ({where}, {_size(self.reserve_bytes)} reserve;"
                    f" the output layer alone needs {_size(self.next_bytes)}): every layer on the CPU")
        each = f"n_ctx {self.n_ctx}" + (f" for each of {self.sequences} chats" if self.sequences > 1 else "")
        why = (f"{_size(self.weights_bytes)} weights + {_size(self.kv_bytes)} KV cache at {each}"
               f" + {_size(self.reserve_bytes)} reserve, {where}")
        if self.layers == self.total_layers:
            return f"N_GPU_LAYERS=auto: all {self.total_layers} layers on the GPU ({why})"
        return (f"N_GPU_LAYERS=auto: {self.layers} of {self.total_layers} layers on the GPU ({why}); the rest run"
                " on the CPU: a smaller n_ctx or a smaller quantisation fits more")


def plan(layout: ModelLayout, n_ctx: int, free_bytes: int, reserve_bytes: int | None = None,
         device: str = "", sequences: int = 1) -> LayerPlan:
    """The largest n_gpu_layers whose weights and KV cache (``n_ctx`` tokens for each of ``sequences`` chats) fit in
    ``free_bytes`` less ``reserve_bytes`` (default: ``default_reserve``, for one chat's n_ctx: each slot attends to its
    own). ``n_ctx`` 0 means the model's context_length, as in llama.cpp."""
    n_ctx = n_ctx if n_ctx > 0 else layout.context_length
    reserve = default_reserve(layout, n_ctx) if reserve_bytes is None else reserve_bytes
    costs = [(0, 0)]  # (weights, kv) of k layers: the output layer first, then the blocks from the last
    weights = layout.output_bytes
    for blocks in range(layout.block_count + 1):
        if blocks:
            weights += layout.layer_bytes[layout.block_count - blocks]
        costs.append((weights, kv_cache_bytes(layout, n_ctx, blocks) * sequences))
    k = max(i for i, (w, kv) in enumerate(costs) if i == 0 or w + kv <= free_bytes - reserve)
    next_bytes = sum(costs[k + 1]) if k + 1 < len(costs) else 0
    return LayerPlan(layers=k, total_layers=layout.block_count + 1, gpu_bytes=sum(costs[k]), free_bytes=free_bytes,
                     reserve_bytes=reserve, weights_bytes=costs[k][0], kv_bytes=costs[k][1], n_ctx=n_ctx,
                     next_bytes=next_bytes, device=device, sequences=sequences)


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's name and memory as NVML reports them."""

    name: str
    total_bytes: int
    free_bytes: int


class _NvmlMemory(ctypes.Structure):
    _fields_ = (("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong))


def _nvml_index(index: int) -> int | None:
    """NVML's index of CUDA device ``index``: NVML ignores CUDA_VISIBLE_DEVICES, so map it through the list.
    A UUID entry (``GPU-...``, ``MIG-...``) is not mapped: ``index`` itself is used. None: the device is hidden."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    entries = [e.strip() for e in visible.split(",")]
    if index >= len(entries) or not entries[index]:
        return None
    try:
        number = int(entries[index])
    except ValueError:
        return index
    return number if number >= 0 else None


def free_gpu_memory(index: int = 0) -> GpuMemory | None:
    """CUDA device ``index``'s memory from NVML (``libnvidia-ml.so.1``, which the NVIDIA driver and container
    toolkit provide); None when the library is missing or any call fails: no usable GPU."""
    nvml_index = _nvml_index(index)
    if nvml_index is None:
        return None
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        if lib.nvmlInit_v2() != 0:
            return None
    except (OSError, AttributeError):
        return None
    try:
        handle, memory, name = ctypes.c_void_p(), _NvmlMemory(), ctypes.create_string_buffer(96)
        if (lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(nvml_index), ctypes.byref(handle)) != 0
                or lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0
                or lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) != 0):
            return None
        return GpuMemory(name.value.decode(errors="replace"), int(memory.total), int(memory.free))
    except AttributeError:
        return None
    finally:
        lib.nvmlShutdown()


class Query(enum.Enum):
    NVML = "ask NVML"


QUERY_NVML = Query.NVML
"""auto_layers's default ``gpu``: ask NVML for the free memory of the first visible GPU."""


def auto_layers(model: Path, n_ctx: int, reserve_bytes: int | None = None,
                gpu: GpuMemory | Query | None = QUERY_NVML, sequences: int = 1) -> tuple[int, str]:
    """(n_gpu_layers, a log line saying why) for ``model`` on ``gpu`` (None: no GPU), with a KV cache of ``n_ctx``
    for each of ``sequences`` chats. Raises GgufError (and OSError) when the model cannot be read."""
    if isinstance(gpu, Query):
        gpu = free_gpu_memory()
    if gpu is None:
        return 0, NO_GPU
    chosen = plan(read_layout(model), n_ctx, gpu.free_bytes, reserve_bytes, device=gpu.name, sequences=sequences)
    return chosen.layers, chosen.describe()


def _size(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def main(argv: Sequence[str] | None = None) -> int:
    """Print a model's sizes and how many of its layers fit on the GPU."""
    parser = argparse.ArgumentParser(prog="python -m llamawheel_runtime.gpu_layers",
                                     description="How many layers of a GGUF model fit in the free GPU memory.")
    parser.add_argument("model", type=Path, help="the GGUF file")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context length (0: the model's; default 4096)")
    parser.add_argument("--free-mib", type=int, help="free GPU memory in MiB (default: ask NVML)")
    parser.add_argument("--reserve-mib", type=int, help=f"memory to leave free (default: {DEFAULT_RESERVE // MIB}"
                        f" MiB plus a compute buffer estimate for n_ctx and n_ubatch {N_UBATCH})")
    args = parser.parse_args(argv)
    try:
        layout = read_layout(args.model)
    except (OSError, GgufError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n_ctx = args.n_ctx if args.n_ctx > 0 else layout.context_length
    blocks = sum(layout.layer_bytes)
    print(f"{args.model}: {layout.arch}, {layout.block_count} blocks, {_size(layout.file_size)}")
    print(f"  blocks      {_size(blocks)} ({_size(blocks // max(layout.block_count, 1))} each on average)")
    print(f"  output      {_size(layout.output_bytes)} (the first layer to go to the GPU)")
    print(f"  host only   {_size(layout.other_bytes)} (token embeddings: never on the GPU)")
    print(f"  KV cache    {_size(kv_cache_bytes(layout, n_ctx))} at n_ctx {n_ctx} (f16, {layout.head_count_kv}"
          f" KV heads of {layout.head_count})")
    gpu = free_gpu_memory() if args.free_mib is None else GpuMemory("", args.free_mib * MIB, args.free_mib * MIB)
    if gpu is None:
        print(NO_GPU)
        return 0
    reserve = None if args.reserve_mib is None else args.reserve_mib * MIB
    print(plan(layout, n_ctx, gpu.free_bytes, reserve, device=gpu.name).describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
