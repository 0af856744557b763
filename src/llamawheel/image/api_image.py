"""Building the API image: its wheel (and llama.cpp's server) built and published first where the index lacks them,
the base, the engine build, the size against its target, the manifest, and the archive for an offline site; or,
with ``--context-only``, the context and the command for another machine's engine.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel import __version__, pipeline
from llamawheel.building import options, planning
from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import ImageError, UsageError
from llamawheel.image import base as image_base
from llamawheel.image import context as image_context
from llamawheel.image import foreign
from llamawheel.image.engine import Engine
from llamawheel.mirror import profiles
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.pipeline import server
from llamawheel.publish import index
from llamawheel.recipe import catalog, platforms
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.recipe.variant import cuda_version_of
from llamawheel.wheel.distmeta import WheelName

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


def _show_build(line: str) -> None:
    if re.match(r"^(STEP \d+/\d+|\[\d+/\d+\]|Step \d+/\d+|#\d+ \[|COMMIT|Successfully|llama_cpp \d)", line.strip()):
        log.info(line.strip())


def _engine_build(engine: Engine, wheel: image_context.IndexedWheel, mirror: MirrorProfile, base_image: str,
                  tags: tuple[str, ...]) -> tuple[str, float]:
    """Write the context into a temporary folder and build it; the previous images under these names go.
    Returns the new image's id and the seconds the build took."""
    work = paths.images_dir()
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / f"build-{wheel.variant}.log"
    log_file.unlink(missing_ok=True)
    pip = image_context.pip_wheel(mirror)
    replaced = {engine.image_id(t) for t in tags}  # "" for a name not there yet
    with tempfile.TemporaryDirectory(prefix=f"context-{wheel.variant}-", dir=work) as tmp:
        context = Path(tmp) / "context"
        image_context.write_context(wheel, context, pip, image_context.converter_files(mirror))
        log.info(f"building {tags[0]} with {engine.name}: llama-cpp-python {wheel.version} from {wheel.index}")
        started = time.monotonic()
        engine.build(context, tags, image_context.build_args(base_image, mirror, wheel), log_file, _show_build,
                     "" if wheel.platform.native else wheel.platform.debian_arch)
        seconds = time.monotonic() - started
    new_id = engine.image_id(tags[0])
    for old in replaced - {new_id, ""}:
        engine.remove(old)  # the previous build under these names (kept if another name or container uses it)
    return new_id, seconds


