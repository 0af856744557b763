"""The wheelhouse of a build: the source's build requirements (scikit-build-core), CMake, ninja and a current
pip, as wheels for the Python that builds (a build root's, or this machine's). Nothing is resolved at build
time: every file comes from the hash-pinned list ``recipes/pins/tools.toml`` (one entry per project and
version, with the file name and sha256 of each wheel for each platform, x86_64 and aarch64 where the index
offers them), fetched with ``pip download --require-hashes --no-deps`` through the mirror profile and checked
again after the download. A mirror that serves other bytes under a pinned name is refused with the file, the
expected and the actual sha256. The build's pip reads only this folder, with no index (and, in a root, the
network cut). The image's pip (run once at image build time) comes from the same list (`pinned_pip`).

``python scripts/pin-wheels.py --tools`` refreshes the list: it resolves the requirements for every Python and
platform the list names and writes every file's sha256."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from llamawheel.core import datafile, fileio, log, paths, records
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import DownloadError, RecipeError
from llamawheel.mirror import pipfetch, provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.mirror.provenance import Fetched
from llamawheel.toolchain.buildroot import HOST, Suite
from llamawheel.wheel.requirements import platforms_for, supported_tags, target_environment, unmet_requirements

BUILD_TOOLS = ("pip", "cmake>=3.21", "ninja")
"""Beside the sdist's own build requirements: a pip that knows ``-C`` (Debian 11's is 20.3), and the CMake and
ninja that scikit-build-core asks for when the root has none (Debian 11's CMake 3.18 is too old)."""
PINS_FILE = "tools.toml"
"""The pinned build tools, in ``recipes/pins/``."""
REFRESH_TIP = "refresh the pins with: python scripts/pin-wheels.py --tools (then review and commit the file)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(value: str) -> str | None:
    return None if _SHA256.fullmatch(value) else f"'{value}' is not a lowercase hex sha256"


def _wheel_name(value: str) -> str | None:
    try:
        parse_wheel_filename(value)
    except ValueError as exc:
        return f"not a wheel file name ({exc})"
    return None


@dataclass(frozen=True)
class PinnedFile:
    """One wheel file of a pinned release."""

    file: str = field(metadata={"check": _wheel_name})
    """The wheel's file name (its tags say which Pythons and platforms take it)."""
    sha256: str = field(metadata={"check": _sha256})
    """The sha256 of that file's bytes."""


@dataclass(frozen=True)
class ToolPin:
    """One project at one exact version, with every file of it the wheelhouse may take."""

    name: str
    """The project name (``cmake``)."""
    version: str
    """The exact version."""
    files: tuple[PinnedFile, ...]
    """The files: one per platform (a pure-Python wheel has one for all)."""
    requires_python: str = ""
    """The release's Requires-Python (empty: any)."""

    def fits(self, python: str) -> bool:
        try:
            return not self.requires_python or SpecifierSet(self.requires_python).contains(python)
        except InvalidSpecifier:
            return True

    def files_for(self, python: str, platforms: tuple[str, ...]) -> list[PinnedFile]:
        """The files CPython ``python`` on ``platforms`` can take ([] when none, or its Requires-Python says no)."""
        if not self.fits(python):
            return []
        supported = supported_tags(python, platforms)
        return [f for f in self.files if parse_wheel_filename(f.file)[3] & supported]


@dataclass(frozen=True)
class ToolPins:
    """``recipes/pins/tools.toml``: what was pinned, for which targets, and the pins."""

    requirements: tuple[str, ...]
    """The requirements the pins were resolved from (the sdist's build requirements and `BUILD_TOOLS`)."""
    pythons: tuple[str, ...]
    """The Python versions they were resolved for."""
    arches: tuple[str, ...]
    """The machines they were resolved for (``x86_64``, ``aarch64``)."""
    wheels: tuple[ToolPin, ...] = ()
    """The pinned releases."""

    def by_file(self) -> dict[str, str]:
        """Every pinned file name with its sha256."""
        return {f.file: f.sha256 for w in self.wheels for f in w.files}

    def select(self, python: str, platforms: tuple[str, ...]) -> list[tuple[ToolPin, list[PinnedFile]]]:
        """For each project, its newest pinned release CPython ``python`` on ``platforms`` can take, with the
        files of it that fit."""
        best: dict[str, tuple[ToolPin, list[PinnedFile]]] = {}
        for pin in self.wheels:
            files = pin.files_for(python, platforms)
            key = str(canonicalize_name(pin.name))
            if files and (key not in best or Version(pin.version) > Version(best[key][0].version)):
                best[key] = (pin, files)
        return [best[k] for k in sorted(best)]


def pins_path() -> Path:
    return paths.recipes_dir() / "pins" / PINS_FILE


@cache
def _load(path: Path) -> ToolPins:
    return records.load(ToolPins, datafile.load(path, RecipeError))


def load_pins(path: Path | None = None) -> ToolPins:
    """The pinned build tools (``recipes/pins/tools.toml``, or ``path``), validated."""
    return _load((path or pins_path()).resolve())


def build_requirements(source: Path) -> list[str]:
    """``[build-system] requires`` of the source tree (scikit-build-core for llama-cpp-python)."""
    pyproject = source / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text()) if pyproject.is_file() else {}
    return [str(r) for r in data.get("build-system", {}).get("requires", ["setuptools", "wheel"])]


