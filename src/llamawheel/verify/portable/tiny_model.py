"""A small llama-architecture GGUF with random weights and a real tokenizer vocabulary.

Deterministic: the same shape, weight type, vocabulary and seed give a byte-identical file.
The vocabulary comes from a vocabulary-only GGUF (llama-cpp-python's sdist carries
``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf``, 32000 tokens).

This module needs only the standard library, numpy and gguf, so it can be copied to a
machine without llamawheel and run as a script (``python tiny_model.py OUT.gguf --vocab V``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the llamawheel command line starts without them
    import gguf
    import numpy as np
    import numpy.typing as npt

WEIGHT_STD = 0.02
WEIGHT_TYPES = ("f16", "q8_0")
Q8_0_BLOCK = 32
"""Weights per q8_0 block (32 int8 and one f16 scale: 34 bytes)."""
TOKENIZER_PREFIX = "tokenizer.ggml."
FILE_TYPES = {"f16": 1, "q8_0": 7}


def _ggml_type(weight_type: str) -> gguf.GGMLQuantizationType:
    import gguf

    return {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[weight_type]


@dataclass(frozen=True)
class ModelShape:
    """The model's hyperparameters (llama.cpp's names in the GGUF: ``llama.block_count`` ...)."""

    layers: int = 2
    dim: int = 64
    ff: int = 128
    heads: int = 4
    kv_heads: int = 2
    ctx: int = 256

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def problems(self, weight_type: str) -> list[str]:
        """What is wrong with this shape for this weight type ([] when it is fine)."""
        out = [f"--{k.replace('_', '-')} must be at least 1" for k, v in vars(self).items() if v < 1]
        if out:
            return out
        if self.dim % self.heads:
            out.append(f"--dim {self.dim} is not a multiple of --heads {self.heads}")
        elif self.head_dim % 2:
            out.append(f"head size {self.head_dim} (--dim / --heads) must be even for rotary embeddings")
        if self.heads % self.kv_heads:
            out.append(f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}")
        if weight_type == "q8_0":
            out += [f"--{k} {v} is not a multiple of {Q8_0_BLOCK} (the q8_0 block size)"
                    for k, v in (("dim", self.dim), ("ff", self.ff)) if v % Q8_0_BLOCK]
        return out


PRESETS = {
    "tiny": ModelShape(),
    # Llama 3.2 1B's layout with the 32000-token vocabulary: 1.1B parameters, 2.2 GB as f16.
    "1b": ModelShape(layers=16, dim=2048, ff=8192, heads=32, kv_heads=8, ctx=2048),
}


@dataclass(frozen=True)
class Vocabulary:
    """The ``tokenizer.ggml.*`` fields of a GGUF, as (value, type, array item type)."""

    fields: tuple[tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None], ...]
    size: int

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        import gguf

        reader = gguf.GGUFReader(path)
        fields = []
        size = 0
        for name, field in reader.fields.items():
            if not name.startswith(TOKENIZER_PREFIX):
                continue
            main = field.types[0]
            sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
            value: Any
            if main == gguf.GGUFValueType.ARRAY and sub == gguf.GGUFValueType.STRING:
                value = [bytes(field.parts[i]) for i in field.data]  # raw bytes: nothing re-encoded
            elif main == gguf.GGUFValueType.STRING:
                value = bytes(field.parts[-1])
            else:
                value = field.contents()
            if name == TOKENIZER_PREFIX + "tokens":
                size = len(value)
            fields.append((name, value, main, sub))
        if not size:
            raise ValueError(f"{path} holds no tokenizer vocabulary (no {TOKENIZER_PREFIX}tokens)")
        return cls(tuple(fields), size)


def parameter_count(shape: ModelShape, vocab_size: int) -> int:
    return sum(math.prod(s) for _, s in tensor_shapes(shape, vocab_size))


def tensor_shapes(shape: ModelShape, vocab_size: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Each tensor's name and numpy shape (rows, columns); GGUF stores the reverse order."""
    kv = shape.kv_heads * shape.head_dim
    yield "token_embd.weight", (vocab_size, shape.dim)
    yield "output_norm.weight", (shape.dim,)
    yield "output.weight", (vocab_size, shape.dim)
    for i in range(shape.layers):
        yield f"blk.{i}.attn_norm.weight", (shape.dim,)
        yield f"blk.{i}.attn_q.weight", (shape.dim, shape.dim)
        yield f"blk.{i}.attn_k.weight", (kv, shape.dim)
        yield f"blk.{i}.attn_v.weight", (kv, shape.dim)
        yield f"blk.{i}.attn_output.weight", (shape.dim, shape.dim)
        yield f"blk.{i}.ffn_norm.weight", (shape.dim,)
        yield f"blk.{i}.ffn_gate.weight", (shape.ff, shape.dim)
        yield f"blk.{i}.ffn_up.weight", (shape.ff, shape.dim)
        yield f"blk.{i}.ffn_down.weight", (shape.dim, shape.ff)


def _encode(values: npt.NDArray[np.float32], weight_type: str) -> npt.NDArray[Any]:
    import gguf
    import numpy as np

    if values.ndim == 1:  # norms stay f32, as llama.cpp's converters write them
        return values
    if weight_type == "f16":
        return values.astype(np.float16)
    return gguf.quants.quantize(values, _ggml_type(weight_type))


