"""The tiny model: a real GGUF file, read back with gguf's own reader.

The vocabulary here is a small GGUF written by the test (the real one lives in the sdist, which unit
tests must not download; the integration tests use it). It holds a non-ASCII token and raw bytes,
so the copy must be byte-exact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamawheel import cli
from llamawheel.verify.portable import tiny_model
from llamawheel.verify.portable.tiny_model import PRESETS, ModelShape, Vocabulary, write_model

TOKENS = [b"<unk>", b"<s>", b"</s>", "▁über".encode(), b"\xe2\x96\x81the", *[f"tok{i}".encode() for i in range(59)]]


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_scores([-float(i) / 3 for i in range(len(TOKENS))])
    w.add_token_types([2, 3, 3] + [1] * (len(TOKENS) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_uint32("llama.block_count", 32)  # not a tokenizer field: must not be copied
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_a_byte_identical_file(vocab_file: Path, tmp_path: Path) -> None:
    vocab = Vocabulary.read(vocab_file)
    a = write_model(tmp_path / "a.gguf", vocab, seed=7)
    b = write_model(tmp_path / "b.gguf", Vocabulary.read(vocab_file), seed=7)
    c = write_model(tmp_path / "c.gguf", vocab, seed=8)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("weight_type", ["f16", "q8_0"])
def test_llama_tensors_with_the_asked_shape_and_type(vocab_file: Path, tmp_path: Path, weight_type: str) -> None:
    shape = ModelShape(layers=3, dim=64, ff=96, heads=8, kv_heads=2, ctx=128)
    path = write_model(tmp_path / "m.gguf", Vocabulary.read(vocab_file), shape, weight_type)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(3) for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(tensors) == names
    n_vocab = len(TOKENS)
    # GGUF shapes are (columns, rows): ne0 first
    assert list(tensors["token_embd.weight"].shape) == [64, n_vocab]
    assert list(tensors["output.weight"].shape) == [64, n_vocab]
    assert list(tensors["blk.2.attn_k.weight"].shape) == [64, 2 * 8]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [96, 64]
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 96]
    want = gguf.GGMLQuantizationType.F16 if weight_type == "f16" else gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.1.attn_q.weight"].tensor_type == want
    assert tensors["blk.1.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == 3
    assert fields["llama.embedding_length"].contents() == 64
    assert fields["llama.feed_forward_length"].contents() == 96
    assert fields["llama.attention.head_count"].contents() == 8
    assert fields["llama.attention.head_count_kv"].contents() == 2
    assert fields["llama.rope.dimension_count"].contents() == 8
    assert fields["llama.context_length"].contents() == 128
    assert fields["general.file_type"].contents() == {"f16": 1, "q8_0": 7}[weight_type]


def test_weights_are_normal_with_std_002_and_norms_are_one(vocab_file: Path, tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", Vocabulary.read(vocab_file), ModelShape(dim=128, ff=256))
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    weights = np.asarray(tensors["blk.0.ffn_gate.weight"].data, dtype=np.float32)
    assert abs(float(weights.std()) - 0.02) < 0.001
    assert abs(float(weights.mean())) < 0.001
    assert np.all(np.asarray(tensors["output_norm.weight"].data) == 1.0)


def test_tokenizer_fields_are_copied_exactly(vocab_file: Path, tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", Vocabulary.read(vocab_file), weight_type="q8_0")
    src, out = gguf.GGUFReader(vocab_file).fields, gguf.GGUFReader(path).fields
    copied = sorted(k for k in out if k.startswith("tokenizer.ggml."))
    assert copied == sorted(k for k in src if k.startswith("tokenizer.ggml."))
    for key in copied:
        assert [bytes(out[key].parts[i]) for i in out[key].data] == [bytes(src[key].parts[i]) for i in src[key].data]
    assert [bytes(out["tokenizer.ggml.tokens"].parts[i]) for i in out["tokenizer.ggml.tokens"].data] == TOKENS
    assert out["llama.vocab_size"].contents() == len(TOKENS)
    assert out["llama.block_count"].contents() == 2  # the model's own, not the vocabulary file's 32


def test_a_file_without_a_vocabulary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(ValueError, match="no tokenizer vocabulary"):
        Vocabulary.read(path)


def test_shapes_that_llama_cpp_or_q8_0_cannot_take_are_named() -> None:
    assert ModelShape(dim=64, heads=5, kv_heads=5).problems("f16") == ["--dim 64 is not a multiple of --heads 5"]
    assert ModelShape(heads=4, kv_heads=3).problems("f16") == ["--heads 4 is not a multiple of --kv-heads 3"]
    assert ModelShape(dim=48, heads=4, ff=100).problems("q8_0") == [
        "--dim 48 is not a multiple of 32 (the q8_0 block size)",
        "--ff 100 is not a multiple of 32 (the q8_0 block size)",
    ]
    assert ModelShape(dim=48, heads=4, ff=100).problems("f16") == []
    assert ModelShape(layers=0).problems("f16") == ["--layers must be at least 1"]


def test_the_1b_preset_is_about_a_billion_parameters() -> None:
    params = tiny_model.parameter_count(PRESETS["1b"], 32000)
    assert 1.0e9 < params < 1.2e9
    assert tiny_model.parameter_count(PRESETS["tiny"], 32000) < 5e6


def test_command_line_writes_the_model_and_says_what_it_is(
    vocab_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.gguf"
    code = cli.main(["tiny-model", str(out), "--vocab", str(vocab_file), "--type", "q8_0", "--layers", "1",
                     "--seed", "3"])
    assert code == 0
    assert f"wrote {out}" in capsys.readouterr().out
    blocks = {t.name.split(".")[1] for t in gguf.GGUFReader(out).tensors if t.name.startswith("blk.")}
    assert blocks == {"0"}
    same = write_model(tmp_path / "api.gguf", Vocabulary.read(vocab_file), ModelShape(layers=1), "q8_0", seed=3)
    assert _sha(same) == _sha(out)


def test_command_line_refuses_a_bad_shape(vocab_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["tiny-model", str(tmp_path / "x.gguf"), "--vocab", str(vocab_file), "--type", "q8_0",
                     "--dim", "48"])
    assert code == 2
    assert "ERROR --dim 48 is not a multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def _python_without_llamawheel(folder: Path) -> Path:
    """A fresh virtual environment that sees numpy, gguf and what they need, and not llamawheel: a folder of links
    to every entry of the site-packages numpy and gguf are installed in, except llamawheel's own (its package, its
    metadata, an editable install's finder), named by a .pth of the new environment."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    links = folder / "deps"
    links.mkdir()
    for source in sorted({Path(module.__file__).parent.parent for module in (gguf, np)}):
        for entry in source.iterdir():
            name = entry.name.lower()
            if "llamawheel" in name or name.endswith(".pth") or (links / entry.name).exists():
                continue
            (links / entry.name).symlink_to(entry)
    (Path(site) / "numpy-and-gguf.pth").write_text(f"{links}\n")
    return python


def test_runs_as_a_standalone_script(vocab_file: Path, tmp_path: Path) -> None:
    """The file alone, copied and run by path by a Python that cannot import llamawheel: what a GPU machine
    without llamawheel does."""
    import shutil
    import subprocess

    python = _python_without_llamawheel(tmp_path / "venv")
    probe = subprocess.run([str(python), "-I", "-c", "import gguf, numpy; import llamawheel"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 1 and "No module named 'llamawheel'" in probe.stderr, probe.stderr
    script = Path(shutil.copy(tiny_model.__file__, tmp_path / "tiny_model.py"))
    out = tmp_path / "script.gguf"
    res = subprocess.run([str(python), "-I", str(script), str(out), "--vocab", str(vocab_file)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert _sha(out) == _sha(write_model(tmp_path / "api.gguf", Vocabulary.read(vocab_file)))