def host_target() -> Suite:
    """This machine as a wheelhouse target: its Python and glibc."""
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17"
    major, minor = (int(n) for n in glibc.split()[-1].split(".")[:2])
    return Suite(HOST, "", (major, minor), 0, f"{sys.version_info.major}.{sys.version_info.minor}")


# ----------------------------------------------------------------------------- fetching pinned files


@dataclass(frozen=True)
class HashMismatch:
    """A file whose bytes are not the pinned ones."""

    file: str
    expected: tuple[str, ...]
    actual: str
    url: str = ""

    def describe(self) -> str:
        where = f" (from {self.url})" if self.url else ""
        return f"{self.file}{where}: expected sha256 {' or '.join(self.expected)}, got {self.actual}"


def mismatches_in_pip_output(lines: list[str]) -> list[HashMismatch]:
    """pip's own report of files that do not match ``--hash`` (``name==1.0 from URL:`` / ``Expected sha256 A`` /
    ``or B`` / ``Got C``)."""
    found: list[HashMismatch] = []
    url = ""
    expected: list[str] = []
    for raw in lines:
        line = raw.strip()
        if match := re.match(r"^\S+ from (\S+?)(?: \(from .*\))?:$", line):
            url, expected = match.group(1), []
        elif match := re.match(r"^Expected sha256 ([0-9a-f]{64})$", line):
            expected = [match.group(1)]
        elif (match := re.match(r"^or ([0-9a-f]{64})$", line)) and expected:
            expected.append(match.group(1))
        elif (match := re.match(r"^Got\s+([0-9a-f]{64})$", line)) and expected:
            name = url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            found.append(HashMismatch(name, tuple(expected), match.group(1), url))
            expected = []
    return found


def refuse_mismatches(mismatches: list[HashMismatch], what: str, tip: str) -> None:
    if mismatches:
        lines = "\n".join(f"    {m.describe()}" for m in mismatches)
        raise DownloadError(
            f"{len(mismatches)} file(s) of {what} do not match their pinned sha256, refusing them:\n{lines}", tip)


def download_pinned(
    lines: list[str], dest: Path, mirror: MirrorProfile, *, python_version: str | None, platforms: tuple[str, ...],
    expected: dict[str, tuple[str, ...]], what: str,
) -> list[Fetched]:
    """``pip download --require-hashes --no-deps`` of the ``name==version --hash=...`` lines, wheels only, into
    ``dest`` (as CPython ``python_version`` on ``platforms``, or this machine when None; `pipfetch.download_hashed`),
    then every file pip took checked against ``expected`` (file name -> allowed sha256s): a file of other bytes is
    refused, naming it with the expected and the actual sha256."""
    index = mirror.pypi_index() or "pip's configured index"
    tip = (f"the index ({index}) serves other bytes than were pinned: try another --mirror, or clear pip's cache"
           f" (pip cache purge) if a download was cut short; if the project re-published its files, {REFRESH_TIP}")
    try:
        fetched = pipfetch.download_hashed(lines, dest, mirror, binary=True, python_version=python_version,
                                           platforms=platforms)
    except pipfetch.PipFailed as exc:
        refuse_mismatches(mismatches_in_pip_output([*exc.result.tail(), *exc.log]), what, tip)
        raise DownloadError(f"could not fetch the pinned files of {what} from {index}\n{exc.result.describe()}",
                            f"check that the index answers (llamawheel mirrors check {mirror.name}); the mirror"
                            f" may lack a pinned release: try another --mirror, or {REFRESH_TIP}") from None
    bad = [HashMismatch(f.path.name, expected.get(f.path.name, ()), f.sha256, f.url) for f in fetched
           if f.sha256 not in expected.get(f.path.name, ())]
    refuse_mismatches(bad, what, tip)
    return fetched


