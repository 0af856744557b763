"""``llamawheel image``: the slim runtime image that the stock llama-gpt UI uses as its API.

    private index (wheels/<variant>/)  ->  build context  ->  engine build (docker/Containerfile)  ->  image
                                                                        \\-> --save: OCI archive + .sha256

The base is Debian bookworm with python3 and nothing else, made from the apt mirror with mmdebstrap (no
registry needed) and kept in the engine's store under a name that says what it was made from, so later
builds reuse it; or any image a registry (mirror) serves (``--base``). The wheel and its closure come
from the private index only, checked against the sha256 in its pages. If the variant has no wheel in
the index yet, it is built and published first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from llamawheel import __version__, pipeline
from llamawheel.building import options, patches, planning, sdist
from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import ImageError, UsageError
from llamawheel.image import compose, foreign
from llamawheel.image.engine import Engine
from llamawheel.mirror import profiles
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.pipeline import server, wheelhouse
from llamawheel.publish import closure, index
from llamawheel.recipe import catalog, platforms
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.recipe.variant import cuda_version_of
from llamawheel.wheel.distmeta import WheelName

IMAGE_REPOSITORY = compose.API_REPOSITORY
BASE_REPOSITORY = "localhost/llamawheel-base"
SUITE = "bookworm"
PYTHON = foreign.PYTHON
"""The image's Python: Debian bookworm's python3, on every platform."""
BASE_PACKAGES = ("python3-minimal", f"libpython{PYTHON}-stdlib", "libstdc++6")
"""What the runtime needs beyond Debian's essential set: Python and the C++ runtime llama.cpp links."""
BASE_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
"""mmdebstrap's hook that merges /usr itself, so the usrmerge package (and the perl it pulls) stays out."""
RUNTIME_FILES = ("__init__.py", "serve.py", "upstream.py", "health.py", "gpu_layers.py", "convert.py")
CONVERTER_SCRIPT = "convert_llama_ggml_to_gguf.py"
"""llama.cpp's GGML v3 -> GGUF converter, shipped in the pinned sdist (with its ``gguf`` package)."""
CONVERTER_PATCH = "convert-ggml-byte-shape.patch"
"""Makes that converter work with the ``gguf`` package beside it (see the patch's header); in recipes/patches/."""
REGISTRY_BASE = "library/debian:bookworm-slim"
SIZE_TARGETS_MB = {"cpu": 300, "cuda": 1200}
"""Uncompressed size targets (measured by scripts/image-size.py, not by a test)."""


@dataclass(frozen=True)
class ImageResult:
    tags: tuple[str, ...]
    size: int
    manifest: dict[str, Any]
    manifest_path: Path
    archive: Path | None = None
    archive_sha256: str = ""


def size_target_mb(variant: str) -> int:
    return SIZE_TARGETS_MB["cpu" if variant == "cpu" else "cuda"]


# ----------------------------------------------------------------------------- the base


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


# ----------------------------------------------------------------------------- the context


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
    pages = wheel.index / "simple"
    lock = closure.read_locks(pages).get(closure.lock_name(PYTHON, wheel.platform.name))
    stored = wheel.index / "files" / wheel.sha256 / wheel.name
    publish = (f"llamawheel publish --index {wheel.index.parent} --python-version {PYTHON} {stored}   (through "
               "--mirror, where the default index is not reachable)")
    if lock is None or not any(root.split("[")[0] == wheel.name for root in lock.roots):
        has = sorted(f"Python {lk.python} on {lk.arch}" for lk in closure.read_locks(pages).values())
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
    pins = closure.runtime_pins(wheel.index / "files" / wheel.sha256 / wheel.name)
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


# ----------------------------------------------------------------------------- build


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


def registry_base(mirror: MirrorProfile) -> str:
    """Debian's slim image through the profile's Docker Hub mirror (Docker Hub when it has none)."""
    return mirror.image("dockerhub", REGISTRY_BASE)


def _show_build(line: str) -> None:
    if re.match(r"^(STEP \d+/\d+|\[\d+/\d+\]|Step \d+/\d+|#\d+ \[|COMMIT|Successfully|llama_cpp \d)", line.strip()):
        log.info(line.strip())


def _engine_build(engine: Engine, wheel: IndexedWheel, mirror: MirrorProfile, base_image: str,
                  tags: tuple[str, ...]) -> tuple[str, float]:
    """Write the context into a temporary folder and build it; the previous images under these names go.
    Returns the new image's id and the seconds the build took."""
    work = paths.images_dir()
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / f"build-{wheel.variant}.log"
    log_file.unlink(missing_ok=True)
    pip = pip_wheel(mirror)
    replaced = {engine.image_id(t) for t in tags}  # "" for a name not there yet
    with tempfile.TemporaryDirectory(prefix=f"context-{wheel.variant}-", dir=work) as tmp:
        context = Path(tmp) / "context"
        write_context(wheel, context, pip, converter_files(mirror))
        log.info(f"building {tags[0]} with {engine.name}: llama-cpp-python {wheel.version} from {wheel.index}")
        started = time.monotonic()
        engine.build(context, tags, build_args(base_image, mirror, wheel), log_file, _show_build,
                     "" if wheel.platform.native else wheel.platform.debian_arch)
        seconds = time.monotonic() - started
    new_id = engine.image_id(tags[0])
    for old in replaced - {new_id, ""}:
        engine.remove(old)  # the previous build under these names (kept if another name or container uses it)
    return new_id, seconds


