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
import os
import struct
import sys
from collections.abc import Sequence
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
    """Sequential little-endian reads of a file's header, a megabyte at a time."""

    def __init__(self, file: BinaryIO, path: Path, size: int) -> None:
        self.file, self.path, self.size = file, path, size
        self.buf, self.pos, self.base = b"", 0, file.tell()  # base: the file offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _fill(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            return
        if self.offset + n > self.size:
            raise GgufError(f"{self.path}: truncated: the file ends inside its header, at byte {self.size}")
        if self.pos > len(self.buf):  # skipped past the buffer
            self.file.seek(self.offset)
        self.base += self.pos
        self.buf = self.buf[self.pos:] + self.file.read(max(n, CHUNK))
        self.pos = 0

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        self._fill(layout.size)
        values = layout.unpack_from(self.buf, self.pos)
        self.pos += layout.size
        return values

    def u64(self) -> int:
        return int(self.unpack(_U64)[0])

    def string(self) -> str:
        n = self.u64()
        self._fill(n)
        text = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, vtype: int, key: str) -> Value | None:
        """One metadata value; None for an array skipped over."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])[0]  # type: ignore[no-any-return]
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise GgufError(f"{self.path}: unknown metadata value type {vtype} for {key} (a corrupt file?)")
        etype, count = self.unpack(_TYPE_COUNT)
        if etype in _INTEGERS and count <= MAX_KEPT_ARRAY:
            return tuple(int(v) for v in self.unpack(struct.Struct(f"<{count}{_SCALARS[etype].format[-1]}")))
        if etype in _SCALARS:
            self.pos += count * _SCALARS[etype].size
        elif etype == _STRING:  # a vocabulary: 100k+ strings, each with its own length
            for _ in range(count):
                self._fill(8)
                self.pos += 8 + _U64.unpack_from(self.buf, self.pos)[0]
        else:
            for _ in range(count):
                self.value(etype, key)
        return None


def _int(meta: dict[str, Value], key: str, default: int) -> int:
    """An integer field; the largest element of a per-block array; ``default`` when missing."""
    value = meta.get(key)
    if isinstance(value, tuple):
        return max(value, default=default)
    return int(value) if isinstance(value, int | float) else default


def read_layout(path: Path) -> ModelLayout:
    """Parse a GGUF file's header (versions 2 and 3, little-endian); the tensor data is never read."""
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
        tensor_count, kv_count = r.u64(), r.u64()
        meta: dict[str, Value] = {}
        for _ in range(kv_count):
            key = r.string()
            value = r.value(r.unpack(_U32)[0], key)
            if value is not None:
                meta[key] = value
        tensors: list[tuple[int, str, tuple[int, ...]]] = []  # (offset, name, dims)
        for _ in range(tensor_count):
            name = r.string()
            (n_dims,) = r.unpack(_U32)
            if n_dims > 8:
                raise GgufError(f"{path}: tensor {name} has {n_dims} dimensions (a corrupt file?)")
            dims = r.unpack(struct.Struct(f"<{n_dims}Q"))
            _type, offset = r.unpack(_TYPE_COUNT)
            tensors.append((offset, name, dims))
        alignment = _int(meta, "general.alignment", 32) or 32
        data_start = -(-r.offset // alignment) * alignment
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufError(f"{path}: no general.architecture in the metadata: not a llama.cpp model")
    block_count = _int(meta, f"{arch}.block_count", -1)
    if block_count < 0:
        raise GgufError(f"{path}: no {arch}.block_count in the metadata: cannot tell how many layers the model has")
    tensors.sort()
    ends = [offset for offset, _, _ in tensors[1:]] + [file_size - data_start] if tensors else []
    sizes = {name: end - offset for (offset, name, _), end in zip(tensors, ends, strict=True)}
    if tensors and ends[-1] < tensors[-1][0]:
        raise GgufError(f"{path}: truncated: tensor {tensors[-1][1]} starts at byte {data_start + tensors[-1][0]}"
                        f" but the file has {file_size} bytes")
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

    def describe(self) -> str:
        """One log line saying what was chosen and why."""
        where = f"{_size(self.free_bytes)} free" + (f" on {self.device}" if self.device else "")
        if self.layers == 0:
            return (f"N_GPU_LAYERS=auto: no layer fits on the GPU ({where}, {_size(self.reserve_bytes)} reserve;"
                    f" the output layer alone needs {_size(self.next_bytes)}): every layer on the CPU")
        why = (f"{_size(self.weights_bytes)} weights + {_size(self.kv_bytes)} KV cache at n_ctx {self.n_ctx}"
               f" + {_size(self.reserve_bytes)} reserve, {where}")
        if self.layers == self.total_layers:
            return f"N_GPU_LAYERS=auto: all {self.total_layers} layers on the GPU ({why})"
        return (f"N_GPU_LAYERS=auto: {self.layers} of {self.total_layers} layers on the GPU ({why}); the rest run"
                " on the CPU: a smaller n_ctx or a smaller quantisation fits more")


def plan(layout: ModelLayout, n_ctx: int, free_bytes: int, reserve_bytes: int | None = None,
         device: str = "") -> LayerPlan:
    """The largest n_gpu_layers whose weights and KV cache fit in ``free_bytes`` less ``reserve_bytes``
    (default: ``default_reserve``). ``n_ctx`` 0 means the model's context_length, as in llama.cpp."""
    n_ctx = n_ctx if n_ctx > 0 else layout.context_length
    reserve = default_reserve(layout, n_ctx) if reserve_bytes is None else reserve_bytes
    costs = [(0, 0)]  # (weights, kv) of k layers: the output layer first, then the blocks from the last
    weights = layout.output_bytes
    for blocks in range(layout.block_count + 1):
        if blocks:
            weights += layout.layer_bytes[layout.block_count - blocks]
        costs.append((weights, kv_cache_bytes(layout, n_ctx, blocks)))
    k = max(i for i, (w, kv) in enumerate(costs) if i == 0 or w + kv <= free_bytes - reserve)
    next_bytes = sum(costs[k + 1]) if k + 1 < len(costs) else 0
    return LayerPlan(layers=k, total_layers=layout.block_count + 1, gpu_bytes=sum(costs[k]), free_bytes=free_bytes,
                     reserve_bytes=reserve, weights_bytes=costs[k][0], kv_bytes=costs[k][1], n_ctx=n_ctx,
                     next_bytes=next_bytes, device=device)


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
                gpu: GpuMemory | Query | None = QUERY_NVML) -> tuple[int, str]:
    """(n_gpu_layers, a log line saying why) for ``model`` on ``gpu`` (None: no GPU). Raises GgufError (and
    OSError) when the model cannot be read."""
    if isinstance(gpu, Query):
        gpu = free_gpu_memory()
    if gpu is None:
        return 0, NO_GPU
    chosen = plan(read_layout(model), n_ctx, gpu.free_bytes, reserve_bytes, device=gpu.name)
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
