"""What the recipe's patches change in the CPU wheel, run for real with the tiny model:

- streamed answers are the unstreamed text byte for byte (characters split across tokens included, stop
  sequences honoured), against upstream's own code from the pinned sdist;
- the CPU code is chosen among the wheel's x86-64 levels by what runs: under QEMU with a CPU without AVX
  (Nehalem) the SSE4.2 level answers, while the AVX2 level (what the wheel was built as before) dies with
  SIGILL there; a modern CPU model gets an AVX2 level.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from llamawheel.core import paths
from llamawheel.pipeline import manifest
from llamawheel.recipe import catalog
from llamawheel.recipe.platforms import X86_64

from .conftest import KERNEL_SCRIPT

STREAM_SCRIPT = r'''
import json, sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=2, verbose=False, seed=7)
eos = llm.token_eos()
out = {}
for name, stop in (("free", []), ("stopped", json.loads(sys.argv[2]))):
    common = dict(prompt="Once upon a time", max_tokens=int(sys.argv[3]), temperature=0.9, seed=11,
                  logit_bias={str(eos): -1e9}, stop=stop)
    whole = llm.create_completion(**common)["choices"][0]["text"]
    chunks = [c["choices"][0]["text"] for c in llm.create_completion(stream=True, **common)]
    out[name] = {"whole": whole, "chunks": chunks}
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def venv(cpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the CPU wheel (its dependencies through this machine's pip configuration)."""
    folder = tmp_path_factory.mktemp("cpu-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    result = subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", str(cpu_wheel)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return folder


def _site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


@pytest.fixture(scope="module")
def upstream(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same installed package with upstream's llama.py from the pinned sdist (the streaming code the
    recipe patches): a folder to put first on PYTHONPATH."""
    recipe = catalog.cpu_recipe()
    sdist = paths.sdists_dir() / f"llama_cpp_python-{recipe.llama_cpp_python.version}.tar.gz"
    folder = tmp_path_factory.mktemp("upstream")
    shutil.copytree(_site_packages(venv) / "llama_cpp", folder / "llama_cpp", symlinks=True,
                    ignore=shutil.ignore_patterns("lib"))
    (folder / "llama_cpp" / "lib").symlink_to(_site_packages(venv) / "llama_cpp" / "lib")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"llama_cpp_python-{recipe.llama_cpp_python.version}/llama_cpp/llama.py")
        assert member is not None
        (folder / "llama_cpp" / "llama.py").write_bytes(member.read())
    assert "stream_decoder" not in (folder / "llama_cpp" / "llama.py").read_text()
    return folder


def _generate(venv: Path, model: Path, stop: list[str], tokens: int, pythonpath: Path | None = None) -> Any:
    env = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", STREAM_SCRIPT, str(model), json.dumps(stop),
                          str(tokens)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_streamed_text_is_the_unstreamed_text_and_upstreams(venv: Path, model: Path, upstream: Path) -> None:
    first = _generate(venv, model, [], 300)["free"]["whole"]
    stop = first[len(first) // 2: len(first) // 2 + 3]  # three characters from the middle of the answer
    assert len(stop.strip()) >= 2, f"pick another seed: the stop sequence {stop!r} is too plain"
    ours = _generate(venv, model, [stop], 300)
    theirs = _generate(venv, model, [stop], 300, pythonpath=upstream)
    for name in ("free", "stopped"):
        whole, chunks = ours[name]["whole"], ours[name]["chunks"]
        assert "".join(chunks).encode() == whole.encode(), f"{name}: streamed text differs from unstreamed"
        assert whole.encode() == theirs[name]["whole"].encode(), f"{name}: differs from upstream's text"
        assert len([c for c in chunks if c]) > 20, f"{name}: the answer came in {len(chunks)} chunks, not streamed"
    assert stop not in ours["stopped"]["whole"] and len(ours["stopped"]["whole"]) < len(first)
    assert any(ord(ch) > 127 for ch in first), "the answer holds no multi-byte character: nothing split to test"


VARIANT_SCRIPT = (
    "import llama_cpp, sys; from llama_cpp import _backends; "
    "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False); "
    "print(_backends.CPU_VARIANT, repr(llm.create_completion('Hello', max_tokens=4, temperature=0)"
    "['choices'][0]['text']))"
)


def _run_variant(venv: Path, model: Path, *prefix: str, force: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"LLAMA_CPP_CPU_VARIANT": force} if force else {})}
    return subprocess.run([*prefix, str(venv / "bin" / "python"), "-c", VARIANT_SCRIPT, str(model)],
                          capture_output=True, text=True, env=env, timeout=1200)


def test_the_wheel_holds_every_x86_level_and_loads_the_best_that_runs(venv: Path, model: Path, cpu_wheel: Path) -> None:
    """Every level its compiler can build: all 14 on the host, 12 in the Debian 11 root (GCC 10 has no AVX-VNNI
    or AMX), as the manifest's build environment says."""
    libs = sorted(p.name for p in (_site_packages(venv) / "llama_cpp" / "lib").glob("libggml-cpu-*.so"))
    gcc = json.loads(manifest.path_for(cpu_wheel).read_text())["build_env"].get("gcc", "")
    expected = X86_64.cpu_variants_for_gcc(int(gcc.split(".")[0]) if gcc else None)
    assert libs == sorted(f"libggml-cpu-{v}.so" for v in expected), libs
    assert len(libs) >= 12 and "libggml-cpu-haswell.so" in libs and "libggml-cpu-sse42.so" in libs
    here = _run_variant(venv, model)
    assert here.returncode == 0, here.stderr[-3000:]
    chosen = here.stdout.split()[0]
    assert chosen not in ("x64", "sse42"), f"this machine runs AVX2 at least, yet {chosen} was chosen"
    forced = _run_variant(venv, model, force="sse42")
    assert forced.returncode == 0 and forced.stdout.split()[0] == "sse42", forced.stderr[-3000:]


QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-user (apt-get install qemu-user; .ci/run does)")


@needs_qemu
def test_an_old_cpu_without_avx_gets_the_sse42_level_and_the_avx2_level_dies(venv: Path, model: Path) -> None:
    """Nehalem (2008, SSE4.2, no AVX): the wheel picks its SSE4.2 level and answers; the AVX2 level's code,
    which was the one level every wheel held before, dies there with SIGILL (so this test can fail)."""
    assert QEMU is not None
    old = _run_variant(venv, model, QEMU, "-cpu", "Nehalem")
    assert old.returncode == 0, old.stderr[-3000:]
    assert old.stdout.split()[0] == "sse42", old.stdout + old.stderr[-2000:]
    lib = _site_packages(venv) / "llama_cpp" / "lib"
    runs = subprocess.run([QEMU, "-cpu", "Nehalem", str(venv / "bin" / "python"), "-c", KERNEL_SCRIPT, str(lib),
                           "sse42"], capture_output=True, text=True, timeout=600)
    assert runs.returncode == 0 and runs.stdout.split() == ["sse42", "256.0"], runs.stderr[-2000:]
    dies = subprocess.run([QEMU, "-cpu", "Nehalem", str(venv / "bin" / "python"), "-c", KERNEL_SCRIPT, str(lib),
                           "haswell"], capture_output=True, text=True, timeout=600)
    assert dies.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (dies.returncode, dies.stderr[-2000:])


@needs_qemu
def test_a_modern_cpu_model_gets_an_avx2_level(venv: Path, model: Path) -> None:
    assert QEMU is not None
    modern = _run_variant(venv, model, QEMU, "-cpu", "Haswell")
    assert modern.returncode == 0, modern.stderr[-3000:]
    assert modern.stdout.split()[0] == "haswell", modern.stdout + modern.stderr[-2000:]


CONVERTED_SCRIPT = (
    "import llama_cpp, sys; llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=4096, verbose=False); "
    "m = llm.metadata; print(m['llama.context_length'], m['llama.attention.layer_norm_rms_epsilon'], "
    "llm.tokenize(b'Hello world'), repr(llm.create_completion('Hello', max_tokens=6)['choices'][0]['text']))"
)


@pytest.mark.parametrize("weight_type", ["q8_0", "f16"])
def test_a_ggml_v3_model_converts_once_with_llama_2_settings_and_answers(
    venv: Path, tmp_path: Path, weight_type: str
) -> None:
    """llama.cpp's own converter from the sdist (as the image ships it, patched) on a GGML v3 file written
    from the format's specification, then the CPU wheel loads and runs the result."""
    from llamawheel.image.context import converter_files
    from llamawheel.mirror.profiles import load_profile
    from llamawheel.runtime import convert
    from llamawheel.verify.installed import sdist_vocabulary

    from ..ggml_v3 import write_ggml_v3

    mirror = load_profile("default")
    model = tmp_path / "llama-2-7b-chat.bin"
    write_ggml_v3(model, sdist_vocabulary(mirror), weight_type=weight_type)
    cache = tmp_path / "cache"
    cache.mkdir()
    said: list[str] = []
    converted = convert.ensure_gguf(model, cache, converter_dir=converter_files(mirror), say=said.append,
                                    need_volume=False)
    assert converted.parent == cache and converted.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in cache.iterdir()] == [converted.name]  # no partial file left
    assert "converting it once to GGUF" in said[0] and said[-1].startswith("converted ")
    again: list[str] = []
    assert convert.ensure_gguf(model, cache, converter_dir=converter_files(mirror), say=again.append) == converted
    assert "made on an earlier start" in again[0]
    out = subprocess.run([str(venv / "bin" / "python"), "-c", CONVERTED_SCRIPT, str(converted)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ctx, eps, rest = out.stdout.split(" ", 2)
    assert (ctx, float(eps)) == ("4096", 1e-5)
    assert rest.startswith("[1, 15043, 3186]")  # a real llama vocabulary: "Hello world"


def test_a_cuda_wheel_without_its_cuda_libraries_fails_to_import_rather_than_run_on_the_cpu(
    cu130_wheel: Path, tmp_path: Path
) -> None:
    """The CUDA backend is a module now; when it cannot load (NVIDIA's cuBLAS and cudart wheels missing), the
    import fails with the loader's own words, as it did when ggml linked it, instead of quietly using the CPU."""
    folder = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", "--no-deps", str(cu130_wheel), "numpy",
                          "typing-extensions", "diskcache", "jinja2", "MarkupSafe"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"PATH": "/usr/bin:/bin"}  # no LD_LIBRARY_PATH: nothing but the wheel's own RUNPATH
    out = subprocess.run([str(folder / "bin" / "python"), "-c", "import llama_cpp"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert out.returncode != 0
    assert "libggml-cuda.so" in out.stderr and "cannot open shared object file" in out.stderr, out.stderr[-2000:]