def build(
    engine: Engine,
    wheel: IndexedWheel,
    mirror: MirrorProfile,
    *,
    base: str | None = None,
    refresh_base: bool = False,
    save: Path | None = None,
    save_format: str = "oci",
) -> ImageResult:
    """Build the image for ``wheel``; with ``save``, also write it as an OCI (or Docker) archive with its
    sha256."""
    started = time.monotonic()
    check_index(wheel)
    server_wheel = ensure_server(wheel, mirror)
    if not wheel.platform.native:
        if base is not None:
            raise UsageError(f"--base: a {wheel.platform.name} image is built from a base llamawheel unpacks "
                             f"(nothing of it can run here), not from {base}", "drop --base")
        base_image, base_seconds = foreign.make_base(engine, mirror, SUITE, wheel.platform, refresh_base)
        base_from = f"mmdebstrap {SUITE} {wheel.platform.debian_arch}, unpacked, from the apt mirror ({mirror.name})"
    elif base is None:
        base_image, base_seconds = make_base(engine, mirror, refresh_base)
        base_from = f"mmdebstrap {SUITE} from the apt mirror ({mirror.name})"
    else:
        base_image, base_seconds = base, 0.0
        base_from = "registry"
    tags = tags_for(wheel)
    new_id, build_seconds = _engine_build(engine, wheel, mirror, base_image, tags)
    size = engine.size(tags[0])
    target = size_target_mb(wheel.variant)
    verdict = "within" if size <= target * 1_000_000 else "OVER"
    log.info(f"image {tags[0]}: {log.human_size(size)} uncompressed ({verdict} the {target} MB target),"
             f" built in {log.human_time(time.monotonic() - started)}")
    manifest: dict[str, Any] = {
        "image": tags[0], "tags": list(tags), "image_id": new_id, "engine": engine.name,
        "variant": wheel.variant, "platform": wheel.platform.name, "llama_cpp_python": wheel.version,
        "wheel": wheel.name, "server_wheel": server_wheel,
        "wheel_sha256": wheel.sha256, "index": str(wheel.index), "base": base_image, "base_from": base_from,
        "base_recipe": base_recipe() if base is None and wheel.platform.native else None, "size_bytes": size,
        "size_target_bytes": target * 1_000_000, "seconds": {"base": round(base_seconds, 1),
                                                             "build": round(build_seconds, 1),
                                                             "total": round(time.monotonic() - started, 1)},
        "ggml_converter": {"from": f"llama-cpp-python {catalog.cpu_recipe().llama_cpp_python.version} sdist",
                           "script": CONVERTER_SCRIPT, "patches": [{"file": CONVERTER_PATCH,
                                                                    "sha256": fileio.sha256_of(converter_patch())}]},
        "user": "1000:1000", "port": 8000, "llamawheel": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    archive_sha = ""
    if save is not None:
        archive_sha = save_archive(engine, tags[0], save, save_format)
        manifest["archive"] = {"file": save.name, "format": f"{save_format}-archive", "sha256": archive_sha,
                               "size_bytes": save.stat().st_size}
    manifest_path = (save.with_name(save.name + ".json") if save is not None
                     else paths.images_dir() / f"llamawheel-api-{tags[0].split(':')[-1]}.json")
    fileio.write_file(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return ImageResult(tags, size, manifest, manifest_path, save, archive_sha)


def save_archive(engine: Engine, ref: str, out: Path, fmt: str = "oci") -> str:
    """Write ``ref`` to ``out`` as an OCI (or Docker) archive and ``out``.sha256 beside it; returns the sha256."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info(f"saving {ref} to {out} ({'OCI' if fmt == 'oci' else 'Docker'} archive)")
    with fileio.new_file(out) as partial:
        partial.unlink()  # the engine writes the archive itself, and some refuse to overwrite a file
        engine.save(ref, partial, fmt)
        digest = fileio.sha256_of(partial)
    fileio.write_file(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n".encode())
    log.info(f"wrote {out} ({log.human_size(out.stat().st_size)}) and {out.name}.sha256")
    return digest


@dataclass(frozen=True)
class Context:
    """A build context written for another machine's engine, and the command that builds it there."""

    wheel: IndexedWheel
    folder: Path
    base: str
    command: list[str]


def context_only(index_root: Path, variant: str, version: str | None, target: Platform, mirror: MirrorProfile,
                 dest: Path, base: str | None) -> Context:
    """``--context-only``: the build context in ``dest`` (a new folder) and the ``docker build`` line for it. Nothing
    is built but llama.cpp's server, when the index lacks it; the wheel must be published already."""
    wheel = chosen_wheel(index_root, variant, version, target)
    if wheel is None:
        known = ", ".join(variants_in(index_root)) or "none"
        raise UsageError(f"the {variant} index in {index_root} has no llama-cpp-python wheel for {target.name} "
                         f"(variants there: {known})", "publish one first: llamawheel publish wheels/*.whl")
    if dest.exists():
        raise UsageError(f"{dest} already exists", "pass a folder that does not exist yet")
    check_index(wheel)
    ensure_server(wheel, mirror)
    write_context(wheel, dest, pip_wheel(mirror), converter_files(mirror))
    if not target.native:  # an unpacked base of the target's (no shell: the Containerfile runs nothing)
        base = foreign.base_ref(SUITE, target)
    elif not base or base == "registry":
        base = registry_base(mirror)
    command = ["docker", "build", "-t", tags_for(wheel)[0]]
    if not target.native:
        command += ["--platform", f"linux/{target.debian_arch}"]
    for key, value in build_args(base, mirror, wheel).items():
        command += ["--build-arg", f"{key}={value}"]
    return Context(wheel, dest, base, [*command, str(dest)])


def ensure_wheel(index_root: Path, variant: str, mirror: MirrorProfile, version: str | None,
                 target: Platform = X86_64) -> IndexedWheel:
    """The variant's wheel for ``target`` from the index; when there is none yet, build it and publish it first."""
    found = chosen_wheel(index_root, variant, version, target)
    if found is not None:
        return found
    if version:
        raise UsageError(f"the {variant} index has no llama-cpp-python {version}")
    log.info(f"the {variant} index in {index_root} has no llama-cpp-python wheel: building and publishing one first")
    if variant != "cpu" and cuda_version_of(variant) is None:
        raise UsageError(f"--variant {variant}: not cpu or cuXY (cu130, cu124, cu118)")
    wheel = pipeline.run(planning.plan_target(variant, _build_options(mirror, index_root, target)))
    index.publish([wheel], index_root=index_root, mirror=mirror)
    found = chosen_wheel(index_root, variant, target=target)
    if found is None:
        raise ImageError(f"published {wheel.name} but the {variant} index still lists no llama-cpp-python wheel")
    return found


def _build_options(mirror: MirrorProfile, out: Path, target: Platform) -> options.BuildOptions:
    """The options of a build the image needs first: this mirror profile, into ``out``, for ``target``."""
    return options.resolve({"mirror": mirror.name if mirror.name in profiles.available() else str(mirror.path),
                            "out": out, "platform": target.name})


def server_in(wheel: IndexedWheel) -> str | None:
    """The file name of llama.cpp's server (`llamawheel.pipeline.server`) of ``wheel``'s release and machine in its
    variant's index, or None."""
    for f in index.load_state(wheel.index).files:
        if f.project == server.PROJECT and f.version == wheel.release and \
                platforms.of_tag(WheelName.parse(f.name).platform) == wheel.platform:
            return f.name
    return None


def ensure_server(wheel: IndexedWheel, mirror: MirrorProfile) -> str:
    """llama.cpp's server for ``wheel`` in its index: there already, else built (the recipe's build environment and
    glibc, ``wheel``'s machine) and published beside it."""
    found = server_in(wheel)
    if found is not None:
        return found
    log.info(f"the {wheel.variant} index has no llamawheel-server {wheel.release} for {wheel.platform.name} "
             "(llama.cpp's own server, which the image runs): building and publishing it first")
    pinned = catalog.cpu_recipe().llama_cpp_python.version
    if wheel.release != pinned:
        raise ImageError(f"{wheel.name}: the image runs llama.cpp's own server, which llamawheel builds for the "
                         f"recipes' llama-cpp-python {pinned} only",
                         f"build the image from a {pinned} wheel (--wheel-version), or publish a llamawheel-server "
                         f"{wheel.release} beside it")
    out = paths.images_dir() / "server-wheels"
    out.mkdir(parents=True, exist_ok=True)
    opts = _build_options(mirror, out, wheel.platform)
    built = server.build(planning.plan_cpu(catalog.cpu_recipe(), opts))
    index.publish([wheel.index / "files" / wheel.sha256 / wheel.name, built], index_root=wheel.index.parent,
                  mirror=mirror)
    found = server_in(wheel)
    if found is None:
        raise ImageError(f"published {built.name} but the {wheel.variant} index still lists no llamawheel-server")
    return found


def variants_in(index_root: Path) -> Sequence[str]:
    return sorted(p.name for p in index_root.iterdir() if (p / "simple").exists()) if index_root.is_dir() else []
