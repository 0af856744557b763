"""Nox sessions for llamawheel. Each is a few lines that call the package.

    nox                                     # unit tests (each supported Python installed here) and lint
    nox -s integration                      # real downloads, compilers, servers, images (30 min cold)
    nox -s build-cuda-13 -- --arch 86       # the line's default minor (13.0)
    nox -s build-cuda-13.2 -- --mirror tsinghua
    nox -s build-cpu
    nox -s docs                             # the docs site, into site/
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "src"))  # the build sessions come from the recipes, read (and checked) by the package

from llamawheel.recipe import catalog, matrix  # noqa: E402

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "pass"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _installed_pythons() -> list[str | None]:
    """The supported Pythons this machine really has. pyenv's shims answer to every name, installed or not, so
    each interpreter is run once; a version only pyenv has is linked (as ``pythonX.Y`` alone) into a folder put
    first on PATH for nox to find, leaving ``python3`` as it was."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    links = ROOT / ".nox" / "pythons"
    found: list[str | None] = []
    for version in SUPPORTED_PYTHONS:
        name = f"python{version}"
        if not _runs(name):
            candidates = [d / "bin" / name for d in sorted(pyenv.glob(f"{version}.*"), reverse=True)]
            real = next((c for c in candidates if _runs(str(c))), None)
            if real is None:
                continue
            links.mkdir(parents=True, exist_ok=True)
            (links / name).unlink(missing_ok=True)
            (links / name).symlink_to(real)
        found.append(version)
    if links.is_dir():
        os.environ["PATH"] = os.pathsep.join([str(links), os.environ.get("PATH", "")])
    return found or [None]


INSTALLED_PYTHONS = _installed_pythons()
"""The unit tests run on each of these (only those: a fresh machine may have one)."""

MKDOCS_ENV = {"NO_MKDOCS_2_WARNING": "1"}
"""Keeps the theme's end-of-life notice (May 2027, noted in mkdocs.yml) out of every docs build's output."""


def _install_editable(session: nox.Session, extras: str) -> None:
    """llamawheel, editable, with ``extras``; pip is skipped when this environment already has that install and
    pyproject.toml has not changed since (an editable install follows the sources by itself)."""
    stamp = Path(str(session.virtualenv.location)) / ".llamawheel-installed"
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == key:
        return
    session.install("-e", f".[{extras}]")
    stamp.write_text(key)


def _build(session: nox.Session, target: str) -> None:
    session.install(".")
    session.run("llamawheel", "build", target, *session.posargs)


for _name, _target, _doc in matrix.build_sessions(catalog.all_recipes(ROOT / "recipes")):
    def _session(session: nox.Session, target: str = _target) -> None:
        _build(session, target)

    _session.__doc__ = _doc
    nox.session(name=_name, default=False, tags=["build"])(_session)


@nox.session(name="build-cpu", default=False, tags=["build"])
def build_cpu(session: nox.Session) -> None:
    """Build the CPU-only wheel (the reference for verification)."""
    _build(session, "cpu")


@nox.session(name="verify-static", default=False)
def verify_static(session: nox.Session) -> None:
    """Check what built wheels really hold (pass wheel paths after --; default: all in wheels/)."""
    session.install(".")
    wheels = session.posargs or [str(p) for p in sorted(ROOT.glob("wheels/*.whl"))]
    if not wheels:
        session.error("no wheels given and none in wheels/: build one first (nox -s build-cuda-13 -- --arch 86)")
    for wheel in wheels:
        session.run("llamawheel", "verify-static", wheel)


@nox.session(default=False)
def verify(session: nox.Session) -> None:
    """Install each wheel in a fresh venv and prove it runs on the GPU (paths after --; default: all in wheels/)."""
    session.install(".")
    wheels = [a for a in session.posargs if a.endswith(".whl")] or [str(p) for p in sorted(ROOT.glob("wheels/*.whl"))]
    if not wheels:
        session.error("no wheels given and none in wheels/: build one first (nox -s build-cuda-13 -- --arch 86)")
    options = [a for a in session.posargs if not a.endswith(".whl")]
    for wheel in wheels:
        session.run("llamawheel", "verify", wheel, *options)  # exit 11 (GPU checks skipped) fails the session too


@nox.session(default=False)
def publish(session: nox.Session) -> None:
    """Publish wheels and their dependencies to the offline index in wheels/ (paths after --; default: all)."""
    session.install(".")
    given = any(a.endswith(".whl") for a in session.posargs)
    wheels = [] if given else [str(p) for p in sorted(ROOT.glob("wheels/*.whl"))]
    if not given and not wheels:
        session.error("no wheels given and none in wheels/: build one first (nox -s build-cuda-13 -- --arch 86)")
    session.run("llamawheel", "publish", *wheels, *session.posargs)


@nox.session(default=False)
def image(session: nox.Session) -> None:
    """Build the llama-gpt API image from the index (after --: --variant cu130, --save FILE; default: cpu)."""
    session.install(".")
    session.run("llamawheel", "image", *session.posargs)


@nox.session(name="serve-index", default=False)
def serve_index(session: nox.Session) -> None:
    """Serve the index in wheels/ over HTTP (after --: --host 127.0.0.1 --port 8080)."""
    session.install(".")
    session.run("llamawheel", "index", "serve", *session.posargs)


@nox.session(name="ci-matrix", default=False)
def ci_matrix(session: nox.Session) -> None:
    """Print the CI build matrix as JSON (after --: --arch-set 86 --line 12 --runtime system)."""
    session.install(".")
    session.run("llamawheel", "ci-matrix", *session.posargs)


@nox.session(python=INSTALLED_PYTHONS)
def tests(session: nox.Session) -> None:
    """Unit tests: no network, no compiler, under a minute."""
    _install_editable(session, "test")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(default=False)
def integration(session: nox.Session) -> None:
    """Integration tests (real pip, apt, nvcc, servers, images); -- --run-slow adds a full CUDA llama build."""
    session.install(".[test]")
    session.run("pytest", "tests/integration", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict, the import layers, the reference's generated tables and the docs (mkdocs --strict)."""
    _install_editable(session, "lint,docs")
    session.run("ruff", "check", "src", "tests", "scripts", "noxfile.py")
    session.run("mypy")
    session.run("mypy", "scripts/docs-tables.py")
    session.run("lint-imports")
    session.run("python", "scripts/docs-tables.py", "--check")
    site = Path(session.create_tmp()) / "site"  # no --quiet: it drops the warnings --strict fails on
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), env=MKDOCS_ENV)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the docs site (mkdocs --strict) into site/."""
    _install_editable(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"), env=MKDOCS_ENV)