def fetch_pins(
    pins: ToolPins, wanted: list[str], folder: Path, mirror: MirrorProfile, *, python: str, arch: str,
    platforms: tuple[str, ...], what: str, tip: str,
) -> list[Fetched]:
    """The pinned files CPython ``python`` on ``platforms`` takes, into ``folder`` (which then holds nothing else),
    checked to cover ``wanted`` under that Python's markers."""
    chosen = pins.select(python, platforms)
    lines = [f"{pin.name}=={pin.version} " + " ".join(f"--hash=sha256:{f.sha256}" for f in files)
             for pin, files in chosen]
    expected: dict[str, tuple[str, ...]] = {}
    for _, files in chosen:
        for f in files:
            expected[f.file] = (*expected.get(f.file, ()), f.sha256)
    keep = set(expected)
    for stray in folder.glob("*.whl"):  # a file from an earlier, other list: the build's pip must not see it
        if stray.name not in keep:
            stray.unlink()
    fetched = download_pinned(lines, folder, mirror, python_version=python, platforms=platforms,
                              expected=expected, what=what) if lines else []
    missing = unmet_requirements(folder, wanted, (), target_environment(python, arch),
                                 supported_tags(python, platforms))
    if missing:
        raise DownloadError(
            f"the pinned build tools ({pins_path()}) do not cover {', '.join(missing)} for Python {python} on {arch}",
            f"{REFRESH_TIP}; {tip}" if tip else REFRESH_TIP,
        )
    provenance.record_origins(folder, fetched)
    return fetched


def fetch(source: Path, suite: Suite, mirror: MirrorProfile, arch: str = "x86_64") -> tuple[Path, list[Fetched]]:
    """The wheelhouse for building ``source`` in a ``suite`` root, filled through ``mirror`` from the pinned list;
    returns the folder and the files in it this build's pip will take (each with its URL and sha256)."""
    pins = load_pins()
    key = fileio.sha256_of(pins_path())[:12]
    folder = paths.cache_dir() / "wheelhouse" / f"{suite.name}-py{suite.python}-{arch}-{key}"
    wanted = [*build_requirements(source), *BUILD_TOOLS]
    platforms = platforms_for([f"manylinux_2_{suite.glibc[1]}_{arch}"])
    where = "this machine" if suite.name == HOST else f"the {suite.name} root"
    log.info(f"fetching the pinned build requirements for {where} (Python {suite.python}, {arch}): "
             f"{', '.join(wanted)} ({mirror.name} mirror)")
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.locked(folder):
        files = fetch_pins(pins, wanted, folder, mirror, python=suite.python, arch=arch, platforms=platforms,
                           what="the build requirements", tip="or build on this machine as it is: --build-env host")
    return folder, files


def pinned_pip(mirror: MirrorProfile, dest: Path, python: str = "3.11") -> Path:
    """pip itself for CPython ``python`` (the image's: Debian 12's 3.11), as the newest pinned wheel that runs
    there (pure Python: one file for every platform), fetched into ``dest`` (kept there: a later call with the
    same pin needs no network) and checked against its sha256."""
    pins = load_pins()
    releases = [w for w in pins.wheels if canonicalize_name(w.name) == "pip" and w.fits(python)]
    if not releases:
        raise RecipeError(f"{pins_path()} pins no pip for Python {python}", REFRESH_TIP)
    pin = max(releases, key=lambda w: Version(w.version))
    files = [f for f in pin.files if parse_wheel_filename(f.file)[3] & supported_tags(python, ("any",))]
    if not files:
        raise RecipeError(f"{pins_path()}: pip {pin.version} has no pure-Python wheel pinned", REFRESH_TIP)
    wheel = dest / files[0].file
    if wheel.is_file() and fileio.sha256_of(wheel) == files[0].sha256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pip-", dir=dest) as tmp:
        line = f"pip=={pin.version} --hash=sha256:{files[0].sha256}"
        download_pinned([line], Path(tmp), mirror, python_version=None, platforms=(),
                        expected={files[0].file: (files[0].sha256,)}, what=f"pip {pin.version}")
        fileio.move_file(Path(tmp) / files[0].file, wheel)
    return wheel
