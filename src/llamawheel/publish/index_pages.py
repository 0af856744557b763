"""What a variant index lists, and its HTML pages: PEP 503 (normalized names, ``#sha256=`` on every
link), PEP 592/658/714 attributes (``data-requires-python``, ``data-core-metadata``: not the older
``data-dist-info-metadata``, which Debian 12's pip 23.0 misreads), and the top-level page with the exact pip
command for each variant."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from urllib.parse import quote

from llamawheel.core import log


@dataclass(frozen=True)
class IndexedFile:
    """One wheel the index lists."""

    name: str
    project: str
    """Normalized (PEP 503) project name."""
    version: str
    sha256: str
    size: int
    metadata_sha256: str
    """sha256 of the ``<name>.metadata`` file (the wheel's METADATA, PEP 658)."""
    requires_python: str | None = None
    direct: bool = False
    """Published by name (True), or there because a published wheel needs it (False)."""
    extras: tuple[str, ...] = ()
    """For a direct wheel: the extras whose dependencies the index holds (``server``)."""
    origin: str = ""
    """Where the file came from: the URL a dependency was fetched from, or, for a published wheel, the build that
    made it (its manifest lies beside it in the store)."""

    @property
    def store_path(self) -> str:
        """Where the file lies, relative to the variant folder: written once, never overwritten."""
        return store_path(self.sha256, self.name)


def store_path(sha256: str, name: str) -> str:
    """Where a file of the variant's content store lies, relative to the variant folder (named by its sha256)."""
    return f"files/{sha256}/{name}"


@dataclass(frozen=True)
class VariantState:
    """Everything one generation of a variant's pages lists (saved beside the pages as JSON)."""

    variant: str
    files: tuple[IndexedFile, ...] = ()
    python_versions: tuple[str, ...] = ()

    def projects(self) -> dict[str, list[IndexedFile]]:
        out: dict[str, list[IndexedFile]] = {}
        for f in sorted(self.files, key=lambda f: (f.project, f.name)):
            out.setdefault(f.project, []).append(f)
        return out

    def to_json(self) -> str:
        data = {"schema": 1, "variant": self.variant, "python_versions": list(self.python_versions),
                "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.name)]}
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VariantState:
        data = json.loads(text)
        files = tuple(
            IndexedFile(**{**f, "extras": tuple(f.get("extras", ()))}) for f in data["files"]
        )
        return cls(variant=data["variant"], files=files, python_versions=tuple(data.get("python_versions", ())))


def _page(title: str, body: Iterable[str]) -> str:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta name="pypi:repository-version" content="1.0">',
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>{html.escape(title)}</h1>",
        *body,
        "  </body>",
        "</html>",
    ]
    return "\n".join(lines) + "\n"


def project_page(project: str, files: Sequence[IndexedFile]) -> str:
    """``simple/<project>/index.html``: one link per file, into the store two levels up."""
    links = []
    for f in sorted(files, key=lambda f: f.name):
        href = f"../../{quote(f.store_path)}#sha256={f.sha256}"
        attrs = [f'href="{html.escape(href)}"']
        if f.requires_python:
            attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
        # PEP 714's name only. pip 23.0 (Debian 12's) reads the older data-dist-info-metadata, then wants the
        # Name in the metadata file spelled as the requirement was ("typing-extensions" vs typing_extensions)
        # and refuses the file; pip 23.2+ reads data-core-metadata and compares canonical names.
        attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
        links.append(f"    <a {' '.join(attrs)}>{html.escape(f.name)}</a><br>")
    return _page(f"Links for {project}", links)


def root_page(projects: Iterable[str]) -> str:
    """``simple/index.html``: every project, by its normalized name."""
    return _page("Simple index", [f'    <a href="{quote(p)}/">{html.escape(p)}</a><br>' for p in sorted(projects)])


def install_commands(state: VariantState, index_url: str) -> list[str]:
    """The pip commands for the variant's directly published projects (pinned ones when several builds)."""
    out: list[str] = []
    by_project: dict[str, list[IndexedFile]] = {}
    for f in state.files:
        if f.direct:
            by_project.setdefault(f.project, []).append(f)
    if "$" in index_url:  # a shell variable ($PWD): quoted, so a folder name with spaces survives
        index_url = f'"{index_url}"'
    for project, files in sorted(by_project.items()):
        extras = sorted({e for f in files for e in f.extras})
        spec = f"{project}[{','.join(extras)}]" if extras else project
        out.append(f'pip install --index-url {index_url} "{spec}"')
        versions = sorted({f.version for f in files})
        if len(versions) > 1:
            out += [f'pip install --index-url {index_url} "{spec}=={v}"' for v in versions]
    return out


def top_page(states: Sequence[VariantState], base_url: str, note: str = "") -> str:
    """The index folder's ``index.html``: each variant, what it holds and how to install from it."""
    body = [
        "    <p>One index per variant. Each holds the wheels and every wheel they need at install time,",
        "    so pip needs no other index and no network.</p>",
    ]
    if note:
        body.append(f"    <p>{html.escape(note)}</p>")
    body += [
        "    <p>Over HTTP: serve this folder (<code>llamawheel index serve --host 0.0.0.0 --port 8080</code>) and",
        "    use <code>--index-url http://HOST:8080/VARIANT/simple</code> instead, on a trusted network: beyond one,"
        " put a real web server (TLS, authentication) in front.</p>",
    ]
    for state in states:
        url = f"{base_url}/{quote(state.variant)}/simple"
        size = log.human_size(sum(f.size for f in state.files))
        pythons = ", ".join(state.python_versions) or "not fetched (published with --no-closure)"
        body += [
            f'    <h2><a href="{quote(state.variant)}/simple/">{html.escape(state.variant)}</a></h2>',
            f"    <p>{len(state.files)} wheels, {size}; dependencies for Python {html.escape(pythons)}.</p>",
            *(f"    <pre>{html.escape(c)}</pre>" for c in install_commands(state, url)),
        ]
    return _page("llamawheel index", body)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str]] = []
        self._open: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = {k: v or "" for k, v in attrs}
            self._open["#text"] = ""
            self.links.append(self._open)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["#text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._open = None


def parse_links(text: str) -> list[dict[str, str]]:
    """Every ``<a>`` of a page: its attributes (unescaped) and its text under ``#text``."""
    parser = _Links()
    parser.feed(text)
    parser.close()
    return parser.links
