"""Compiling inside a build root (`llamawheel.toolchain.buildroot`): commands run through a `Runner`, which is the
identity on the host. What pip needs there is fetched on this machine first (`llamawheel.pipeline.wheelhouse`),
into a wheelhouse the root's pip reads with no index and no network.

A build writes only two places: its own folder (seen at `BUILD_DIR`: the source, the CMake tree, the raw wheel and
the virtual environment pip runs in) and the compile cache's store. The root, the CUDA root, the compile-cache tool
and the wheelhouse are read-only inside, and nothing else of llamawheel's cache is there at all (the farm's
tokens, the other toolchains, other builds)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import log, paths, proc
from llamawheel.core.errors import ToolchainError
from llamawheel.toolchain.buildroot import VENV, Root, env_for_pip

BUILD_DIR = "/build"
"""Where a root build sees its own folder (source, CMake tree, raw wheel), whatever the cache's path here: paths
compiled into the libraries (``__FILE__`` in ggml's asserts) are then the same on every machine."""
CUDA_DIR = "/opt/cuda"
"""Where a root build sees the CUDA root."""
BUILD_VENV = f"{BUILD_DIR}/.venv"
"""The virtual environment pip runs in during a root build, made by the root's Python in the build's own folder
(the root is read-only: its ``/opt/llamawheel`` cannot take the newer pip the build installs)."""


@dataclass(frozen=True)
class Runner:
    """Where build commands run: this machine (``root`` None), or inside a build root with the cache (compile
    cache, wheelhouse) bound at its own path and the build's folder and the CUDA root at fixed paths (`moved`)."""

    root: Root | None = None
    binds: tuple[Path, ...] = ()
    ro_binds: tuple[Path, ...] = ()
    base_env: Mapping[str, str] | None = None
    moved: tuple[tuple[Path, str], ...] = ()
    """Folders of this machine seen at another path inside (bound there): (here, inside)."""
    moved_ro: tuple[tuple[Path, str], ...] = ()
    """The same, read-only (the CUDA root)."""
    network: bool = False
    """Whether the root shares this machine's network (a remote compile cache, a build farm); pip inside still
    reads only the wheelhouse."""
    venv: str = VENV
    """The virtual environment inside the root whose Python runs pip (`BUILD_VENV` for a build)."""

    def inside(self, text: str) -> str:
        """``text`` (a path, an argument, an environment value) with this machine's paths of the `moved` folders
        replaced by where the root sees them."""
        for here, there in sorted(self.moved + self.moved_ro, key=lambda m: -len(str(m[0]))):
            text = text.replace(str(here), there)
        return text

    @property
    def python(self) -> str | None:
        """The Python that runs pip inside the root; None: this llamawheel's own."""
        return f"{self.venv}/bin/python" if self.root else None

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str] | None]:
        """The command line to run and the extra environment to give it (None: it is inside the command)."""
        if self.root is None:
            return list(argv), dict(env)
        merged = {k: self.inside(v) for k, v in {**(self.base_env or {}), **env}.items()}
        binds = [(str(b), str(b)) for b in self.binds] + [(str(here), there) for here, there in self.moved]
        ro = [(str(b), str(b)) for b in self.ro_binds] + [(str(here), there) for here, there in self.moved_ro]
        return self.root.command([self.inside(a) for a in argv], env=merged, binds=binds, ro_binds=ro,
                                 network=self.network, read_only=True), None


def runner_for(root: Root, house: Path, cuda_root: Path | None, work: Path) -> Runner:
    """A runner into ``root`` (read-only) whose pip sees only ``house``: the build's own folder ``work`` bound
    writable at `BUILD_DIR`, the compile caches' stores writable at their own path; the CUDA root read-only at
    `CUDA_DIR`, the wheelhouse and the compile-cache tools read-only at their own paths. The virtual environment
    pip runs in (`BUILD_VENV`) is made here, by the root's own Python."""
    stores, tools = paths.compile_stores_dir(), paths.tools_dir()
    for folder in (stores, tools):
        folder.mkdir(parents=True, exist_ok=True)
    path = ([f"{CUDA_DIR}/bin"] if cuda_root else []) + [f"{BUILD_VENV}/bin", "/usr/local/bin", "/usr/bin", "/bin"]
    cuda = ((cuda_root, CUDA_DIR),) if cuda_root is not None else ()
    runner = Runner(root, (stores,), (house, tools), {**env_for_pip(house), "PATH": ":".join(path)},
                    ((work, BUILD_DIR),), cuda, venv=BUILD_VENV)
    shutil.rmtree(work / Path(BUILD_VENV).name, ignore_errors=True)  # a fresh one (Python 3.9's --clear trips on links)
    cmd, _ = runner.command(["python3", "-m", "venv", BUILD_VENV], {})
    proc.stream(cmd, error=ToolchainError,
                what=f"the {root.suite} root's Python could not make a virtual environment in the build's folder",
                tip=f"remove the root and let llamawheel make it again: llamawheel toolchains --clean {root.name}")
    log.info(f"entering the {root.suite} root read-only, with no capability and namespaces of its own; writable: "
             f"the build's folder ({work}) and the compile cache's stores ({stores})")
    return runner
