"""The llama-cpp-python source: fetched through the mirror, checked against the
recipe's sha256 and cached. Each build unpacks it afresh (its CMake install writes
into the source tree, so a reused tree would leak one variant's libraries into the next)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from llamawheel.core import fileio, log, paths
from llamawheel.core.compat import extract_all
from llamawheel.core.errors import DownloadError
from llamawheel.mirror import pipfetch, provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.recipe.model import Sdist


def sdist_file_name(sdist: Sdist) -> str:
    return f"{sdist.name.replace('-', '_')}-{sdist.version}.tar.gz"


def fetch(sdist: Sdist, mirror: MirrorProfile) -> Path:
    """Return the cached sdist, downloading it first if needed."""
    final = paths.sdists_dir() / sdist_file_name(sdist)
    with fileio.locked(final):
        if final.is_file() and fileio.sha256_of(final) == sdist.sha256:
            return final
        log.info(f"fetching {sdist.name} {sdist.version} source ({mirror.name} mirror)")
        with fileio.new_dir(paths.sdists_dir() / f".dl-{sdist.version}") as tmp:
            line = f"{sdist.name}=={sdist.version} --hash=sha256:{sdist.sha256}"
            files = [f for f in pipfetch.download([line], tmp, mirror, binary=False)
                     if f.path.name.endswith(".tar.gz")]
            if not files:
                raise DownloadError(f"pip fetched no .tar.gz for {sdist.name} {sdist.version}")
            if files[0].sha256 != sdist.sha256:  # pip checked it too; never trust one check alone
                raise DownloadError(
                    f"{files[0].path.name} has sha256 {files[0].sha256}, the recipe pins {sdist.sha256}",
                    "the mirror served a different file: use another --mirror",
                )
            final.unlink(missing_ok=True)
            files[0].path.rename(final)
            provenance.record_origins(final.parent, [Fetched(final, files[0].url, files[0].sha256, files[0].size)])
        shutil.rmtree(paths.sdists_dir() / f".dl-{sdist.version}", ignore_errors=True)
    return final


def describe(sdist: Sdist, archive: Path | None, local_tree: Path | None) -> dict[str, Any]:
    """The manifest's ``source`` (the pinned sdist: name, version, sha256, file, the URL it was fetched from; or
    the local tree built) and, for the sdist, its ``fetched.source`` entry."""
    if archive is None:
        return {"source": {"local_tree": str(local_tree)}}
    origin = provenance.read_origins(archive.parent).get(archive.name) or provenance.described(archive, "")
    return {"source": {"name": sdist.name, "version": sdist.version, "sha256": sdist.sha256, "file": archive.name,
                       "url": origin.url},
            "fetched": {"source": provenance.to_json([origin])}}


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into the empty-or-absent folder ``dest`` (its top folder stripped)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        extract_all(tar, dest)
    tops = list(dest.iterdir())
    if len(tops) == 1 and tops[0].is_dir():
        for item in tops[0].iterdir():
            item.rename(dest / item.name)
        tops[0].rmdir()
    return dest
