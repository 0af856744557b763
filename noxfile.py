"""Nox sessions for llamawheel. Each is a few lines that call the package.

    nox -s build-cuda-13 -- --arch 86       # the line's default minor (13.0)
    nox -s build-cuda-13.2 -- --mirror tsinghua
    nox -s build-cpu
    nox -s tests
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).parent


def _cuda_lines() -> dict[str, tuple[str, list[str]]]:
    """{"13": ("13.0", ["13.0", "13.1", ...])}: each line's default minor and all its minors."""
    lines = {}
    for path in sorted(ROOT.glob("recipes/cuda-*.toml")):
        data = tomllib.loads(path.read_text())
        lines[path.stem.removeprefix("cuda-")] = (data.get("default-minor", ""), list(data.get("minors", {})))
    return lines


def _build(session: nox.Session, target: str) -> None:
    session.install(".")
    session.run("llamawheel", "build", target, *session.posargs)


for _line, (_default, _minors) in _cuda_lines().items():
    for _target in (_line, *_minors):
        def _session(session: nox.Session, target: str = _target) -> None:
            _build(session, target)

        _what = f"CUDA {_default} (the {_line}.x default)" if _target == _line else f"CUDA {_target}"
        _session.__doc__ = f"Build a {_what} wheel; after --: --arch 86, --mirror NAME, --jobs N, --out DIR."
        nox.session(name=f"build-cuda-{_target}", default=False, tags=["build"])(_session)


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


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real pip, real nvcc); add -- --run-slow for the full llama-cpp-python build."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict."""
    session.install(".[lint]")
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")
