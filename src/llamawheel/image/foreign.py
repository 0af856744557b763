"""The runtime image for another platform than this machine's (``llamawheel image --platform aarch64`` on x86-64).

Nothing of an Arm image can run here during its build (there is no binfmt_misc: QEMU user mode runs only a
program it is handed), so it is made without running anything inside it:

- the base is Debian bookworm for that platform, unpacked by mmdebstrap's extract variant (Python, the C++ runtime
  and what they need; not configured, so no shell, apt or pip: the image needs none) and imported with the
  platform's architecture;
- pip runs here and installs ``llama-cpp-python[server]`` and its closure for that platform and the base's Python
  (3.11) from the private index into ``site/``, with the same constraints as the image of this machine's platform;
- ``docker/Containerfile.foreign`` has no RUN step: it copies ``site/``, the runtime, and passwd/group files
  naming the image's user (uid 1000), and sets the same environment, user, port, health check and entry point.

The image's programs run on the target (or here under QEMU: the integration tests serve a chat from its files).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from llamawheel.core import log, paths, proc
from llamawheel.core.errors import ImageError
from llamawheel.image.engine import Engine
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe.platforms import Platform
from llamawheel.toolchain.buildroot import SUITES
from llamawheel.wheel.requirements import platforms_for

BOOKWORM = SUITES["bookworm"]
"""The base's Debian release: its Python and glibc are what pip installs for."""
PYTHON = BOOKWORM.python
PACKAGES = ("python3-minimal", f"libpython{PYTHON}-stdlib", "libstdc++6", "base-files", "tzdata")
"""Unpacked with what they depend on: Python, the C++ runtime, os-release, time zones."""
EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nllama:x:1000:1000:llama:/home/llama:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nllama:x:1000:\n"
CONTAINERFILE = "Containerfile.foreign"


def base_ref(suite: str, target: Platform) -> str:
    recipe = {"suite": suite, "variant": "extract", "arch": target.debian_arch, "include": list(PACKAGES),
              "exclude": list(EXCLUDES)}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"localhost/llamawheel-base:{suite}-{target.debian_arch}-{key}"


def make_base(engine: Engine, mirror: MirrorProfile, suite: str, target: Platform,
              refresh: bool = False) -> tuple[str, float]:
    """The ``target`` base image (unpacked with mmdebstrap from the apt mirror's main suite, or reused)."""
    ref = base_ref(suite, target)
    if not refresh and engine.has_image(ref):
        log.info(f"base {ref}: reusing the one in {engine.name}'s store (--refresh-base makes it again)")
        return ref, 0.0
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise ImageError(f"mmdebstrap is not installed: it makes the {target.name} base from the apt mirror",
                         "apt-get install mmdebstrap")
    sources = mirror.debian_sources(suite)[:1]  # Debian's security archive serves no arm64
    if not sources:
        raise ImageError(f"the mirror profile '{mirror.name}' has no Debian URL and this machine's apt has none",
                         'add debian = "https://..." to a profile (llamawheel mirrors list)')
    started = time.monotonic()
    log.info(f"making the {target.name} base: Debian {suite} ({', '.join(PACKAGES)}, unpacked) with mmdebstrap "
             f"from the {mirror.name} apt mirror")
    work = paths.images_dir()
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-", dir=work) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [exe, f"--architectures={target.debian_arch}", "--variant=extract", f"--include={','.join(PACKAGES)}",
               "--format=tar", *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDES], suite, str(tarball), *sources]
        proc.stream(cmd, error=ImageError, what=f"mmdebstrap could not make the {target.name} base",
                    tip=f"check the apt mirror (llamawheel mirrors check {mirror.name}); full log: "
                        f"{work / f'base-{target.name}.log'}",
                    log_file=work / f"base-{target.name}.log")
        engine.import_rootfs(tarball, ref, {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                             arch=target.debian_arch)
    seconds = time.monotonic() - started
    log.info(f"base {ref}: {log.human_size(engine.size(ref))}, made in {log.human_time(seconds)}")
    return ref, seconds


def install_site(index_simple: Path, requirement: str, constraints: Path, pip: Path, dest: Path,
                 target: Platform) -> None:
    """pip (the pinned wheel, run by this Python) installs ``requirement`` and its closure into ``dest`` as the
    target's Python would: its platform's wheels only, from the private index only, then drops what nothing runs
    (numpy's tests, NVIDIA's headers and static libraries), as the image of this machine's platform does."""
    major, minor = BOOKWORM.glibc
    tags = platforms_for([f"manylinux_{major}_{minor}_{target.name}"])  # the base's glibc, and every older tag
    cmd = [sys.executable, str(pip / "pip"), "install", "--no-cache-dir", "--disable-pip-version-check",
           "--no-input", "--target", str(dest), "--only-binary=:all:", "--python-version", PYTHON,
           "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}",
           *[x for t in tags for x in ("--platform", t)], "--index-url", index_simple.as_uri(),
           "--constraint", str(constraints), *requirement.split()]
    log.info(f"installing {requirement} for {target.label} (Python {PYTHON}) from {index_simple} with pip here")
    proc.run(cmd, error=ImageError, what=f"pip could not install {requirement} for {target.name} from {index_simple}",
             tip=f"the index must hold the {target.name} wheel and its closure for Python {PYTHON}: "
                 f"llamawheel publish WHEEL --python-version {PYTHON}",
             env={"PIP_CONFIG_FILE": "/dev/null", **proc.unset_all("PIP_")})
    for tests in dest.glob("numpy/**/tests"):
        shutil.rmtree(tests, ignore_errors=True)
    for folder in dest.glob("nvidia/*/include"):
        shutil.rmtree(folder, ignore_errors=True)
    for static in dest.glob("nvidia/**/*.a"):
        static.unlink()
    shutil.rmtree(dest / "bin", ignore_errors=True)  # console scripts point at this machine's Python


def write_context(dest: Path, index_simple: Path, requirement: str, constraints: Path, pip: Path,
                  target: Platform) -> None:
    """The build context of ``Containerfile.foreign`` (see there) in ``dest``, but for ``runtime/``: the
    Containerfile, ``site/`` (`install_site`), the passwd and group files and the empty home."""
    shutil.copy2(paths.data_dir("docker") / CONTAINERFILE, dest / "Containerfile")
    install_site(index_simple, requirement, constraints, pip, dest / "site", target)
    (dest / "etc").mkdir()
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    (dest / "home").mkdir()
