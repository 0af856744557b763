"""The image's base: Debian bookworm with python3 and nothing else, made from the apt mirror with mmdebstrap (no
registry needed) and kept in the engine's store under a name that says what it was made from, so later builds reuse
it; or Debian's slim image through the profile's registry mirror (``--base registry``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llamawheel.core import log, paths, proc
from llamawheel.core.errors import ImageError
from llamawheel.image import foreign
from llamawheel.image.engine import Engine
from llamawheel.mirror.profiles import MirrorProfile

BASE_REPOSITORY = "localhost/llamawheel-base"


SUITE = "bookworm"


PYTHON = foreign.PYTHON
"""The image's Python: Debian bookworm's python3, on every platform."""


BASE_PACKAGES = ("python3-minimal", f"libpython{PYTHON}-stdlib", "libstdc++6")
"""What the runtime needs beyond Debian's essential set: Python and the C++ runtime llama.cpp links."""


BASE_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")


MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
"""mmdebstrap's hook that merges /usr itself, so the usrmerge package (and the perl it pulls) stays out."""


REGISTRY_BASE = "library/debian:bookworm-slim"


def _debian_sources(mirror: MirrorProfile) -> list[str]:
    """apt lines for the base: the profile's Debian mirror, else this machine's apt configuration."""
    lines = mirror.debian_sources(SUITE)
    if not lines:
        raise ImageError(
            f"the mirror profile '{mirror.name}' has no Debian URL and this machine's apt has none either",
            'add debian = "https://..." to a profile (llamawheel mirrors list), or pass --base IMAGE',
        )
    return lines


def base_recipe() -> dict[str, Any]:
    """Everything that decides what the base holds (not where it came from: every package is checked
    against the archive's signed index, so a mirror cannot change it)."""
    return {"suite": SUITE, "variant": "essential", "include": list(BASE_PACKAGES), "exclude": list(BASE_EXCLUDES),
            "merged-usr": "hook"}


def base_ref() -> str:
    key = hashlib.sha256(json.dumps(base_recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{SUITE}-{key}"


def make_base(engine: Engine, mirror: MirrorProfile, refresh: bool = False) -> tuple[str, float]:
    """The base image (made with mmdebstrap, or reused from the engine's store); returns (ref, seconds)."""
    ref = base_ref()
    if not refresh and engine.has_image(ref):
        log.info(f"base {ref}: reusing the one in {engine.name}'s store (--refresh-base makes it again)")
        return ref, 0.0
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise ImageError("mmdebstrap is not installed: it makes the base from the apt mirror",
                         "apt-get install mmdebstrap; or use a registry (mirror) image: --base REGISTRY/"
                         + REGISTRY_BASE)
    started = time.monotonic()
    sources = _debian_sources(mirror)
    log.info(f"making the base: Debian {SUITE} ({', '.join(BASE_PACKAGES)}) with mmdebstrap from {mirror.name}"
             " apt mirror (about 20 s)")
    work = paths.images_dir()
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-", dir=work) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [exe, "--variant=essential", f"--include={','.join(BASE_PACKAGES)}", "--format=tar"]
        if MERGED_USR_HOOKS.is_dir():
            cmd.append(f"--hook-dir={MERGED_USR_HOOKS}")
        cmd += [f"--dpkgopt=path-exclude={p}" for p in BASE_EXCLUDES]
        cmd += ["--customize-hook=rm -rf $1/var/cache/apt/* $1/var/lib/apt/lists/*", SUITE, str(tarball), *sources]
        proc.stream(cmd, error=ImageError, what="mmdebstrap could not make the base",
                    tip=f"check the apt mirror (llamawheel mirrors check {mirror.name}); full log: {work / 'base.log'}",
                    log_file=work / "base.log", on_line=_show_mmdebstrap)
        engine.import_rootfs(tarball, ref, {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    seconds = time.monotonic() - started
    log.info(f"base {ref}: {log.human_size(engine.size(ref))}, made in {log.human_time(seconds)}")
    return ref, seconds


def _show_mmdebstrap(line: str) -> None:
    if line.startswith(("I: success", "E: ", "W: ")) or "downloading packages" in line or "installing" in line:
        log.info("mmdebstrap: " + line.strip())


def registry_base(mirror: MirrorProfile) -> str:
    """Debian's slim image through the profile's Docker Hub mirror (Docker Hub when it has none)."""
    return mirror.image("dockerhub", REGISTRY_BASE)
