"""An installed llamawheel works outside a checkout: its recipes, mirror profiles and Containerfile ship
inside the package (what ``pipx install .`` gives a user)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llamawheel.core import paths

from ..index_wheels import make_wheel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llamawheel built as a wheel and installed (not editable) into a fresh venv; returns its bin folder."""
    work = tmp_path_factory.mktemp("installed")
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("llamawheel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for member in ("llamawheel/_data/recipes/cuda-13.toml", "llamawheel/_data/recipes/defaults.toml",
                   "llamawheel/_data/recipes/recipe.schema.json", "llamawheel/_data/mirrors/tsinghua.toml",
                   "llamawheel/_data/docker/Containerfile", "llamawheel/runtime/serve.py",
                   "llamawheel/_data/recipes/patches/stream-incremental.patch", "llamawheel/runtime/convert.py",
                   "llamawheel/verify/portable/verify_runner.py"):
        assert member in names, f"the llamawheel wheel lacks {member}"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), **extra_env}
    return subprocess.run([str(bin_dir / "llamawheel"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_recipes_and_profiles_come_from_the_package(installed: Path, tmp_path: Path) -> None:
    recipes = run(installed, "recipes", cwd=tmp_path)
    assert recipes.returncode == 0, recipes.stderr
    assert "cuda-13: CUDA 13.x" in recipes.stdout and "13.0 (default) [pypi]" in recipes.stdout
    mirrors = run(installed, "mirrors", "list", cwd=tmp_path)
    assert mirrors.returncode == 0, mirrors.stderr
    assert "tsinghua:" in mirrors.stdout
    unknown = run(installed, "build", "13.9", cwd=tmp_path)
    assert unknown.returncode == 2 and "known CUDA versions: " in unknown.stderr


def test_the_image_context_takes_the_packaged_containerfile(installed: Path, tmp_path: Path) -> None:
    """A (synthetic) wheel published with the installed command, then the image's build context written from it:
    the Containerfile and the runtime package come from inside the installed package."""
    wheel = make_wheel(tmp_path, requires=(), extras=())
    index = tmp_path / "index"
    # its closure for the image's Python (the wheel needs nothing): the image checks the index holds it
    published = run(installed, "publish", str(wheel), "--index", str(index), "--python-version", "3.11", cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    ctx = tmp_path / "ctx"
    # the shared cache: the sdist (76 MB) the GGML converter comes from is fetched by the other tests already
    result = run(installed, "image", "--variant", "cpu", "--index", str(index), "--context-only", str(ctx),
                 cwd=tmp_path, LLAMAWHEEL_CACHE=str(paths.cache_dir()))
    assert result.returncode == 0, result.stderr
    assert (ctx / "Containerfile").read_bytes() == (ROOT / "docker" / "Containerfile").read_bytes()
    assert (ctx / "runtime" / "serve.py").read_bytes() == (ROOT / "src/llamawheel/runtime/serve.py").read_bytes()
    converter = (ctx / "runtime" / "converter" / "convert_llama_ggml_to_gguf.py").read_text()
    assert "llamawheel: gguf-py reads the shape" in converter  # the recipe's patch is applied to the copy


def test_outside_a_checkout_wheels_go_to_the_working_directory(installed: Path, tmp_path: Path) -> None:
    code = ("from llamawheel.core import paths; print(paths.root()); print(paths.wheels_dir()); "
            "print(paths.containerfile().is_file())")
    out = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["None", str(tmp_path / "wheels"), "True"], out.stderr
