"""Carrying an index elsewhere: ``index bundle`` (one .tar.gz plus its .sha256, for a disk to an offline
site), ``index serve`` (a stdlib HTTP server on a chosen address, for a trusted network: it serves the pages and
the files they link, nothing else) and ``index upload`` (twine, to an index server that already exists;
credentials only from twine's own places)."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import os
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit

from llamawheel.core import fileio, log, proc
from llamawheel.core.errors import PublishError, UsageError
from llamawheel.publish.index import load_state, publish_lock, variant_dirs
from llamawheel.publish.index_check import check
from llamawheel.publish.index_pages import install_commands, top_page

BUNDLE_TOP = "llamawheel-index"
"""The folder an archive unpacks into."""


def bundle(root: Path, out: Path, extras: Sequence[tuple[Path, str]] = (),
           texts: Sequence[tuple[str, bytes]] = ()) -> tuple[Path, str]:
    """Write the index as one ``.tar.gz`` (current pages and the files they link, nothing else) plus
    ``<out>.sha256`` in sha256sum format. ``extras`` (a file here, its name inside ``llamawheel-index/``) and
    ``texts`` (a name inside, its bytes) go in too: image archives, compose files, the offline commands. Refuses
    an index that ``check`` finds problems in."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with publish_lock(root):
        report = check(root)
        if report.problems:
            print(report.render(), file=sys.stderr)
            report.raise_if_failed()
        states = [(vdir, load_state(vdir)) for vdir in variant_dirs(root)]
        with fileio.new_file(out, durable=True, suffix=".tar.gz") as tmp:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                note = "Commands assume you run them in the folder where you unpacked this archive."
                page = top_page([s for v, s in states if v != root], f"file://$PWD/{BUNDLE_TOP}", note).encode()
                _add_bytes(tar, f"{BUNDLE_TOP}/index.html", page)
                for vdir, state in states:
                    pages = (vdir / "simple").resolve()
                    for path in sorted(pages.rglob("*")):
                        _add(tar, path, f"{BUNDLE_TOP}/{vdir.name}/simple/{path.relative_to(pages).as_posix()}")
                    for f in sorted(state.files, key=lambda f: f.store_path):
                        for suffix in ("", ".metadata", ".json"):
                            path = vdir / (f.store_path + suffix)
                            if path.is_file():
                                _add(tar, path, f"{BUNDLE_TOP}/{vdir.name}/{f.store_path}{suffix}")
                for path, name in extras:
                    log.info(f"bundling {path} as {BUNDLE_TOP}/{name} ({log.human_size(path.stat().st_size)})")
                    _add(tar, path, f"{BUNDLE_TOP}/{name}")
                for name, data in texts:
                    _add_bytes(tar, f"{BUNDLE_TOP}/{name}", data)
            digest = fileio.sha256_of(tmp)
    fileio.write_file(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n".encode(), durable=True)
    return out, digest


def _commands(root: Path, base_url: str) -> list[str]:
    return [
        command
        for vdir in variant_dirs(root)
        if vdir != root
        for command in install_commands(load_state(vdir), f"{base_url}/{vdir.name}/simple")
    ]


def bundle_commands(root: Path) -> list[str]:
    """The pip commands for an unpacked bundle, run inside the folder it unpacks into (``cd llamawheel-index``)."""
    return _commands(root, "file://$PWD")


def serve_commands(root: Path, url: str) -> list[str]:
    """The pip commands for the index served at ``url``."""
    return _commands(root, url)


def _tarinfo(name: str, size: int, mtime: float, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, int(mtime)
    info.mode = 0o755 if is_dir else 0o644
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data), time.time()), io.BytesIO(data))


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    stat = path.stat()
    if path.is_dir():
        tar.addfile(_tarinfo(name, 0, stat.st_mtime, is_dir=True))
        return
    with path.open("rb") as fh:
        tar.addfile(_tarinfo(name, stat.st_size, stat.st_mtime), fh)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The index's pages and the files they link, and nothing else: a folder is served only through its
    ``index.html`` (never listed), a name starting with a dot (``.incoming-*``, ``.generation-*``, the state file)
    is not found, and so is anything whose real path, symlinks followed, is outside the served folder. Each
    request is logged as one line, its non-printable characters escaped (`log.escaped`)."""

    def send_head(self) -> Any:
        if not self._servable():
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")
        return None

    def _servable(self) -> bool:
        """Whether the request names no hidden entry and leads (symlinks followed) nowhere outside the root."""
        if any(part.startswith(".") for part in unquote(urlsplit(self.path).path).split("/")):
            return False
        root = os.path.realpath(self.directory)
        path = self.translate_path(self.path)
        candidates = [path, os.path.join(path, "index.html"), os.path.join(path, "index.htm")]
        return all(_inside(os.path.realpath(c), root) for c in candidates if os.path.lexists(c))

    def log_message(self, format: str, *args: object) -> None:
        log.info(log.escaped(f"{self.address_string()} {format % args}"))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def serve(root: Path, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the index folder over HTTP until interrupted (follows the ``simple`` links)."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder", "publish first (llamawheel publish wheels/*.whl) or pass --index")
    handler = functools.partial(_Handler, directory=str(root))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port or --host") from None
    url = f"http://{host}:{server.server_address[1]}"
    (on_ready or print)(url)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopped serving")


def upload(wheels: Sequence[Path], repository_url: str, skip_existing: bool = False) -> None:
    """``twine upload --repository-url URL`` the wheels; credentials come only from twine's own places."""
    if urlparse(repository_url).password:
        raise UsageError(
            "the repository URL holds a password: it would show in the process list and shell history",
            "give credentials through TWINE_USERNAME/TWINE_PASSWORD, ~/.pypirc or your keyring",
        )
    for wheel in wheels:
        if not wheel.is_file():
            raise UsageError(f"{wheel}: no such file")
    if importlib.util.find_spec("twine") is None:
        raise PublishError(
            "twine is not installed: llamawheel index upload runs twine",
            "pip install 'llamawheel[upload]' (or pip install 'twine>=5') in this environment",
        )
    cmd = [sys.executable, "-m", "twine", "upload", "--repository-url", repository_url]
    cmd += ["--skip-existing"] if skip_existing else []
    proc.run([*cmd, *(str(w) for w in wheels)], error=PublishError, what=f"twine upload to {repository_url} failed",
             tip="credentials come from TWINE_USERNAME/TWINE_PASSWORD, ~/.pypirc or your keyring;"
                 " a file that is already there needs --skip-existing",
             capture=False)  # twine talks to the user (its prompts, its progress) on the terminal
