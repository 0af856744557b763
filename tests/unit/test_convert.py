"""GGML v3 models (llama-gpt's downloads): found by their bytes, converted once, reused, refused clearly.

The conversion itself runs llama.cpp's real converter in tests/integration/test_convert.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from llamawheel.runtime import convert, serve

from .gguf_files import model_tensors, write_gguf


def ggml_file(path: Path, *, version: int = 3, n_embd: int = 64, n_head: int = 4) -> Path:
    """A ggjt header (the converter is not run here, so nothing else is needed)."""
    path.write_bytes(struct.pack("<4sI7i", b"tjgg", version, 32000, n_embd, 256, n_head, 2, n_embd // n_head, 7))
    return path


@pytest.fixture
def converter(tmp_path: Path) -> Path:
    """A converter folder as the image ships it (the script is not run here: only its bytes count)."""
    folder = tmp_path / "converter"
    (folder / "gguf").mkdir(parents=True)
    (folder / convert.CONVERTER_SCRIPT).write_text("# llama.cpp's converter\n")
    (folder / "gguf" / "__init__.py").write_text("")
    return folder


def test_a_ggml_file_is_known_by_its_bytes_whatever_its_name(tmp_path: Path) -> None:
    header = convert.read_header(ggml_file(tmp_path / "weights.dat"))
    assert header is not None and (header.version, header.n_embd, header.n_head, header.gqa) == (3, 64, 4, 1)
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(40))
    assert convert.read_header(tmp_path / "model.gguf") is None
    assert serve.is_model(tmp_path / "weights.dat") and serve.is_model(tmp_path / "model.gguf")


def test_llama_2_70b_gets_its_grouped_query_factor(tmp_path: Path) -> None:
    big = convert.read_header(ggml_file(tmp_path / "llama-2-70b-chat.bin", n_embd=8192, n_head=64))
    assert big is not None and big.gqa == 8
    cmd = convert.converter_command(tmp_path / "llama-2-70b-chat.bin", big, tmp_path / "out.gguf", tmp_path)
    assert cmd[-6:] == ["--context-length", "4096", "--eps", "1e-5", "--gqa", "8"]


def test_the_cache_name_changes_with_the_file_and_with_the_converter(tmp_path: Path, converter: Path) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    first = convert.converted_name(model, converter)
    assert first.startswith("llama-2-7b-chat.") and first.endswith(".gguf")
    os.utime(model, ns=(1, 1))
    second = convert.converted_name(model, converter)
    assert second != first
    (converter / convert.CONVERTER_SCRIPT).write_text("# llama.cpp's converter, patched again\n")
    assert convert.converted_name(model, converter) != second


def test_without_its_converter_the_image_is_said_to_be_incomplete(tmp_path: Path) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    with pytest.raises(convert.ConversionError, match=r"convert_llama_ggml_to_gguf\.py cannot be read .*rebuild it"):
        convert.ensure_gguf(model, tmp_path, converter_dir=tmp_path / "none", need_volume=False)


def test_an_earlier_conversion_is_reused(tmp_path: Path, converter: Path) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    cache.mkdir()
    done = write_gguf(cache / convert.converted_name(model, converter), model_tensors())
    said: list[str] = []
    assert convert.ensure_gguf(model, cache, converter_dir=converter, say=said.append) == done
    assert "made on an earlier start" in said[0]


@pytest.mark.parametrize(("make", "words"), [
    ("missing", "does not exist"),
    ("readonly", "is not writable"),
    ("not-a-volume", "is not a mounted volume"),
])
def test_without_a_writable_volume_the_error_says_which_to_mount(tmp_path: Path, converter: Path, make: str,
                                                                 words: str) -> None:
    model = ggml_file(tmp_path / "llama-2-7b-chat.bin")
    cache = tmp_path / "cache"
    if make != "missing":
        cache.mkdir()
    if make == "readonly":
        cache.chmod(0o500)
        if os.access(cache, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable (the image runs as uid 1000)")
    need_volume = make == "not-a-volume"
    if need_volume and convert.on_volume(cache):
        pytest.skip(f"{cache} is on another file system than / here: it counts as a volume")
    with pytest.raises(convert.ConversionError) as info:
        convert.ensure_gguf(model, cache, converter_dir=converter, need_volume=need_volume)
    assert words in str(info.value) and f"-v llama-cache:{cache}" in str(info.value)
    assert "GGML v3" in str(info.value)


def test_older_ggml_versions_are_refused_with_advice(tmp_path: Path) -> None:
    model = ggml_file(tmp_path / "old.bin", version=1)
    with pytest.raises(convert.ConversionError, match="only v3 files"):
        convert.ensure_gguf(model, tmp_path, need_volume=False)


def test_serve_converts_a_ggml_model_and_keeps_the_ui_id(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    ggml_file(models / "llama-2-13b-chat.bin")
    seen: list[tuple[Path, Path]] = []

    def to_gguf(model: Path, cache: Path) -> Path:
        seen.append((model, cache))
        return cache / "converted.gguf"

    config = serve.resolve({"MODELS_DIR": str(models), "MODEL_CACHE": str(tmp_path / "cache")},
                           gpu_offload=False, gpu=None, threads_for=lambda: (2, "test"), to_gguf=to_gguf)
    assert seen == [(models / "llama-2-13b-chat.bin", tmp_path / "cache")]
    assert config.model == tmp_path / "cache" / "converted.gguf"
    assert config.alias == "/models/llama-2-13b-chat.bin"
