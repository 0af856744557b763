"""Patches a recipe carries, applied to the unpacked sdist before it is built.

A patch is a unified diff (``diff -u`` or ``git diff`` output, paths ``a/...`` and ``b/...`` relative to
the sdist's top folder). Hunks must match exactly (a hunk may have moved, as with ``patch``, but its
context may not differ): a patch made for another release fails with the file, hunk and line, and no
file is changed until every hunk of every file applies. The manifest lists each patch with its sha256.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.core import fileio, log
from llamawheel.core.errors import BuildError

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class Hunk:
    old_start: int
    """1-based line where ``old`` begins in the original file."""
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    path: str
    hunks: list[Hunk] = field(default_factory=list)
    new_file: bool = False
    """``--- /dev/null``: the patch adds this file."""


@dataclass(frozen=True)
class AppliedPatch:
    file: Path
    sha256: str
    changed: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {"file": self.file.name, "sha256": self.sha256, "changes": list(self.changed)}


def _strip(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    return path.split("/", 1)[1] if "/" in path else path


def parse(text: str, name: str) -> list[FilePatch]:
    """The files and hunks of a unified diff; ``name`` is used in errors."""
    files: list[FilePatch] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = _strip(lines[i + 1][4:])
            if target == "/dev/null":
                raise BuildError(f"patch {name} deletes {_strip(line[4:])}: only changes and new files are supported")
            files.append(FilePatch(target, new_file=line[4:].split("\t", 1)[0].strip() == "/dev/null"))
            i += 2
            continue
        match = _HUNK.match(line)
        if match:
            if not files:
                raise BuildError(f"patch {name}, line {i + 1}: a hunk before any '--- a/... +++ b/...' header")
            hunk = Hunk(int(match.group(1)))
            old_left = int(match.group(2) or 1)
            new_left = int(match.group(4) or 1)
            i += 1
            while (old_left or new_left) and i < len(lines):
                body = lines[i]
                tag, rest = body[:1], body[1:]
                if body.startswith("\\"):  # "\ No newline at end of file" for the line before
                    for side in (hunk.old, hunk.new):
                        if side and side[-1].endswith("\n"):
                            side[-1] = side[-1][:-1]
                elif tag in (" ", "\n"):
                    rest = rest if tag == " " else "\n"
                    hunk.old.append(rest)
                    hunk.new.append(rest)
                    old_left, new_left = old_left - 1, new_left - 1
                elif tag == "-":
                    hunk.old.append(rest)
                    old_left -= 1
                elif tag == "+":
                    hunk.new.append(rest)
                    new_left -= 1
                else:
                    raise BuildError(f"patch {name}, line {i + 1}: hunk ends early (expected more lines)")
                i += 1
            if i < len(lines) and lines[i].startswith("\\"):
                for side in (hunk.old, hunk.new):
                    if side and side[-1].endswith("\n"):
                        side[-1] = side[-1][:-1]
                i += 1
            files[-1].hunks.append(hunk)
            continue
        i += 1
    if not files:
        raise BuildError(f"patch {name} holds no file changes: is it a unified diff (diff -u)?")
    return files


def _find(content: list[str], hunk: Hunk, expected: int) -> int | None:
    """Where ``hunk.old`` lies in ``content``: at ``expected`` if it matches there, else its only other place."""
    size = len(hunk.old)
    if content[expected:expected + size] == hunk.old:
        return expected
    places = [i for i in range(len(content) - size + 1) if content[i:i + size] == hunk.old]
    return places[0] if len(places) == 1 else None


def patched_text(original: str, fp: FilePatch, name: str) -> str:
    if fp.new_file:
        return "".join(line for hunk in fp.hunks for line in hunk.new)
    content = original.splitlines(keepends=True)
    offset = 0
    for number, hunk in enumerate(fp.hunks, 1):
        expected = max(hunk.old_start - 1 + offset, 0)
        at = _find(content, hunk, expected)
        if at is None:
            raise BuildError(
                f"patch {name}: hunk {number} does not apply to {fp.path} (expected at line {expected + 1})",
                "the source differs from the release the patch was made for: update the patch with the recipe's pin",
            )
        content[at:at + len(hunk.old)] = hunk.new
        offset = at - (hunk.old_start - 1) + len(hunk.new) - len(hunk.old)
    return "".join(content)


def apply(patch: Path, tree: Path) -> AppliedPatch:
    """Apply one patch file to the source ``tree``: every file changes, or none does."""
    if not patch.is_file():
        raise BuildError(f"the recipe's patch {patch} does not exist")
    text = patch.read_text(encoding="utf-8")
    results: dict[Path, str] = {}
    for fp in parse(text, patch.name):
        target = tree / fp.path
        if fp.new_file and (target.exists() or target in results):
            raise BuildError(f"patch {patch.name} adds {fp.path}, which the source tree {tree} already has")
        if not fp.new_file and not target.is_file():
            raise BuildError(f"patch {patch.name} changes {fp.path}, which the source tree {tree} does not have")
        original = "" if fp.new_file else results.get(target) or target.read_text(encoding="utf-8")
        results[target] = patched_text(original, fp, patch.name)
    for target, content in results.items():
        fileio.write_file(target, content.encode("utf-8"))
    changed = tuple(sorted(str(t.relative_to(tree)) for t in results))
    log.info(f"applied patch {patch.name} ({', '.join(changed)})")
    return AppliedPatch(patch, fileio.sha256_of(patch), changed)


def apply_all(patches: tuple[Path, ...], tree: Path) -> list[AppliedPatch]:
    return [apply(p, tree) for p in patches]
