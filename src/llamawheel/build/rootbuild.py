"""Compiling inside a build root (`llamawheel.toolchain.buildroot`): commands run through a `Runner`, which is the
identity on the host. What pip needs there is fetched on this machine first (`llamawheel.pipeline.wheelhouse`),
into a wheelhouse the root's pip reads with no index and no network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import paths
from llamawheel.toolchain.buildroot import VENV, Root, env_for_pip


@dataclass(frozen=True)
class Runner:
    """Where build commands run: this machine (``root`` None), or inside a build root with the cache (source,
    build tree, compile cache, CUDA root, wheelhouse) bound at its own path."""

    root: Root | None = None
    binds: tuple[Path, ...] = ()
    ro_binds: tuple[Path, ...] = ()
    base_env: Mapping[str, str] | None = None

    @property
    def python(self) -> str | None:
        """The Python that runs pip inside the root; None: this llamawheel's own."""
        return f"{VENV}/bin/python" if self.root else None

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str] | None]:
        """The command line to run and the extra environment to give it (None: it is inside the command)."""
        if self.root is None:
            return list(argv), dict(env)
        merged = {**(self.base_env or {}), **env}
        return self.root.command(argv, env=merged, binds=self.binds, ro_binds=self.ro_binds), None


def runner_for(root: Root, house: Path, cuda_root: Path | None) -> Runner:
    """A runner into ``root`` whose pip sees only ``house``; the cache folder is bound read-write, a CUDA root
    outside it (an installed toolkit) read-only."""
    cache = paths.cache_dir()
    ro = (cuda_root,) if cuda_root is not None and not cuda_root.is_relative_to(cache) else ()
    path = ([f"{cuda_root}/bin"] if cuda_root else []) + [f"{VENV}/bin", "/usr/local/bin", "/usr/bin", "/bin"]
    return Runner(root, (cache,), ro, {**env_for_pip(house), "PATH": ":".join(path)})
