"""Downloads through pip, so that pip's own configuration and the mirror profile apply,
with every file checked against a pinned sha256 and recorded with the URL it came from (`provenance`)."""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llamawheel.core import log, proc
from llamawheel.core.errors import DownloadError, NotOnMirror
from llamawheel.mirror import provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched

_SHOWN = re.compile(r"^\s*(Collecting|Downloading|Processing|Saved|Successfully|File was already|ERROR)")


def show_pip_line(line: str) -> None:
    """The lines of pip's output worth a user's eye (what is fetched, what is installed, errors), as
    ``llamawheel: pip: ...``; the rest goes only to logs. Every pip llamawheel runs is shown this way."""
    if _SHOWN.match(line):
        log.info("pip: " + line.strip())


class PipFailed(DownloadError):
    """A ``pip download`` that failed (``result``: the command, its return code and last lines), with pip's own
    verbose log (``log``: where it says which file did not match which hash), for its caller to explain."""

    def __init__(self, result: proc.Result, log_lines: list[str]) -> None:
        super().__init__(f"pip could not download\n{result.describe()}")
        self.result = result
        self.log = log_lines


def _pip_logged(cmd: list[str], dest: Path, mirror: MirrorProfile) -> list[Fetched]:
    """Run a ``pip download`` into ``dest`` with its verbose log kept aside; returns what pip says it resolved,
    each with the URL it came from. A failure is `PipFailed`, with that log."""
    with tempfile.TemporaryDirectory() as tmp:
        pip_log = Path(tmp) / "pip.log"
        done = proc.stream([*cmd, "--log", str(pip_log)], error=DownloadError, what="cannot run pip", check=False,
                           env=mirror.pip_env(), on_line=show_pip_line)
        if not done.ok:
            lines = pip_log.read_text(errors="replace").splitlines() if pip_log.is_file() else []
            raise PipFailed(done, lines)
        text = pip_log.read_text(errors="replace") if pip_log.is_file() else ""
    return provenance.from_pip_log(text, dest)


def _target(python_version: str | None, platforms: Sequence[str]) -> list[str]:
    """pip's options that fetch for CPython ``python_version`` on ``platforms`` (none: for this machine)."""
    if python_version is None:
        return []
    abi = "cp" + python_version.replace(".", "")
    args = ["--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def download(
    requirement_lines: Sequence[str],
    dest: Path,
    mirror: MirrorProfile,
    *,
    binary: bool,
    python_version: str | None = None,
    platforms: Sequence[str] = (),
) -> list[Fetched]:
    """``pip download --require-hashes`` the given ``name==version --hash=...`` lines into ``dest`` (for CPython
    ``python_version`` on ``platforms``: another machine's wheels; None: this machine's); returns each file with its
    URL and sha256. A failure is explained (`DownloadError`, `NotOnMirror`)."""
    try:
        return download_hashed(requirement_lines, dest, mirror, binary=binary, python_version=python_version,
                               platforms=platforms)
    except PipFailed as exc:
        raise _explain(exc.result, mirror) from None


def download_hashed(
    requirement_lines: Sequence[str],
    dest: Path,
    mirror: MirrorProfile,
    *,
    binary: bool,
    python_version: str | None = None,
    platforms: Sequence[str] = (),
) -> list[Fetched]:
    """`download` for CPython ``python_version`` on ``platforms`` (None: this machine), leaving the explaining to
    the caller: a failure is `PipFailed`, with pip's log."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirement_lines) + "\n")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--progress-bar", "off", "-d", str(dest), "-r", str(req), *_target(python_version, platforms),
        ]
        # Only the pinned projects are forced to wheels or to sources: a sdist's build
        # backend (installed by pip to read its metadata) may still come as a wheel.
        names = ",".join(line.split("==")[0].strip() for line in requirement_lines)
        cmd += [f"--only-binary={names}"] if binary else [f"--no-binary={names}"]
        return _pip_logged(cmd, dest, mirror)


def download_for(
    requirements: Sequence[str], dest: Path, mirror: MirrorProfile, *, python_version: str,
    platforms: Sequence[str], constraint_file: Path | None = None, tip: str = "",
) -> list[Fetched]:
    """``pip download`` wheels (only wheels) of ``requirements`` and what they need, as CPython
    ``python_version`` on ``platforms`` would take them, into ``dest`` (files already there are kept); returns
    the files pip resolved, each with its URL and sha256."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--progress-bar", "off",
        "--dest", str(dest), *_target(python_version, platforms),
    ]
    if constraint_file is not None:
        cmd += ["--constraint", str(constraint_file)]
    try:
        return _pip_logged([*cmd, *requirements], dest, mirror)
    except PipFailed as exc:
        index = mirror.pypi_index() or "pip's configured index"
        raise DownloadError(
            f"could not fetch {', '.join(requirements)} for Python {python_version} from {index}\n"
            f"{exc.result.describe()}",
            f"check that the index answers (llamawheel mirrors check {mirror.name}) and offers wheels for Python"
            f" {python_version}" + (f"; {tip}" if tip else ""),
        ) from None


def _explain(failed: proc.Result, mirror: MirrorProfile) -> DownloadError:
    text = "\n".join(failed.tail())
    index = mirror.pypi_index() or "pip's default index"
    if "DO NOT MATCH THE HASHES" in text or ("hash" in text.lower() and "mismatch" in text.lower()):
        return DownloadError(
            f"a file from {index} does not match its pinned sha256: refusing to use it\n{failed.describe()}",
            "the mirror served a different file than the recipe pins; try another --mirror, "
            "or clear pip's cache (pip cache purge) if a download was cut short",
        )
    if re.search(r"No matching distribution|Could not find a version", text):
        return NotOnMirror(
            f"{index} does not offer a pinned package\n{failed.describe()}",
            "the mirror may lag behind PyPI: try another --mirror or the default profile",
        )
    return DownloadError(
        f"download from {index} failed\n{failed.describe()}",
        f"check that {index} is reachable (llamawheel mirrors check {mirror.name}) or choose another --mirror",
    )
