"""The companion wheel's launcher (``recipes/server/llamawheel_server``) and the project put over the sdist: the
parts that run without a build (the build itself is tests/integration/test_image.py's, through the image)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from llamawheel.pipeline import server

LAUNCHER = server.project_dir() / server.PACKAGE / "__init__.py"


def launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llamawheel_server_under_test", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paths_given_to_the_server_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = launcher().absolute(["-m", "model.gguf", "--port", "8080", "--chat-template-file=t.jinja", "-np", "4",
                                "--alias", "x.gguf"])
    assert args == ["-m", os.path.join(tmp_path, "model.gguf"), "--port", "8080",
                    f"--chat-template-file={os.path.join(tmp_path, 't.jinja')}", "-np", "4", "--alias", "x.gguf"]


def test_the_server_project_builds_llama_server_alone_from_the_sdists_llama_cpp() -> None:
    """The project put over the sdist builds the one target and names the release it is built from; its patches
    change only llama.cpp's server and common library (the files the wheel's own build never compiles)."""
    patched = sorted({line[len("--- a/"):] for p in server.project_dir().glob("*.patch")
                      for line in p.read_text().splitlines() if line.startswith("--- a/")})
    assert patched == ["vendor/llama.cpp/common/CMakeLists.txt", "vendor/llama.cpp/tools/server/CMakeLists.txt",
                       "vendor/llama.cpp/tools/server/server-queue.cpp"]
    pyproject = (server.project_dir() / "pyproject.toml").read_text()
    assert 'name = "llamawheel-server"' in pyproject and 'dependencies = ["llama-cpp-python==@VERSION@"]' in pyproject
    assert 'build.targets = ["llama-server"]' in pyproject and 'llama-server = "llamawheel_server:main"' in pyproject
