"""The one place a subprocess starts: every external command llamawheel runs goes through this module.

Each command is echoed to the debug log (``llamawheel.core.proc``; credentials in URLs shown as ``***``), its output
is kept, and a failure is raised as the *caller's* error (a `LlamawheelError` subclass from `core.errors`, so with
its own exit code and tip) whose message is the caller's ``what``, then the command, its return code and its last
lines, indented. A program that is not installed, one that cannot start and a timeout are the caller's error too.

- `run`: a command whose output is captured (or, ``capture=False``, left on the user's terminal); a `Result`.
- `capture`: `run` for the command's standard output; `capture_bytes` the same, as bytes.
- `stream`: a long command whose output lines are shown as they come (``on_line``) and written to a log file.
- `probe`: a short command whose failure is an answer, not an error: a `Result` whatever the return code, or
  ``None`` when it could not run at all (not installed, not startable, timed out).

The environment given is laid over this process's (`child_env`): nothing here replaces a child's whole
environment. Code copied to other machines (``llamawheel.runtime``, ``llamawheel.verify.portable``) imports no
llamawheel and starts its children itself.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamawheel.core.errors import LlamawheelError
from llamawheel.core.redact import redact

_logger = logging.getLogger(__name__)

KEEP = 80
"""How many last lines of a command's output are kept for its error message."""

ErrorClass = type[LlamawheelError]
"""The error a failed command is raised as: the calling stage's own (`BuildError`, `ToolchainError`, ...)."""


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


def _lines(text: str) -> list[str]:
    """``text`` as lines, split at newlines only (a captured text's line ends are already ``\\n``)."""
    return text.removesuffix("\n").split("\n") if text else []


