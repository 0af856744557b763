"""Small real GGUF files for the unit tests, written with the gguf package: block i is attn_q (8192 bytes) +
attn_norm (256) + ffn_up of 16*(i+1) rows (2048*(i+1)); every size a multiple of 32, so no alignment padding."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

EMBD = 64
VOCAB = 100
F16_MATRIX = EMBD * EMBD * 2  # 8192 bytes
NORM = EMBD * 4  # 256 bytes, f32


def f16(rows: int, cols: int = EMBD) -> np.ndarray:
    return np.zeros((rows, cols), dtype=np.float16)


def norm() -> np.ndarray:
    return np.ones(EMBD, dtype=np.float32)


def model_tensors(blocks: int = 4, tied: bool = False) -> dict[str, np.ndarray]:
    """Block i: attn_q (8192 bytes) + attn_norm (256) + ffn_up of 16*(i+1) rows (2048*(i+1)): every size a
    multiple of 32, so no alignment padding."""
    tensors = {"token_embd.weight": f16(VOCAB), "output_norm.weight": norm()}
    if not tied:
        tensors["output.weight"] = f16(VOCAB)
    for i in range(blocks):
        tensors[f"blk.{i}.attn_q.weight"] = f16(EMBD)
        tensors[f"blk.{i}.attn_norm.weight"] = norm()
        tensors[f"blk.{i}.ffn_up.weight"] = f16(16 * (i + 1))
    return tensors


def write_gguf(path: Path, tensors: dict[str, np.ndarray], blocks: int | None = 4,
               heads_kv: int | list[int] = 2, chat_template: str | None = None) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if blocks is not None:
        w.add_block_count(blocks)
    w.add_embedding_length(EMBD)
    w.add_head_count(4)
    w.add_head_count_kv(heads_kv)
    w.add_context_length(512)
    w.add_token_list([f"tok{i}" for i in range(VOCAB)])  # a string array the reader must skip
    w.add_token_scores([0.5] * VOCAB)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
