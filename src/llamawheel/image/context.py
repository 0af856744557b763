"""The image's build context: the wheel chosen from the variant's index (checked to hold its dependencies for the
image's Python), the Containerfile, the index, pip, the runtime package with llama.cpp's GGML converter, and the
build arguments that pin the exact wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from llamawheel.building import patches, sdist
from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import ImageError, UsageError
from llamawheel.image import compose, foreign
from llamawheel.image.base import PYTHON
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.pipeline import server, wheelhouse
from llamawheel.publish import closure, index, index_pages
from llamawheel.recipe import catalog, platforms
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.wheel.distmeta import WheelName

IMAGE_REPOSITORY = compose.API_REPOSITORY


RUNTIME_FILES = ("__init__.py", "serve.py", "upstream.py", "health.py", "gpu_layers.py", "convert.py")


CONVERTER_SCRIPT = "convert_llama_ggml_to_gguf.py"
"""llama.cpp's GGML v3 -> GGUF converter, shipped in the pinned sdist (with its ``gguf`` package)."""


CONVERTER_PATCH = "convert-ggml-byte-shape.patch"
"""Makes that converter work with the ``gguf`` package beside it (see the patch's header); in recipes/patches/."""


@dataclass(frozen=True)
class IndexedWheel:
    """The llama-cpp-python wheel the image installs, as the variant's index lists it."""

    variant: str
    version: str
    name: str
    sha256: str
    index: Path
    platform: Platform = X86_64
    """The machine the wheel (and so the image) is for."""

    @property
    def release(self) -> str:
        """The llama-cpp-python release, without the variant (``0.3.36``): the server wheel's version."""
        return self.version.split("+")[0]

    @property
    def path(self) -> Path:
        """The wheel file in the variant's content store."""
        return self.index / index_pages.store_path(self.sha256, self.name)


def chosen_wheel(index_root: Path, variant: str, version: str | None = None,
                 target: Platform = X86_64) -> IndexedWheel | None:
    """The llama-cpp-python wheel of ``variant`` for ``target`` in the index: ``version``, else the newest
    published (an index holds the wheels of every platform side by side)."""
    vdir = index_root / variant
    if not (vdir / "simple").exists():
        return None
    state = index.load_state(vdir)
    wheels = [f for f in state.files if f.project == "llama-cpp-python" and f.direct
              and platforms.of_tag(WheelName.parse(f.name).platform) == target]
    if version:
        wheels = [f for f in wheels if f.version == version]
        if not wheels:
            known = sorted({f.version for f in state.files if f.project == "llama-cpp-python"})
            raise UsageError(f"--wheel-version {version}: the {variant} index has {', '.join(known) or 'none'}")
    if not wheels:
        return None
    best = max(wheels, key=lambda f: Version(f.version))
    return IndexedWheel(variant, best.version, best.name, best.sha256, vdir, target)


def check_index(wheel: IndexedWheel) -> None:
    """Before anything is built: the variant's index holds the dependencies of ``wheel`` for the image's Python on
    its machine (the lock its publish wrote for them), and every file that lock names. Otherwise pip would say so
    only deep inside the image build ("no matching distribution found")."""
    locks = closure.read_locks(wheel.index / "simple")
    lock = locks.get(closure.lock_name(PYTHON, wheel.platform.name))
    publish = (f"llamawheel publish --index {wheel.index.parent} --python-version {PYTHON} {wheel.path}   (through "
               "--mirror, where the default index is not reachable)")
    if lock is None or not any(root.split("[")[0] == wheel.name for root in lock.roots):
        has = sorted(f"Python {lk.python} on {lk.arch}" for lk in locks.values())
        raise ImageError(f"the {wheel.variant} index in {wheel.index.parent} holds {wheel.name} but not its "
                         f"dependencies for the image's Python ({PYTHON} on {wheel.platform.name}); it has them for "
                         f"{', '.join(has) or 'no Python'}", f"add them: {publish}")
    missing = [f.file for f in lock.files if not (wheel.index / f.store_path).is_file()]
    if missing:
        raise ImageError(f"the {wheel.variant} index in {wheel.index.parent} lacks {len(missing)} file(s) its lock for "
                         f"Python {PYTHON} names: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
                         f"check it (llamawheel index check {wheel.index.parent}) and publish again: {publish}")


def pip_wheel(mirror: MirrorProfile) -> Path:
    """pip itself, as a wheel, to run at build time (never installed): the release ``recipes/pins/tools.toml``
    pins, checked against its sha256 (cached: later builds need no network for it)."""
    index = mirror.pypi_index() or "pip's configured index"
    log.info(f"pip for the image build: the pinned wheel (recipes/pins/tools.toml) from {index}, or the cache")
    return wheelhouse.pinned_pip(mirror, paths.images_dir() / "pip")


