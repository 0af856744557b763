"""``llamawheel index check``: verify an index as pip will see it, reading the pages, not trusting any
record of what was published. Every link must resolve, carry ``#sha256=`` of the file's bytes and PEP
658/714 attributes matching a ``.metadata`` file equal to the METADATA inside the wheel; projects must be
listed under their normalized names. Each lock beside the pages (``pylock.cp311-x86_64.toml``, see `closure`)
must name only files the pages link, with their sha256 and size. Files in the store that no page links to are
listed as orphans (what a killed publish leaves; harmless, and removed by the next publish), not as problems.

A check takes no lock: run during a publish, it reads one generation of pages throughout, but may find a
file missing that the publish removed after swapping in its new pages; run it again then."""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

from llamawheel.core.errors import IndexCheckError, PublishError
from llamawheel.core.fileio import sha256_of
from llamawheel.publish import closure
from llamawheel.publish.index import variant_dirs
from llamawheel.publish.index_pages import parse_links
from llamawheel.wheel import distmeta


@dataclass
class CheckReport:
    root: Path
    variants: list[str] = field(default_factory=list)
    files: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    locks: int = 0

    def render(self) -> str:
        lines = [f"{self.root}: {len(self.variants)} variant(s) ({', '.join(self.variants) or 'none'}),"
                 f" {self.files} linked file(s) checked"]
        lines += [f"PROBLEM {p}" for p in self.problems]
        lines += [f"orphan  {o} (no page links to it; the next publish removes it)" for o in self.orphans]
        if not self.problems:
            lines.append("ok: every link resolves, every sha256 and metadata file matches"
                         + (f"; {self.locks} lock(s) match the files" if self.locks else ""))
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if self.problems:
            raise IndexCheckError(
                f"{len(self.problems)} problem(s) in the index at {self.root} (the PROBLEM lines above)",
                "publish the affected wheels again: a missing or damaged file is stored afresh from the good copy",
            )


def check(root: Path) -> CheckReport:
    """Verify every page, link, sha256 and metadata file of the index at ``root``; list orphans."""
    report = CheckReport(root)
    dirs = variant_dirs(root)
    if not dirs:
        report.problems.append(f"{root}: no index here (no <variant>/simple/ folder)")
    for vdir in dirs:
        report.variants.append(vdir.name)
        _check_variant(vdir, report)
    return report


def _check_variant(vdir: Path, report: CheckReport) -> None:
    where = vdir.name
    if not (vdir / "simple").is_dir():
        report.problems.append(f"{where}/simple points to {os.readlink(vdir / 'simple')}, which is missing")
        return
    simple = (vdir / "simple").resolve()  # one generation throughout, even if a publish swaps the link meanwhile
    if not (simple / "index.html").is_file():
        report.problems.append(f"{where}/simple/index.html is missing")
        return
    listed = []
    for link in parse_links((simple / "index.html").read_text()):
        name = link.get("#text", "").strip()
        if distmeta.normalize(name) != name:
            report.problems.append(f"{where}/simple/index.html: project name '{name}' is not normalized (PEP 503)")
        if unquote(link.get("href", "")).rstrip("/") != name:
            report.problems.append(f"{where}/simple/index.html: the link for {name} points to {link.get('href')}")
        if not (simple / name / "index.html").is_file():
            report.problems.append(f"{where}/simple/index.html lists {name}, which has no page")
            continue
        listed.append(name)
    for folder in simple.iterdir():
        if folder.is_dir() and folder.name not in listed:
            report.problems.append(f"{where}/simple/{folder.name}/ is not listed in {where}/simple/index.html")
    referenced: set[str] = set()
    for project in listed:
        page = simple / project / "index.html"
        for link in parse_links(page.read_text()):
            _check_link(vdir, project, link, report, referenced)
    for lock in sorted(simple.glob("pylock.*.toml")):
        _check_lock(vdir, lock, report, referenced)
    store = vdir / "files"
    for path in sorted(store.rglob("*")) if store.is_dir() else []:
        if path.is_file() and path.relative_to(vdir).as_posix() not in referenced:
            report.orphans.append(path)


def _check_lock(vdir: Path, path: Path, report: CheckReport, referenced: set[str]) -> None:
    where = f"{vdir.name}/simple/{path.name}"
    try:
        lock = closure.read_lock(path)
    except PublishError as exc:
        report.problems.append(f"{where}: {exc.message}")
        return
    report.locks += 1
    for f in lock.files:
        stored = vdir / f.store_path
        if f.store_path not in referenced:
            report.problems.append(f"{where}: locks {f.file} (sha256 {f.sha256}), which no page links to")
        if not stored.is_file():
            report.problems.append(f"{where}: locks {f.store_path}, which is missing")
            continue
        actual = sha256_of(stored)
        if actual != f.sha256:
            report.problems.append(f"{where}: {f.file} does not match the lock (lock says {f.sha256}, file has"
                                   f" {actual})")
        elif f.size and stored.stat().st_size != f.size:
            report.problems.append(f"{where}: {f.file} is {stored.stat().st_size} bytes, the lock says {f.size}")


def _check_link(vdir: Path, project: str, link: dict[str, str], report: CheckReport, referenced: set[str]) -> None:
    where = f"{vdir.name}/simple/{project}/index.html"
    href = link.get("href", "")
    url, _, fragment = href.partition("#")
    rel = unquote(urlparse(urljoin(f"http://index/simple/{project}/", url)).path).lstrip("/")
    rel = posixpath.normpath(rel)
    name = posixpath.basename(rel)
    path = vdir / rel
    if not fragment.startswith("sha256="):
        report.problems.append(f"{where}: the link to {name} has no #sha256= fragment")
    if not path.is_file():
        report.problems.append(f"{where}: links to {rel}, which is missing")
        return
    report.files += 1
    referenced.update({rel, rel + ".metadata", rel + ".json"})
    actual = sha256_of(path)
    listed = fragment.removeprefix("sha256=")
    if fragment.startswith("sha256=") and listed != actual:
        report.problems.append(f"{where}: {rel} does not match its sha256 (page says {listed}, file has {actual})")
        return
    try:
        meta = distmeta.read(path)
    except PublishError as exc:
        report.problems.append(f"{where}: {rel}: {exc.message}")
        return
    if meta.project != project:
        report.problems.append(f"{where}: {name} belongs to project {meta.project}, not {project}")
    if (link.get("data-requires-python") or None) != meta.requires_python:
        report.problems.append(
            f"{where}: {name}: data-requires-python is {link.get('data-requires-python')!r},"
            f" its METADATA says {meta.requires_python!r}"
        )
    _check_metadata(where, path, rel, meta.raw, link, report)


def _check_metadata(
    where: str, path: Path, rel: str, raw: bytes, link: dict[str, str], report: CheckReport
) -> None:
    attrs = {k: link[k] for k in ("data-dist-info-metadata", "data-core-metadata") if k in link}
    if not attrs:
        report.problems.append(f"{where}: the link to {path.name} has no PEP 658 metadata attribute")
        return
    metadata = path.with_name(path.name + ".metadata")
    if not metadata.is_file():
        report.problems.append(f"{where}: {rel}.metadata is missing")
        return
    data = metadata.read_bytes()
    digest = f"sha256={hashlib.sha256(data).hexdigest()}"
    for key, value in attrs.items():
        if value != digest:
            report.problems.append(
                f"{where}: {rel}.metadata does not match {key} (page says {value}, file has {digest})"
            )
    if data != raw:
        report.problems.append(f"{where}: {rel}.metadata differs from the METADATA inside the wheel")


