"""N_GPU_LAYERS=auto: GGUF sizes read by hand, and the layer count that fits a given free memory.

The GGUF files are real, written with the gguf package; every expected number is worked out here by hand.
llama.cpp's order (0.3.36): n_gpu_layers = k puts the output layer on the GPU first, then the blocks from the
last one down, each with its KV cache.
"""

from __future__ import annotations

import ast
import ctypes
import os
import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamawheel.runtime import gpu_layers
from llamawheel.runtime.gpu_layers import GgufError, GpuMemory, ModelLayout, auto_layers, plan, read_layout
from llamawheel.verify.portable.tiny_model import ModelShape, Vocabulary, write_model

from .gguf_files import EMBD, VOCAB, model_tensors, write_gguf

MIB = 2**20
GIB = 2**30


def test_sizes_are_the_tensors_bytes(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    layout = read_layout(path)
    assert layout.layer_bytes == (8192 + 256 + 2048, 8192 + 256 + 4096, 8192 + 256 + 6144, 8192 + 256 + 8192)
    assert layout.output_bytes == VOCAB * EMBD * 2 + 256  # output.weight + output_norm.weight
    assert layout.other_bytes == VOCAB * EMBD * 2  # token_embd.weight
    assert (layout.arch, layout.block_count, layout.embedding_length) == ("llama", 4, EMBD)
    assert (layout.head_count, layout.head_count_kv, layout.key_length, layout.value_length) == (4, 2, 16, 16)
    assert (layout.context_length, layout.vocab_size, layout.file_size) == (512, VOCAB, path.stat().st_size)


def test_tied_embeddings_put_token_embd_in_the_output_layer(tmp_path: Path) -> None:
    layout = read_layout(write_gguf(tmp_path / "tied.gguf", model_tensors(tied=True)))
    assert layout.output_bytes == VOCAB * EMBD * 2 + 256  # token_embd.weight's GPU copy + output_norm.weight
    assert layout.other_bytes == VOCAB * EMBD * 2  # and it stays in host memory too


def test_alignment_padding_is_attributed_to_the_tensor_before_it(tmp_path: Path) -> None:
    tensors = model_tensors()
    tensors["blk.1.odd.weight"] = np.zeros(5, dtype=np.float32)  # 20 bytes, padded to 32
    layout = read_layout(write_gguf(tmp_path / "pad.gguf", tensors))
    assert layout.layer_bytes[1] - (8192 + 256 + 4096 + 20) == 12
    assert layout.layer_bytes[0] == 8192 + 256 + 2048


def test_per_block_kv_heads_take_the_largest(tmp_path: Path) -> None:
    layout = read_layout(write_gguf(tmp_path / "m.gguf", model_tensors(), heads_kv=[1, 2, 4, 2]))
    assert layout.head_count_kv == 4


def test_a_tiny_model_layout_matches_ggufs_own_reader(tmp_path: Path) -> None:
    vocab_path = tmp_path / "vocab.gguf"  # a fabricated vocabulary, as test_tiny_model makes one
    w = gguf.GGUFWriter(vocab_path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(64)])
    w.add_token_scores([0.0] * 64)
    w.add_token_types([1] * 64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    shape = ModelShape(layers=3, dim=64, ff=128, heads=4, kv_heads=2, ctx=256)
    path = write_model(tmp_path / "tiny.gguf", Vocabulary.read(vocab_path), shape, "q8_0")
    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    layout = read_layout(path)
    # q8_0 rows of 64 are 68 bytes (2 blocks of 34) and every tensor here has a multiple of 8 rows: no padding
    assert layout.layer_bytes == tuple(sum(n for name, n in sizes.items() if name.startswith(f"blk.{i}."))
                                       for i in range(3))
    assert layout.output_bytes == sizes["output.weight"] + sizes["output_norm.weight"]
    assert layout.other_bytes == sizes["token_embd.weight"]
    assert (layout.head_count_kv, layout.key_length, layout.context_length, layout.vocab_size) == (2, 16, 256, 64)


def test_a_4_gib_model_is_sized_from_its_header_alone(tmp_path: Path) -> None:
    """The tensor data is a sparse hole: reading it would take seconds; sizing needs only the header."""
    path = tmp_path / "big.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(4)
    for i in range(4):
        w.add_tensor_info(f"blk.{i}.ffn_up.weight", (16384, 32768), np.dtype(np.float16), GIB)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    data_start = -(-path.stat().st_size // 32) * 32  # the header, padded to general.alignment
    os.truncate(path, data_start + 4 * GIB)
    assert read_layout(path).layer_bytes == (GIB, GIB, GIB, GIB)


def test_not_a_gguf_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "llama-2-7b-chat.bin"
    path.write_bytes(b"ggjt" + bytes(100))
    with pytest.raises(GgufError) as caught:
        read_layout(path)
    assert str(caught.value).startswith(f"{path}: not a GGUF file (starts with b'ggjt')")
    assert "convert_hf_to_gguf.py" in str(caught.value)


def test_an_unsupported_version_is_named(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(GgufError, match="GGUF version 1 is not supported"):
        read_layout(path)


def test_a_file_cut_in_its_header_is_truncated(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GgufError, match=r"m\.gguf: truncated: the file ends inside its header"):
        read_layout(path)


def test_a_file_cut_before_its_last_tensor_is_truncated(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 8192 - 10240])  # the last tensor (blk.3.ffn_up, 8192 bytes) and more
    with pytest.raises(GgufError, match=r"truncated: tensor blk\.3\.ffn_up\.weight ends at byte \d+ but the file"):
        read_layout(path)


def test_a_file_one_byte_short_of_its_last_tensor_is_truncated(tmp_path: Path) -> None:
    """The header says how long every tensor is (its type and dimensions): a file cut inside its last tensor is
    not sized as if that tensor were shorter."""
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    size = path.stat().st_size
    os.truncate(path, size - 1)
    with pytest.raises(GgufError, match=rf"truncated: tensor blk\.3\.ffn_up\.weight ends at byte {size} but the file"
                                        rf" has {size - 1} bytes"):
        read_layout(path)


def test_a_model_without_block_count_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors(), blocks=None)
    with pytest.raises(GgufError, match=r"m\.gguf: no llama\.block_count in the metadata"):
        read_layout(path)


# A hand-made layout: blocks of 10, 20, 30, 40 kB, the output layer 5 kB, and a KV cache of
# 256 (n_ctx) * (16 + 16) (key + value length) * 2 (KV heads) * 2 (f16) = 32768 bytes a block at n_ctx 256.
LAYOUT = ModelLayout(arch="llama", block_count=4, embedding_length=64, head_count=4, head_count_kv=2, key_length=16,
                     value_length=16, context_length=512, vocab_size=VOCAB,
                     layer_bytes=(10_000, 20_000, 30_000, 40_000), output_bytes=5_000, other_bytes=7_000,
                     file_size=120_000)
KV_256 = 256 * 32 * 2 * 2
COST = [0, 5_000, 5_000 + 40_000 + KV_256, 5_000 + 70_000 + 2 * KV_256, 5_000 + 90_000 + 3 * KV_256,
        5_000 + 100_000 + 4 * KV_256]
"""COST[k]: what n_gpu_layers = k needs: the output layer, then blocks 3, 2, 1, 0 with their KV caches."""


def test_kv_cache_is_f16_keys_and_values_per_block() -> None:
    assert gpu_layers.kv_cache_bytes(LAYOUT, 256) == 4 * KV_256
    assert gpu_layers.kv_cache_bytes(LAYOUT, 256, layers=1) == KV_256
    assert gpu_layers.kv_cache_bytes(LAYOUT, 1000, layers=1) == 1024 * 32 * 2 * 2  # llama.cpp pads n_ctx to 256
    assert gpu_layers.kv_cache_bytes(LAYOUT, 256, layers=1, bytes_per_element=1) == KV_256 // 2


def test_everything_fits() -> None:
    p = plan(LAYOUT, 256, free_bytes=10**9, reserve_bytes=1_000)
    assert (p.layers, p.total_layers, p.gpu_bytes, p.next_bytes) == (5, 5, COST[5], 0)
    assert (p.weights_bytes, p.kv_bytes) == (105_000, 4 * KV_256)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_a_budget_exactly_the_cost_of_k_layers_takes_k(k: int) -> None:
    assert plan(LAYOUT, 256, free_bytes=1_000 + COST[k], reserve_bytes=1_000).layers == k
    assert plan(LAYOUT, 256, free_bytes=1_000 + COST[k] - 1, reserve_bytes=1_000).layers == k - 1


def test_nothing_fits() -> None:
    p = plan(LAYOUT, 256, free_bytes=1_000 + 4_999, reserve_bytes=1_000)
    assert (p.layers, p.gpu_bytes, p.next_bytes) == (0, 0, 5_000)
    assert plan(LAYOUT, 256, free_bytes=500, reserve_bytes=1_000).layers == 0  # less free than the reserve


def test_a_larger_context_fits_fewer_layers() -> None:
    # 200 kB to spend: at n_ctx 256, 4 layers need 5 + 90 kB + 3 * 32768 = 193304 bytes: fit;
    # at n_ctx 1024 a block's KV cache is 1024 * 32 * 2 * 2 = 131072 bytes: 2 layers need 5 + 40 kB + 131072 =
    # 176072, 3 would need 176072 + 30 kB + 131072.
    assert plan(LAYOUT, 256, free_bytes=201_000, reserve_bytes=1_000).layers == 4
    assert plan(LAYOUT, 1024, free_bytes=201_000, reserve_bytes=1_000).layers == 2


def test_n_ctx_0_means_the_models_context_length() -> None:
    p = plan(LAYOUT, 0, free_bytes=10**9, reserve_bytes=0)
    assert (p.n_ctx, p.kv_bytes) == (512, 4 * 2 * KV_256)


def test_the_default_reserve_grows_with_n_ctx() -> None:
    # 768 MiB + n_ubatch 512 * f32 * (attention scores: n_ctx 256 * 4 heads + logits: 100 tokens)
    assert gpu_layers.default_reserve(LAYOUT, 256) == 768 * MIB + 512 * 4 * (256 * 4 + 100)
    assert plan(LAYOUT, 256, free_bytes=GIB).reserve_bytes == 768 * MIB + 512 * 4 * (256 * 4 + 100)


def test_tied_embeddings_count_token_embd_on_the_gpu(tmp_path: Path) -> None:
    layout = read_layout(write_gguf(tmp_path / "tied.gguf", model_tensors(tied=True)))
    output = VOCAB * EMBD * 2 + 256  # token_embd.weight as the output matrix + output_norm.weight
    assert plan(layout, 256, free_bytes=output, reserve_bytes=0).layers == 1
    assert plan(layout, 256, free_bytes=output - 1, reserve_bytes=0).layers == 0


def test_llama_2_13b_q4_0_on_a_12_and_an_8_gib_card() -> None:
    """40 blocks of ~178 MB, output ~160 MB, 5120 wide, 40 heads (no GQA), n_ctx 4096, the default reserve."""
    layout = ModelLayout(arch="llama", block_count=40, embedding_length=5120, head_count=40, head_count_kv=40,
                         key_length=128, value_length=128, context_length=4096, vocab_size=32000,
                         layer_bytes=(178_000_000,) * 40, output_bytes=160_000_000, other_bytes=90_000_000,
                         file_size=7_365_000_000)
    kv = 4096 * 2 * 5120 * 2  # per block: n_ctx * (K + V) * n_embd * f16 = 80 MiB
    assert kv == 80 * MIB
    reserve = 768 * MIB + 512 * 4 * (4096 * 40 + 32000)  # 1,206,386,688 bytes: 768 MiB + 382.5 MiB compute buffer
    # 12 GiB card, 300 MiB used by others: budget 11988 MiB - reserve = 11,363,942,400 bytes; everything
    # needs 160e6 + 40 * (178e6 + 80 MiB) = 10,635,443,200: all 41 layers.
    p12 = plan(layout, 4096, free_bytes=(12 * 1024 - 300) * MIB)
    assert p12.reserve_bytes == reserve
    assert (p12.layers, p12.gpu_bytes) == (41, 160_000_000 + 40 * (178_000_000 + kv))
    # 8 GiB card, 300 MiB used: budget 7892 MiB - reserve = 7,068,975,104; (7,068,975,104 - 160e6) //
    # (178e6 + 80 MiB) = 26 blocks (26 * 261,886,080 = 6,809,038,080), plus the output layer: 27.
    p8 = plan(layout, 4096, free_bytes=(8 * 1024 - 300) * MIB)
    assert (p8.layers, p8.gpu_bytes) == (27, 160_000_000 + 26 * (178_000_000 + kv))


def test_describe_says_how_many_layers_and_why() -> None:
    everything = plan(LAYOUT, 256, free_bytes=10 * GIB, reserve_bytes=GIB, device="NVIDIA GeForce RTX 3060")
    assert everything.describe() == (
        "N_GPU_LAYERS=auto: all 5 layers on the GPU (102.5 KiB weights + 128.0 KiB KV cache at n_ctx 256"
        " + 1.0 GiB reserve, 10.0 GiB free on NVIDIA GeForce RTX 3060)")
    some = plan(LAYOUT, 256, free_bytes=1_000 + COST[3], reserve_bytes=1_000).describe()
    assert some.startswith("N_GPU_LAYERS=auto: 3 of 5 layers on the GPU (")
    assert "the rest run on the CPU: a smaller n_ctx or a smaller quantisation fits more" in some
    none = plan(LAYOUT, 256, free_bytes=1_000, reserve_bytes=1_000).describe()
    assert "no layer fits on the GPU" in none
    assert "the output layer alone needs 4.9 KiB" in none


def test_auto_layers_uses_the_given_gpu(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    assert auto_layers(path, 256, gpu=None) == (0, gpu_layers.NO_GPU)
    assert "no NVIDIA GPU" in gpu_layers.NO_GPU
    layers, line = auto_layers(path, 256, reserve_bytes=0, gpu=GpuMemory("Test GPU", 8 * GIB, 4 * GIB))
    assert layers == 5
    assert line.startswith("N_GPU_LAYERS=auto: all 5 layers on the GPU (") and "free on Test GPU" in line


def test_command_line_prints_the_sizes_and_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_gguf(tmp_path / "m.gguf", model_tensors())
    assert gpu_layers.main([str(path), "--n-ctx", "256", "--free-mib", "1", "--reserve-mib", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: llama, 4 blocks" in out
    assert "KV cache    128.0 KiB at n_ctx 256" in out
    assert "N_GPU_LAYERS=auto: all 5 layers on the GPU" in out


def test_command_line_names_a_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00" * 16)
    assert gpu_layers.main([str(path), "--free-mib", "1024"]) == 1
    assert f"error: {path}: not a GGUF file" in capsys.readouterr().err


def _nvml_gpus() -> int | None:
    """How many GPUs NVML sees, looked up the way free_gpu_memory does (ctypes, libnvidia-ml.so.1);
    None when the library is not there (no NVIDIA driver)."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if lib.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint()
        return count.value if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        lib.nvmlShutdown()


NVML_GPUS = _nvml_gpus()


@pytest.mark.skipif(bool(NVML_GPUS), reason=f"NVML sees {NVML_GPUS} NVIDIA GPU(s) here: not the no-GPU case")
def test_free_gpu_memory_is_none_without_an_nvidia_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No libnvidia-ml.so.1 (no driver), or NVML sees no device: no GPU, every layer on the CPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # so that NVML is really asked
    assert gpu_layers.free_gpu_memory() is None
    assert gpu_layers.auto_layers(Path("/nonexistent.gguf"), 512) == (0, gpu_layers.NO_GPU)


@pytest.mark.gpu
def test_free_gpu_memory_of_a_real_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a real GPU's free memory through NVML. With a GPU and its driver here, NVML must see it."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = gpu_layers.free_gpu_memory()
    assert found is not None, "NVML sees a GPU but free_gpu_memory() returned None"
    assert found.name.strip()
    assert 0 < found.free_bytes <= found.total_bytes
    assert found.total_bytes >= 256 * MIB


def test_cuda_visible_devices_picks_the_nvml_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_layers._nvml_index(0) == 0
    for visible, want in (("2,3", 2), (" 3 ", 3), ("GPU-8c1a7e9e-0000", 0), ("", None), ("-1", None)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpu_layers._nvml_index(0) == want, visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_layers._nvml_index(1) == 3
    assert gpu_layers._nvml_index(2) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_layers.free_gpu_memory() is None  # every GPU hidden: not even NVML is asked


def test_the_module_needs_only_the_standard_library() -> None:
    tree = ast.parse(Path(gpu_layers.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert {name.split(".")[0] for name in imported} <= sys.stdlib_module_names