def build(
    engine: Engine,
    wheel: image_context.IndexedWheel,
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
    image_context.check_index(wheel)
    server_wheel = ensure_server(wheel, mirror)
    if not wheel.platform.native:
        if base is not None:
            raise UsageError(f"--base: a {wheel.platform.name} image is built from a base llamawheel unpacks "
                             f"(nothing of it can run here), not from {base}", "drop --base")
        base_image, base_seconds = foreign.make_base(engine, mirror, image_base.SUITE, wheel.platform, refresh_base)
        base_from = (f"mmdebstrap {image_base.SUITE} {wheel.platform.debian_arch}, unpacked, from the apt mirror "
                     f"({mirror.name})")
    elif base is None:
        base_image, base_seconds = image_base.make_base(engine, mirror, refresh_base)
        base_from = f"mmdebstrap {image_base.SUITE} from the apt mirror ({mirror.name})"
    else:
        base_image, base_seconds = base, 0.0
        base_from = "registry"
    tags = image_context.tags_for(wheel)
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
        "base_recipe": image_base.base_recipe() if base is None and wheel.platform.native else None, "size_bytes": size,
        "size_target_bytes": target * 1_000_000, "seconds": {"base": round(base_seconds, 1),
                                                             "build": round(build_seconds, 1),
                                                             "total": round(time.monotonic() - started, 1)},
        "ggml_converter": {"from": f"llama-cpp-python {catalog.cpu_recipe().llama_cpp_python.version} sdist",
                           "script": image_context.CONVERTER_SCRIPT,
                           "patches": [{"file": image_context.CONVERTER_PATCH,
                                        "sha256": fileio.sha256_of(image_context.converter_patch())}]},
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

    wheel: image_context.IndexedWheel
    folder: Path
    base: str
    command: list[str]


def context_only(index_root: Path, variant: str, version: str | None, target: Platform, mirror: MirrorProfile,
                 dest: Path, base: str | None) -> Context:
    """``--context-only``: the build context in ``dest`` (a new folder) and the ``docker build`` line for it. Nothing
    is built but llama.cpp's server, when the index lacks it; the wheel must be published already."""
    wheel = image_context.chosen_wheel(index_root, variant, version, target)
    if wheel is None:
        known = ", ".join(image_context.variants_in(index_root)) or "none"
        raise UsageError(f"the {variant} index in {index_root} has no llama-cpp-python wheel for {target.name} "
                         f"(variants there: {known})", "publish one first: llamawheel publish wheels/*.whl")
    if dest.exists():
        raise UsageError(f"{dest} already exists", "pass a folder that does not exist yet")
    image_context.check_index(wheel)
    ensure_server(wheel, mirror)
    image_context.write_context(wheel, dest, image_context.pip_wheel(mirror), image_context.converter_files(mirror))
    if not target.native:  # an unpacked base of the target's (no shell: the Containerfile runs nothing)
        base = foreign.base_ref(image_base.SUITE, target)
    elif not base or base == "registry":
        base = image_base.registry_base(mirror)
    command = ["docker", "build", "-t", image_context.tags_for(wheel)[0]]
    if not target.native:
        command += ["--platform", f"linux/{target.debian_arch}"]
    for key, value in image_context.build_args(base, mirror, wheel).items():
        command += ["--build-arg", f"{key}={value}"]
    return Context(wheel, dest, base, [*command, str(dest)])


def ensure_wheel(index_root: Path, variant: str, mirror: MirrorProfile, version: str | None,
                 target: Platform = X86_64) -> image_context.IndexedWheel:
    """The variant's wheel for ``target`` from the index; when there is none yet, build it and publish it first."""
    found = image_context.chosen_wheel(index_root, variant, version, target)
    if found is not None:
        return found
    if version:
        raise UsageError(f"the {variant} index has no llama-cpp-python {version}")
    log.info(f"the {variant} index in {index_root} has no llama-cpp-python wheel: building and publishing one first")
    if variant != "cpu" and cuda_version_of(variant) is None:
        raise UsageError(f"--variant {variant}: not cpu or cuXY (cu130, cu124, cu118)")
    wheel = pipeline.run(planning.plan_target(variant, _build_options(mirror, index_root, target)))
    index.publish([wheel], index_root=index_root, mirror=mirror)
    found = image_context.chosen_wheel(index_root, variant, target=target)
    if found is None:
        raise ImageError(f"published {wheel.name} but the {variant} index still lists no llama-cpp-python wheel")
    return found


def _build_options(mirror: MirrorProfile, out: Path, target: Platform) -> options.BuildOptions:
    """The options of a build the image needs first: this mirror profile, into ``out``, for ``target``."""
    return options.resolve({"mirror": mirror.name if mirror.name in profiles.available() else str(mirror.path),
                            "out": out, "platform": target.name})


def server_in(wheel: image_context.IndexedWheel) -> str | None:
    """The file name of llama.cpp's server (`llamawheel.pipeline.server`) of ``wheel``'s release and machine in its
    variant's index, or None."""
    for f in index.load_state(wheel.index).files:
        if f.project == server.PROJECT and f.version == wheel.release and \
                platforms.of_tag(WheelName.parse(f.name).platform) == wheel.platform:
            return f.name
    return None


def ensure_server(wheel: image_context.IndexedWheel, mirror: MirrorProfile) -> str:
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
    index.publish([wheel.path, built], index_root=wheel.index.parent,
                  mirror=mirror)
    found = server_in(wheel)
    if found is None:
        raise ImageError(f"published {built.name} but the {wheel.variant} index still lists no llamawheel-server")
    return found
