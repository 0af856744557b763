"""Running subprocesses with their output streamed, logged and kept for errors."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from llamawheel.core.errors import LlamawheelError
from llamawheel.core.redact import redact


class CommandFailed(Exception):
    def __init__(self, cmd: Sequence[str], returncode: int, tail: list[str]) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"{echo(self.cmd)} exited with {returncode}")

    def describe(self) -> str:
        """The command, its return code and its last lines, indented (credentials in them shown as ``***``)."""
        indented = "\n".join("    " + redact(line) for line in self.tail)
        return f"command: {echo(self.cmd)}\nreturn code: {self.returncode}\noutput (last lines):\n{indented}"


def echo(cmd: Sequence[str]) -> str:
    """``cmd`` as a shell line to show or log, with the credentials of any URL in it shown as ``***``."""
    return shlex.join(redact(arg) for arg in cmd)


UNSET = "\0unset"
"""An environment value that removes the variable from the child's environment (see `child_env`)."""


def unset_all(prefix: str) -> dict[str, str]:
    """An environment overlay that removes every variable of this process whose name starts with ``prefix``."""
    return {k: UNSET for k in os.environ if k.startswith(prefix)}


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment with ``env`` laid over it; a variable given as `UNSET` is removed."""
    merged = {**os.environ, **(env or {})}
    return {k: v for k, v in merged.items() if v != UNSET}


def run_streamed(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    keep: int = 80,
) -> list[str]:
    """Run ``cmd``; each output line goes to ``log_file`` (credentials in URLs shown as ``***``) and ``on_line``.

    Returns the last ``keep`` lines; raises `CommandFailed` on a non-zero exit.
    """
    full_env = child_env(env)
    tail: deque[str] = deque(maxlen=keep)
    log = log_file.open("a", encoding="utf-8") if log_file else None
    try:
        if log:
            log.write(f"$ {echo(cmd)}\n")
        proc = subprocess.Popen(
            list(cmd), env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if log:
                log.write(redact(line) + "\n")
            if on_line:
                on_line(line)
        code = proc.wait()
    except FileNotFoundError as exc:
        raise LlamawheelError(f"cannot run {cmd[0]}: {exc}") from None
    finally:
        if log:
            log.close()
    if code != 0:
        raise CommandFailed(cmd, code, list(tail))
    return list(tail)