def _decoded(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _describe(cmd: Sequence[str], status: str, tail: list[str] | None) -> str:
    """The command, its end and its last lines, indented (credentials in them shown as ``***``)."""
    if tail is None:
        output = "output: shown above"
    elif not tail:
        output = "output: none"
    else:
        output = "output (last lines):\n" + "\n".join("    " + redact(line) for line in tail)
    return f"command: {echo(cmd)}\n{status}\n{output}"


@dataclass(frozen=True)
class Result:
    """A command that ran to its end. From `stream`, ``stdout`` holds the last ``keep`` lines of its output
    (standard error merged in)."""

    cmd: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    keep: int = KEEP
    captured: bool = True
    """False when the output went to the user's terminal (``run(capture=False)``): nothing of it is here."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def lines(self) -> list[str]:
        """The standard output as lines."""
        return _lines(self.stdout)

    def tail(self) -> list[str]:
        """The last ``keep`` lines that say why it failed: standard error's, or standard output's when standard
        error is empty."""
        text = self.stderr if self.stderr.strip() else self.stdout
        return _lines(text)[-self.keep:] if self.keep > 0 else []

    def describe(self) -> str:
        """The command, its return code and its last lines, indented (credentials in them shown as ``***``)."""
        return _describe(self.cmd, f"return code: {self.returncode}", self.tail() if self.captured else None)

    def check(self, error: ErrorClass, what: str, tip: str | None) -> Result:
        """This result, if the command succeeded; else ``error`` with ``what``, the command, its return code and its
        last lines, and ``tip``."""
        if not self.ok:
            raise error(f"{what}\n{self.describe()}", tip)
        return self


def _log_start(cmd: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> None:
    """The command to the debug log, with where it runs and the names (only: values may be credentials) of the
    variables its environment adds or removes."""
    if not _logger.isEnabledFor(logging.DEBUG):
        return
    changes = " ".join(f"-{k}" if v == UNSET else f"+{k}" for k, v in (env or {}).items())
    _logger.debug("$ %s%s%s", echo(cmd), f"  (in {cwd})" if cwd else "", f"  (env {changes})" if changes else "")


def _not_started(error: ErrorClass, what: str, install: str | None, cmd: Sequence[str], env: Mapping[str, str],
                 cwd: Path | None, exc: OSError) -> LlamawheelError:
    """The caller's error for a command that could not start: its program is not there (and what to install), its
    folder is not there, or the system refused to start it."""
    program = cmd[0]
    name = Path(program).name
    if isinstance(exc, FileNotFoundError):
        if cwd is not None and not Path(cwd).is_dir():
            return error(f"{what}: the folder {cwd} to run {name} in does not exist")
        found = program if "/" in program else shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            return error(f"{what}: {program} is not installed (it is not on PATH)", install or f"install {program}")
        if not Path(found).exists():
            return error(f"{what}: there is no program {program}", install)
    return error(f"{what}: cannot start {program}: {exc.strerror or exc}", install)


def _timed_out(error: ErrorClass, what: str, tip: str | None, exc: subprocess.TimeoutExpired,
               keep: int) -> LlamawheelError:
    text = _decoded(exc.stderr) if _decoded(exc.stderr).strip() else _decoded(exc.output)
    tail = _lines(text)[-keep:] if keep > 0 else []
    status = f"return code: none (stopped after {exc.timeout:g} s)"
    return error(f"{what}: it did not finish within {exc.timeout:g} s\n"
                 f"{_describe([str(a) for a in exc.cmd], status, tail)}", tip)


def _complete(cmd: list[str], *, error: ErrorClass, what: str, tip: str | None, install: str | None,
              env: Mapping[str, str] | None, cwd: Path | None, timeout: float | None, capture: bool,
              text: bool, keep: int) -> subprocess.CompletedProcess[Any]:
    _log_start(cmd, env, cwd)
    full_env = child_env(env)
    try:
        if text:
            return subprocess.run(cmd, env=full_env, cwd=cwd, timeout=timeout, capture_output=capture, text=True,
                                  errors="replace")
        return subprocess.run(cmd, env=full_env, cwd=cwd, timeout=timeout, capture_output=capture)
    except subprocess.TimeoutExpired as exc:
        raise _timed_out(error, what, tip, exc, keep) from None
    except OSError as exc:
        raise _not_started(error, what, install, cmd, full_env, cwd, exc) from None


def run(
    cmd: Sequence[str],
    *,
    error: ErrorClass,
    what: str,
    tip: str | None = None,
    install: str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture: bool = True,
    keep: int = KEEP,
) -> Result:
    """Run ``cmd`` to its end and return its `Result` (its output as text, captured unless ``capture=False``: then
    it goes to the user's terminal, as the program writes it).

    ``error`` is the caller's error class and ``what`` the failure in the user's words ("patchelf could not set the
    RUNPATH"): a non-zero exit (unless ``check=False``), a timeout (``timeout`` seconds; the command is killed) and a
    program that cannot start each raise ``error`` with ``what``, the command, its return code and its last
    ``keep`` lines, and ``tip``. ``install`` says how to get the program when it is not installed. ``env`` is laid
    over this process's environment (`child_env`)."""
    args = [str(a) for a in cmd]
    done = _complete(args, error=error, what=what, tip=tip, install=install, env=env, cwd=cwd, timeout=timeout,
                     capture=capture, text=True, keep=keep)
    result = Result(tuple(args), done.returncode, _decoded(done.stdout), _decoded(done.stderr), keep, capture)
    return result.check(error, what, tip) if check else result


def capture(
    cmd: Sequence[str],
    *,
    error: ErrorClass,
    what: str,
    tip: str | None = None,
    install: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    keep: int = KEEP,
) -> str:
    """`run` ``cmd`` and return its standard output (its standard error is kept for the error message)."""
    return run(cmd, error=error, what=what, tip=tip, install=install, env=env, cwd=cwd, timeout=timeout,
               keep=keep).stdout


def capture_bytes(
    cmd: Sequence[str],
    *,
    error: ErrorClass,
    what: str,
    tip: str | None = None,
    install: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    keep: int = KEEP,
) -> bytes:
    """`capture`, for a command whose standard output is not text (an exported keyring): its bytes as written."""
    args = [str(a) for a in cmd]
    done = _complete(args, error=error, what=what, tip=tip, install=install, env=env, cwd=cwd, timeout=timeout,
                     capture=True, text=False, keep=keep)
    if done.returncode != 0:  # decoded only to say why
        Result(tuple(args), done.returncode, _decoded(done.stdout), _decoded(done.stderr), keep).check(error, what, tip)
    data: bytes = done.stdout
    return data


def probe(
    cmd: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Result | None:
    """Run a short command whose failure is an answer (``nvidia-smi``, ``gcc -dumpversion``, ``docker info``): its
    `Result`, whatever its return code, or ``None`` when it could not run (not installed, not startable, or still
    running after ``timeout`` seconds: then it is killed). Nothing is raised; the caller judges."""
    args = [str(a) for a in cmd]
    _log_start(args, env, cwd)
    try:
        done = subprocess.run(args, env=child_env(env), cwd=cwd, timeout=timeout, capture_output=True, text=True,
                              errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        _logger.debug("%s could not run: %s", echo(args[:1]), exc)
        return None
    return Result(tuple(args), done.returncode, done.stdout or "", done.stderr or "")


def stream(
    cmd: Sequence[str],
    *,
    error: ErrorClass,
    what: str,
    tip: str | None = None,
    install: str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    keep: int = KEEP,
) -> Result:
    """Run a long command, its standard error merged into its standard output: each line goes to ``log_file``
    (after the command itself; credentials in URLs shown as ``***``) and to ``on_line`` as it comes.

    Returns a `Result` whose ``stdout`` is the last ``keep`` lines; a non-zero exit (unless ``check=False``) or a
    program that cannot start raises ``error`` as `run` does."""
    args = [str(a) for a in cmd]
    _log_start(args, env, cwd)
    full_env = child_env(env)
    tail: deque[str] = deque(maxlen=keep)
    log = log_file.open("a", encoding="utf-8") if log_file else None
    try:
        if log:
            log.write(f"$ {echo(args)}\n")
        try:
            child = subprocess.Popen(
                args, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", bufsize=1,
            )
        except OSError as exc:
            raise _not_started(error, what, install, args, full_env, cwd, exc) from None
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if log:
                log.write(redact(line) + "\n")
            if on_line:
                on_line(line)
        code = child.wait()
    finally:
        if log:
            log.close()
    result = Result(tuple(args), code, "\n".join(tail), "", keep)
    return result.check(error, what, tip) if check else result

