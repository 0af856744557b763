"""The docs cannot go stale unnoticed: docs/reference.md's generated tables match the code (scripts/docs-tables.py
--check, also run by the lint session), the README stays short and keeps the test command .ci/run runs, and every
link from the README or a message in src/ to a docs page names a page and heading that exist."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    """scripts/docs-tables.py, imported (its name is not a module name)."""
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs-tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """A heading's anchor as MkDocs' Markdown (toc) makes it."""
    return re.sub(r"[\s-]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def _anchors(page: Path) -> set[str]:
    return {_slug(heading) for heading in _headings(page)}


def _headings(page: Path) -> set[str]:
    return {m[1] for m in re.finditer(r"^#+\s+(.+?)\s*$", page.read_text(), re.MULTILINE)}


def test_the_reference_tables_match_the_code(tables: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert tables.main(["--check"]) == 0, capsys.readouterr().err


def test_a_stale_table_fails_the_check_and_is_rewritten(tables: ModuleType, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "reference.md"
    shutil.copy(DOCS / "reference.md", copy)
    text = copy.read_text()
    stale = text.replace("| `1` | `LlamawheelError` |", "| `1` | `SomeOtherError` |")
    assert stale != text
    copy.write_text(stale)

    assert tables.main(["--check", "--reference", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "stale generated table(s): exit-codes;" in err
    assert "python scripts/docs-tables.py" in err

    assert tables.main(["--reference", str(copy)]) == 0
    assert copy.read_text() == text
    assert tables.main(["--check", "--reference", str(copy)]) == 0


def test_a_changed_help_text_makes_the_commands_table_stale(tables: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    original = tables.cli.parser

    def changed() -> argparse.ArgumentParser:
        top: argparse.ArgumentParser = original()
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        next(a for a in sub.choices["build"]._actions if a.dest == "arch").help = "some other words"
        return top

    monkeypatch.setattr(tables.cli, "parser", changed)
    assert tables.main(["--check"]) == 1
    assert "stale generated table(s): commands;" in capsys.readouterr().err


def test_a_missing_or_unknown_block_fails_the_check(tables: ModuleType, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "reference.md"
    copy.write_text((DOCS / "reference.md").read_text().replace("<!-- generated: recipes -->",
                                                                 "<!-- generated: recipe -->"))
    assert tables.main(["--check", "--reference", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "no generator for recipe" in err
    assert "no <!-- generated: NAME --> block for recipes" in err


def test_the_readme_is_short_and_keeps_the_ci_test_command() -> None:
    readme = README.read_text()
    assert len(readme.splitlines()) <= 200
    command = next(line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3"))
    assert command.replace(" --quiet", "") in readme  # .ci/run only adds --quiet


def test_the_readmes_links_into_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", README.read_text())
    assert links
    for page, anchor in links:
        assert (ROOT / page).is_file(), page
        if anchor:
            assert anchor in _anchors(ROOT / page), f"{page}#{anchor}"


def test_messages_that_name_a_docs_page_name_one_that_exists() -> None:
    named = 0
    for source in sorted((ROOT / "src").rglob("*.py")):
        for page, heading in re.findall(r"docs/([\w-]+\.md)(?:, '([^']+)')?", source.read_text()):
            named += 1
            assert (DOCS / page).is_file(), f"{source}: docs/{page}"
            if heading:
                assert heading in _headings(DOCS / page), f"{source}: docs/{page}, '{heading}'"
    assert named >= 3