def _encoded_size(numpy_shape: tuple[int, ...], weight_type: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(byte-or-element shape, dtype, bytes) of a tensor once encoded, without making it."""
    import gguf
    import numpy as np

    if len(numpy_shape) == 1:
        return numpy_shape, np.dtype(np.float32), 4 * numpy_shape[0]
    rows, cols = numpy_shape
    if weight_type == "f16":
        return numpy_shape, np.dtype(np.float16), 2 * rows * cols
    block, block_bytes = gguf.GGML_QUANT_SIZES[_ggml_type(weight_type)]
    byte_shape = (rows, cols // block * block_bytes)
    return byte_shape, np.dtype(np.uint8), rows * byte_shape[1]


def write_model(
    out: Path, vocab: Vocabulary, shape: ModelShape = PRESETS["tiny"], weight_type: str = "f16", seed: int = 0
) -> Path:
    """Write the model to ``out`` (atomically: a temporary file renamed into place) and return ``out``.

    Weights are normal with standard deviation 0.02, norms are 1.0; tensors are made one at a
    time, so a 1B-parameter model needs memory for its largest tensor only.
    """
    import gguf
    import numpy as np

    problems = shape.problems(weight_type) if weight_type in WEIGHT_TYPES else [
        f"unknown weight type {weight_type!r}: choose {', '.join(WEIGHT_TYPES)}"
    ]
    if problems:
        raise ValueError("; ".join(problems))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(f"llamawheel tiny llama ({shape.layers}x{shape.dim}, {weight_type}, seed {seed})")
        writer.add_context_length(shape.ctx)
        writer.add_embedding_length(shape.dim)
        writer.add_block_count(shape.layers)
        writer.add_feed_forward_length(shape.ff)
        writer.add_head_count(shape.heads)
        writer.add_head_count_kv(shape.kv_heads)
        writer.add_rope_dimension_count(shape.head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(vocab.size)
        writer.add_file_type(FILE_TYPES[weight_type])  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
        for key, value, vtype, sub in vocab.fields:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        shapes = list(tensor_shapes(shape, vocab.size))
        for name, numpy_shape in shapes:
            stored, dtype, nbytes = _encoded_size(numpy_shape, weight_type)
            raw = _ggml_type(weight_type) if dtype == np.uint8 else None
            writer.add_tensor_info(name, stored, dtype, nbytes, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(seed)
        for _, numpy_shape in shapes:
            if len(numpy_shape) == 1:
                values = np.ones(numpy_shape, dtype=np.float32)
            else:
                values = rng.standard_normal(numpy_shape, dtype=np.float32) * np.float32(WEIGHT_STD)
            writer.write_tensor_data(_encode(values, weight_type))
        writer.close()
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model is for anyone to read
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def shape_from(preset: str, **overrides: int | None) -> ModelShape:
    """A preset with any of its fields overridden (``None`` keeps the preset's value)."""
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The model options, shared by ``llamawheel tiny-model`` and this file run as a script."""
    p.add_argument("out", type=Path, help="the .gguf file to write")
    p.add_argument("--vocab", type=Path, help="a GGUF holding tokenizer.ggml.* (default: the sdist's llama-spm)")
    p.add_argument("--size", choices=PRESETS, default="tiny",
                   help="tiny (default, a few MB) or 1b (about 1.1B parameters, 2.2 GB as f16)")
    p.add_argument("--type", dest="weight_type", choices=WEIGHT_TYPES, default="f16",
                   help="weight type: f16 (cuBLAS path) or q8_0 (quantized kernels)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    for name, what in (("layers", "blocks"), ("dim", "embedding size"), ("ff", "feed-forward size"),
                       ("heads", "attention heads"), ("kv-heads", "key/value heads"), ("ctx", "context length")):
        p.add_argument(f"--{name}", type=int, help=f"{what} (default: the preset's)")


def describe(path: Path, shape: ModelShape, vocab: Vocabulary, weight_type: str) -> str:
    params = parameter_count(shape, vocab.size)
    return (f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): llama, {shape.layers} layers, dim {shape.dim}, "
            f"ff {shape.ff}, {shape.heads} heads ({shape.kv_heads} kv), {params / 1e6:.1f}M parameters, "
            f"{weight_type}, {vocab.size} tokens")


def main(argv: Sequence[str] | None = None) -> int:
    """Run as a script on a machine without llamawheel: ``--vocab`` is required there."""
    parser = argparse.ArgumentParser(prog="tiny_model.py", description="Write a small random llama GGUF.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.vocab is None:
        parser.error("--vocab is required here (a vocabulary GGUF such as ggml-vocab-llama-spm.gguf)")
    shape = shape_from(args.size, layers=args.layers, dim=args.dim, ff=args.ff, heads=args.heads,
                       kv_heads=args.kv_heads, ctx=args.ctx)
    vocab = Vocabulary.read(args.vocab)
    try:
        write_model(args.out, vocab, shape, args.weight_type, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(describe(args.out, shape, vocab, args.weight_type))
    return 0


if __name__ == "__main__":
    sys.exit(main())