def converter_patch() -> Path:
    return paths.recipes_dir() / "patches" / CONVERTER_PATCH


def converter_files(mirror: MirrorProfile) -> Path:
    """llama.cpp's GGML v3 converter and its ``gguf`` package, from the pinned sdist (cached unpacked)."""
    source = catalog.cpu_recipe().llama_cpp_python
    patch = converter_patch()
    final = paths.images_dir() / f"converter-{source.version}-{fileio.sha256_of(patch)[:12]}"
    with fileio.locked(final):
        if (final / CONVERTER_SCRIPT).is_file():
            return final
        archive = sdist.fetch(source, mirror)
        top = "vendor/llama.cpp/"
        with fileio.new_dir(final) as tmp, tarfile.open(archive) as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[-1]
                if not member.isfile() or not inner.startswith(top):
                    continue
                rel = inner[len(top):]
                if rel == CONVERTER_SCRIPT or (rel.startswith("gguf-py/gguf/") and rel.endswith(".py")):
                    target = tmp / rel.removeprefix("gguf-py/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = tar.extractfile(member)
                    assert data is not None
                    target.write_bytes(data.read())
            if not (tmp / CONVERTER_SCRIPT).is_file():
                raise ImageError(f"{archive.name} holds no vendor/llama.cpp/{CONVERTER_SCRIPT}")
            patches.apply(patch, tmp)
            tmp.chmod(0o755)  # a temporary folder is 0700: the image's user (uid 1000) must read it
    return final


def _link_tree(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` with hard links where the file system allows (the wheels are big)."""

    def link(src: str, dst: str) -> object:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            return shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)


def write_context(wheel: IndexedWheel, dest: Path, pip: Path, converter: Path) -> None:
    """The build context: the Containerfile, the variant's index, pip, the runtime package (with llama.cpp's
    GGML converter), and the constraints that keep NVIDIA's runtime wheels at the release the wheel was built
    against. For another machine's platform, `foreign`'s: the wheel and its closure installed here instead of the
    index and pip."""
    dest.mkdir(parents=True)
    pins = closure.runtime_pins(wheel.path)
    (dest / "constraints.txt").write_text("".join(f"{p}\n" for p in pins))
    if not wheel.platform.native:
        foreign.write_context(dest, wheel.index / "simple", requirement(wheel), dest / "constraints.txt", pip,
                              wheel.platform)
    else:
        shutil.copy2(paths.containerfile(), dest / "Containerfile")
        shutil.copytree((wheel.index / "simple").resolve(), dest / "index" / "simple")
        _link_tree(wheel.index / "files", dest / "index" / "files")
        (dest / "pip").mkdir()
        shutil.copy2(pip, dest / "pip" / pip.name)
    (dest / "runtime").mkdir()
    for name in RUNTIME_FILES:
        shutil.copy2(paths.runtime_dir() / name, dest / "runtime" / name)
    shutil.copytree(converter, dest / "runtime" / "converter")


def tags_for(wheel: IndexedWheel) -> tuple[str, ...]:
    """``llamawheel-api:cu130`` (the variant's latest) and ``llamawheel-api:0.3.36-cu130.sm90``; for another
    platform than x86-64, with its name: ``llamawheel-api:cu130-aarch64``."""
    exact = re.sub(r"[^A-Za-z0-9_.-]", "-", wheel.version.replace("+", "-"))
    suffix = "" if wheel.platform == X86_64 else f"-{wheel.platform.name}"
    return f"{IMAGE_REPOSITORY}:{wheel.variant}{suffix}", f"{IMAGE_REPOSITORY}:{exact}{suffix}"


def requirement(wheel: IndexedWheel) -> str:
    """What the image installs: the wheel, llama.cpp's own server of the same release (the companion wheel), uvicorn
    for the front and PyYAML for the GGML v3 converter's ``gguf`` package (llama-cpp-python's own server and the rest
    of its dependencies are left out)."""
    return f"llama-cpp-python=={wheel.version} {server.PROJECT}=={wheel.release} uvicorn pyyaml"


def build_args(base: str, mirror: MirrorProfile, wheel: IndexedWheel) -> dict[str, str]:
    args = {"BASE_IMAGE": base, "REQUIREMENT": requirement(wheel)}
    if mirror.debian:
        args["APT_MIRROR"] = mirror.debian
    return args


def variants_in(index_root: Path) -> Sequence[str]:
    return sorted(p.name for p in index_root.iterdir() if (p / "simple").exists()) if index_root.is_dir() else []
