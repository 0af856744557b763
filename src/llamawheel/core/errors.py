"""Every fatal error llamawheel knows, each with its own exit code and a tip.

`cli.main` catches `LlamawheelError` once and prints ``ERROR <message>`` and
``TIP <tip>``; a traceback is printed only with ``--traceback``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LlamawheelError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, tip: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tip = tip


class UsageError(LlamawheelError):
    """Bad command-line input (an unknown version, architecture, option value)."""

    exit_code = 2


class RecipeError(LlamawheelError):
    """A recipe file is missing, malformed, or names something unknown."""

    exit_code = 3


class MirrorError(LlamawheelError):
    """A mirror profile is malformed or a mirror cannot be reached."""

    exit_code = 4


class StoreError(MirrorError):
    """A compile cache store or a build farm cannot be reached, or refuses the credentials."""


class DownloadError(LlamawheelError):
    """A download failed (network, mirror) or its hash did not match the pin."""

    exit_code = 5


class NotOnMirror(DownloadError):
    """The index answered but does not offer a pinned file."""


class ToolchainError(LlamawheelError):
    """A CUDA toolchain could not be provisioned or is incomplete."""

    exit_code = 6


class BuildError(LlamawheelError):
    """The compile failed; the message points at the full log."""

    exit_code = 7


class RepairError(LlamawheelError):
    """The built wheel could not be turned into a clean, relocatable wheel."""

    exit_code = 8


class VerifyError(LlamawheelError):
    """A wheel failed verification: it is not what its name claims."""

    exit_code = 9


class PublishError(LlamawheelError):
    """The wheel index refused a publish (a different file under a published name), or an index
    operation (publish, bundle, upload) failed."""

    exit_code = 10


class IndexCheckError(PublishError):
    """``llamawheel index check`` found a problem: a hash, a link or a metadata file is wrong."""


class GpuChecksSkipped(LlamawheelError):
    """``llamawheel verify`` found no GPU: the static checks and the CPU half ran, the GPU checks did not.
    Its own exit code, so that a skip is never read as a pass."""

    exit_code = 11


class RuntimeCheckError(LlamawheelError):
    """The installed wheel failed a runtime check: it did not load, did not offload every layer, did not
    use cuBLAS, or its CPU and GPU results disagree; or this machine cannot run it (driver, architecture)."""

    exit_code = 12


class ImageError(LlamawheelError):
    """The runtime image could not be built, checked or saved (no engine, no base, a failed build step)."""

    exit_code = 13


class WheelError(LlamawheelError):
    """A file is not a wheel llamawheel can read: a bad file name, not a zip archive, no (or several)
    METADATA, or METADATA that names another project than the file name. Every command says so the same way."""

    exit_code = 14


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{match[0]}"?)' if match else ""
