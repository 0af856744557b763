"""Compiling inside a build root (`llamawheel.toolchain.buildroot`): commands run through a `Runner`, which is the
identity on the host. What pip needs there is fetched on this machine first (`llamawheel.pipeline.wheelhouse`),
into a wheelhouse the root's pip reads with no index and no network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import paths
from llamawheel.toolchain.buildroot import VENV, Root, env_for_pip

BUILD_DIR = "/build"
"""Where a root build sees its own folder (source, CMake tree, raw wheel), whatever the cache's path here: paths
compiled into the libraries (``__FILE__`` in ggml's asserts) are then the same on every machine."""
CUDA_DIR = "/opt/cuda"
"""Where a root build sees the CUDA root."""


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

    def inside(self, text: str) -> str:
        """``text`` (a path, an argument, an environment value) with this machine's paths of the `moved` folders
        replaced by where the root sees them."""
        for here, there in sorted(self.moved + self.moved_ro, key=lambda m: -len(str(m[0]))):
            text = text.replace(str(here), there)
        return text

    @property
    def python(self) -> str | None:
        """The Python that runs pip inside the root; None: this llamawheel's own."""
        return f"{VENV}/bin/python" if self.root else None

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str] | None]:
        """The command line to run and the extra environment to give it (None: it is inside the command)."""
        if self.root is None:
            return list(argv), dict(env)
        merged = {k: self.inside(v) for k, v in {**(self.base_env or {}), **env}.items()}
        binds = [(str(b), str(b)) for b in self.binds] + [(str(here), there) for here, there in self.moved]
        ro = [(str(b), str(b)) for b in self.ro_binds] + [(str(here), there) for here, there in self.moved_ro]
        return self.root.command([self.inside(a) for a in argv], env=merged, binds=binds, ro_binds=ro,
                                 network=self.network), None


def runner_for(root: Root, house: Path, cuda_root: Path | None, work: Path) -> Runner:
    """A runner into ``root`` whose pip sees only ``house``; the cache folder is bound read-write, the build's own
    folder ``work`` at `BUILD_DIR` and the CUDA root at `CUDA_DIR`."""
    path = ([f"{CUDA_DIR}/bin"] if cuda_root else []) + [f"{VENV}/bin", "/usr/local/bin", "/usr/bin", "/bin"]
    cuda = ((cuda_root, CUDA_DIR),) if cuda_root is not None else ()
    return Runner(root, (paths.cache_dir(),), (), {**env_for_pip(house), "PATH": ":".join(path)}, ((work, BUILD_DIR),),
                  cuda)
