"""`core.proc`, the one place a subprocess starts: what a user sees when a command fails, is missing or hangs.

Real tiny commands (``sh -c``, ``sleep``, a program that does not exist), no mocks.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import pytest

from llamawheel import cli
from llamawheel.core import proc
from llamawheel.core.errors import BuildError, DownloadError, ImageError, RuntimeCheckError, ToolchainError
from llamawheel.mirror import profiles
from llamawheel.toolchain import deb
from llamawheel.verify import installed

SECRET = "hunter2-token"
MISSING = "llamawheel-test-no-such-program"
SRC = Path(__file__).resolve().parents[2] / "src" / "llamawheel"

COPIED_ELSEWHERE = ("runtime/", "verify/portable/")
"""Code copied to other machines imports no llamawheel (the import-linter contract), so not `core.proc` either:
it starts its children itself."""


def test_a_failed_command_is_the_callers_error_naming_the_command_its_return_code_and_last_lines() -> None:
    with pytest.raises(BuildError) as failed:
        proc.run(["sh", "-c", "echo x; exit 3"], error=BuildError, what="the test step failed", tip="look at it")
    assert failed.value.exit_code == 7
    assert failed.value.message == ("the test step failed\n"
                                    "command: sh -c 'echo x; exit 3'\n"
                                    "return code: 3\n"
                                    "output (last lines):\n"
                                    "    x")
    assert failed.value.tip == "look at it"


def test_the_error_shows_standard_error_when_there_is_some_and_only_the_last_lines() -> None:
    script = "echo stdout-text; for i in 1 2 3 4 5; do echo line$i >&2; done; exit 1"
    with pytest.raises(ToolchainError) as failed:
        proc.run(["sh", "-c", script], error=ToolchainError, what="it broke", keep=2)
    assert failed.value.message.endswith("return code: 1\noutput (last lines):\n    line4\n    line5")
    assert "\n    stdout-text" not in failed.value.message and "line3" not in failed.value.message


def test_check_false_returns_the_result_and_capture_returns_standard_output() -> None:
    done = proc.run(["sh", "-c", "echo out; echo err >&2; exit 4"], error=BuildError, what="x", check=False)
    assert (done.returncode, done.ok, done.stdout, done.stderr) == (4, False, "out\n", "err\n")
    assert proc.capture(["sh", "-c", "echo one; echo two"], error=BuildError, what="x") == "one\ntwo\n"
    assert proc.capture_bytes(["printf", r"\377\000k"], error=BuildError, what="x") == b"\xff\x00k"


def test_the_environment_given_is_laid_over_this_processs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_TEST_KEPT", "kept")
    monkeypatch.setenv("LLAMAWHEEL_TEST_GONE", "gone")
    out = proc.capture(["sh", "-c", 'echo "$LLAMAWHEEL_TEST_KEPT ${LLAMAWHEEL_TEST_GONE-unset} $ADDED"'],
                       error=BuildError, what="x", env={"ADDED": "added", "LLAMAWHEEL_TEST_GONE": proc.UNSET})
    assert out == "kept unset added\n"


def test_a_missing_program_is_the_callers_error_saying_what_to_install() -> None:
    with pytest.raises(ImageError) as failed:
        proc.run([MISSING, "--version"], error=ImageError, what="could not make the base",
                 install="apt-get install mmdebstrap")
    assert failed.value.exit_code == 13
    assert failed.value.message == f"could not make the base: {MISSING} is not installed (it is not on PATH)"
    assert failed.value.tip == "apt-get install mmdebstrap"
    with pytest.raises(BuildError) as failed:
        proc.capture([MISSING], error=BuildError, what="x")
    assert failed.value.tip == f"install {MISSING}"
    with pytest.raises(ToolchainError, match=f"nvcc does not run: there is no program /nonexistent/{MISSING}$"):
        proc.capture([f"/nonexistent/{MISSING}"], error=ToolchainError, what="nvcc does not run")
    with pytest.raises(DownloadError, match=f"x: {MISSING} is not installed"):
        proc.stream([MISSING], error=DownloadError, what="x")


def test_a_program_that_cannot_start_and_a_missing_folder_are_the_callers_error(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")  # not executable
    with pytest.raises(BuildError, match=f"^x: cannot start {script}: Permission denied$"):
        proc.run([str(script)], error=BuildError, what="x")
    with pytest.raises(BuildError, match=f"^x: the folder {tmp_path / 'gone'} to run sh in does not exist$"):
        proc.run(["sh", "-c", "true"], error=BuildError, what="x", cwd=tmp_path / "gone")


def test_a_timeout_stops_the_command_and_is_the_callers_error_with_what_it_printed() -> None:
    started = time.monotonic()
    with pytest.raises(ImageError) as failed:
        proc.run(["sh", "-c", "echo started; exec sleep 30"], error=ImageError, what="docker did not answer",
                 timeout=0.5)
    assert time.monotonic() - started < 10
    assert failed.value.exit_code == 13
    assert failed.value.message == ("docker did not answer: it did not finish within 0.5 s\n"
                                    "command: sh -c 'echo started; exec sleep 30'\n"
                                    "return code: none (stopped after 0.5 s)\n"
                                    "output (last lines):\n"
                                    "    started")


def test_a_probe_answers_instead_of_raising() -> None:
    answer = proc.probe(["sh", "-c", "echo 12.4; exit 2"])
    assert answer is not None and (answer.returncode, answer.stdout) == (2, "12.4\n")
    assert proc.probe([MISSING]) is None
    started = time.monotonic()
    assert proc.probe(["sleep", "30"], timeout=0.3) is None
    assert time.monotonic() - started < 10


def test_output_left_on_the_terminal_is_not_kept_and_the_error_says_so(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BuildError) as failed:
        proc.run(["sh", "-c", "echo to the terminal; exit 5"], error=BuildError, what="twine failed", capture=False)
    assert capfd.readouterr().out == "to the terminal\n"
    assert failed.value.message.endswith("return code: 5\noutput: shown above")
    done = proc.run(["sh", "-c", "exit 6"], error=BuildError, what="x", capture=False, check=False)
    assert done.returncode == 6 and done.stdout == ""


def test_a_stream_shows_each_line_logs_it_and_keeps_the_last(tmp_path: Path) -> None:
    seen: list[str] = []
    log_file = tmp_path / "step.log"
    done = proc.stream(["sh", "-c", "echo one; echo two >&2; echo three"], error=BuildError, what="x",
                       log_file=log_file, on_line=seen.append, keep=2)
    assert seen == ["one", "two", "three"]
    assert done.ok and done.lines() == ["two", "three"]
    assert log_file.read_text() == "$ sh -c 'echo one; echo two >&2; echo three'\none\ntwo\nthree\n"
    with pytest.raises(BuildError) as failed:
        proc.stream(["sh", "-c", "echo a; echo b; exit 9"], error=BuildError, what="the build failed")
    assert failed.value.message.endswith("return code: 9\noutput (last lines):\n    a\n    b")
    unchecked = proc.stream(["sh", "-c", "echo a; exit 9"], error=BuildError, what="x", check=False)
    assert (unchecked.returncode, unchecked.tail()) == (9, ["a"])


def test_credentials_never_show_in_the_error_the_log_file_or_the_debug_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"https://u:{SECRET}@mirror.example/simple"
    caplog.set_level(logging.DEBUG, logger="llamawheel.core.proc")
    log_file = tmp_path / "build.log"
    script = f"print('Looking in {url}'); raise SystemExit(3)"
    with pytest.raises(DownloadError) as failed:
        proc.stream([sys.executable, "-c", script, url], error=DownloadError, what="pip failed", log_file=log_file)
    with pytest.raises(DownloadError) as captured:
        proc.run([sys.executable, "-c", script, url], error=DownloadError, what="pip failed",
                 env={"PIP_INDEX_URL": url, "LLAMAWHEEL_FARM_TOKEN": SECRET})
    for text in (failed.value.message, captured.value.message, log_file.read_text(), caplog.text):
        assert SECRET not in text
    assert "'https://***@mirror.example/simple'\n" in failed.value.message  # the command's last argument
    assert failed.value.message.endswith("output (last lines):\n    Looking in https://***@mirror.example/simple")
    assert "'https://***@mirror.example/simple'\nLooking in https://***@mirror.example/simple\n" in (
        log_file.read_text())  # the command, then its output
    assert re.search(r"\$ \S+ -c .*https://\*\*\*@mirror\.example/simple'  "
                     r"\(env \+PIP_INDEX_URL \+LLAMAWHEEL_FARM_TOKEN\)", caplog.text)


def test_the_command_line_prints_a_failed_command_as_an_error_with_its_exit_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def failing(args: argparse.Namespace) -> int:
        proc.run(["sh", "-c", "echo cc1plus: out of memory >&2; exit 1"], error=BuildError,
                 what="the build failed", tip="the full log is build.log")
        return 0

    def missing(args: argparse.Namespace) -> int:
        proc.run([MISSING], error=ToolchainError, what="cannot check the toolchain")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "build", failing)
    assert cli.main(["build", "cpu"]) == 7
    err = capsys.readouterr().err
    assert err == ("ERROR the build failed\n"
                   "command: sh -c 'echo cc1plus: out of memory >&2; exit 1'\n"
                   "return code: 1\n"
                   "output (last lines):\n"
                   "    cc1plus: out of memory\n"
                   "TIP the full log is build.log\n")
    monkeypatch.setitem(cli.COMMANDS, "build", missing)
    assert cli.main(["build", "cpu"]) == 6
    assert capsys.readouterr().err == (f"ERROR cannot check the toolchain: {MISSING} is not installed (it is not on "
                                       f"PATH)\nTIP install {MISSING}\n")


# ----------------------------------------------------------------------------- callers that let a traceback out before


def test_a_deb_that_does_not_unpack_is_a_toolchain_error(tmp_path: Path) -> None:
    bad = tmp_path / "cuda-nvcc_12.4.131-1_amd64.deb"
    bad.write_bytes(b"not an ar archive")
    with pytest.raises(ToolchainError) as failed:
        deb.extract([bad], tmp_path / "tree")
    assert failed.value.exit_code == 6
    assert failed.value.message.startswith(f"dpkg-deb could not unpack {bad.name}\ncommand: dpkg-deb -x {bad} ")
    assert "\nreturn code: 2\noutput (last lines):\n    dpkg-deb" in failed.value.message


def test_a_venv_that_cannot_be_made_is_a_runtime_check_error_with_what_to_install(tmp_path: Path) -> None:
    taken = tmp_path / "venv"
    taken.write_text("a file where the venv should go")
    with pytest.raises(RuntimeCheckError) as failed:
        installed.fresh_venv(taken, tmp_path / "x.whl", profiles.load_profile("default"))
    assert failed.value.exit_code == 12
    assert failed.value.message.startswith(f"this Python ({sys.executable}) could not make a virtual environment in "
                                           f"{taken}\ncommand: {sys.executable} -m venv {taken}\nreturn code: 1\n")
    assert failed.value.tip is not None and "apt-get install python3-venv" in failed.value.tip


def test_every_subprocess_starts_in_core_proc() -> None:
    """The check of ``grep -rn "subprocess\\." src/llamawheel | grep -v core/proc.py``: only code copied to other
    machines (which may import no llamawheel) starts its own."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "core/proc.py" or rel.startswith(COPIED_ELSEWHERE):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bsubprocess\.|\bimport subprocess\b|\bfrom subprocess\b|\bos\.(system|popen|spawn|exec)",
                         line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == [], "start commands with llamawheel.core.proc:\n" + "\n".join(offenders)
