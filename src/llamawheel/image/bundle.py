"""What ``llamawheel index bundle`` carries to an offline site: the private index, the API and UI image archives,
the compose files with an ``.env`` that names the carried images, and the commands to run there (``OFFLINE.txt``).

The index part is `publish.share.bundle`; this module decides what goes in beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import log, paths
from llamawheel.core.errors import UsageError
from llamawheel.image import compose
from llamawheel.image.engine import archive_ref
from llamawheel.publish import share


@dataclass(frozen=True)
class SiteBundle:
    archive: Path
    sha256: str
    commands: list[str]
    """What to run on the offline machine, in the folder both files were copied to (also ``OFFLINE.txt``)."""


def write_bundle(root: Path, out: Path, image_archives: Sequence[Path] = (), ui_archive: Path | None = None
                 ) -> SiteBundle:
    """Bundle the index in ``root`` into ``out`` (plus ``out.sha256``), with the given image archives."""
    archives = [*image_archives, *([ui_archive] if ui_archive else [])]
    refs = [_image_ref(archive) for archive in archives]
    extras = [(archive, f"images/{archive.name}") for archive in archives]
    docker = paths.data_dir("docker")
    extras += [(docker / name, f"compose/{name}") for name in ("compose.yaml", "compose.cpu.yaml")]
    env = {}
    if image_archives:
        env["API_IMAGE"] = refs[0]
    if ui_archive:
        env["UI_IMAGE"] = refs[-1]
    commands = [f"sha256sum -c {out.name}.sha256", f"tar -xzf {out.name}", f"cd {share.BUNDLE_TOP}"]
    commands += [f"podman load -i images/{a.name}   # or: docker load -i images/{a.name}" for a in archives]
    commands += share.bundle_commands(root)
    if env:
        cpu = " -f compose/compose.cpu.yaml" if refs and refs[0].endswith(":cpu") else ""
        # The key is made on the site, not carried: a bundle is copied to many sites, and a key in it is no secret.
        commands.append(compose.SITE_KEY_COMMAND.format(env="compose/.env"))
        commands.append(f"docker compose -f compose/compose.yaml{cpu} --env-file compose/.env up   # models in "
                        "./models, then http://localhost:3000")
    texts = [("OFFLINE.txt", ("On the machine with no network, in the folder you copied both files to:\n"
                              + "".join(f"    {c}\n" for c in commands)).encode())]
    if env:
        texts.append(("compose/.env", "".join(f"{k}={v}\n" for k, v in env.items()).encode()))
    if image_archives and not ui_archive:
        log.warn(f"no --ui-archive: the site pulls llama-gpt's UI ({compose.UI_IMAGE}) from a registry")
    written, digest = share.bundle(root, out, extras, texts)
    return SiteBundle(written, digest, commands)


def _image_ref(archive: Path) -> str:
    """The image name and tag an archive holds; an error that says how to save one with its name."""
    if not archive.is_file():
        raise UsageError(f"{archive}: no such image archive",
                         "write one with llamawheel image --save FILE (or docker save -o FILE IMAGE)")
    ref = archive_ref(archive)
    if not ref:
        raise UsageError(f"{archive} names no image (an OCI or Docker archive with a tag is needed)",
                         "save it with its name: llamawheel image --save FILE, or docker save -o FILE NAME:TAG")
    return ref
