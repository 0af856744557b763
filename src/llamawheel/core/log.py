"""What llamawheel tells the user while it works, in the user's words."""

from __future__ import annotations

import sys
import time

from llamawheel.core.redact import redact


def info(message: str) -> None:
    """Tell the user what is happening (credentials in URLs are shown as ``***``, see `redact`)."""
    print(f"llamawheel: {redact(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"llamawheel: WARNING {redact(message)}", file=sys.stderr, flush=True)


def escaped(text: str) -> str:
    """``text`` safe for one line of a terminal or a log: every character that is not printable (a newline, an
    ANSI escape, a DEL, a C1 control) shown as ``\\xNN`` (``\\uNNNN`` above U+00FF), and a backslash doubled
    (a sent ``\\x1b`` cannot pass for an escaped one)."""
    return "".join(_escaped_char(c) for c in text)


def _escaped_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c.isprintable():
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_time(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
