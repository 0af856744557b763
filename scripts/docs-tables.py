#!/usr/bin/env python3
"""The tables of ``docs/reference.md``, written from the code that defines them, so that they cannot go stale.

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``:

- ``sessions``: the nox sessions (``noxfile.py``, read as source; the build sessions from the recipes, as nox
  makes them);
- ``commands``: every ``llamawheel`` command and subcommand with its options (the argparse parser,
  `llamawheel.cli.parser`);
- ``exit-codes``: each error class of `llamawheel.core.errors` with an exit code of its own;
- ``recipes``: the recipes and their CUDA minors (`llamawheel.recipe.catalog`);
- ``mirrors``: the mirror profiles in ``mirrors/`` (`llamawheel.mirror.profiles`).

    python scripts/docs-tables.py            # rewrite the tables
    python scripts/docs-tables.py --check    # exit 1 naming each stale table (the lint session and a unit test)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamawheel import cli  # noqa: E402
from llamawheel.building import options  # noqa: E402
from llamawheel.core import errors  # noqa: E402
from llamawheel.mirror import profiles  # noqa: E402
from llamawheel.recipe import catalog, matrix  # noqa: E402

REFERENCE = ROOT / "docs" / "reference.md"
REGENERATE = "python scripts/docs-tables.py"
BLOCK = re.compile(r"(?P<start><!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(?P<end><!-- end generated -->)",
                   re.DOTALL)


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped, HTML's brackets as entities, rST's double
    backquotes as Markdown's."""
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    end = text.find(". ")
    return (text if end < 0 else text[: end + 1]).rstrip(".")


def sessions() -> str:
    """Every session noxfile.py declares with ``@nox.session``, and the build sessions it makes from the recipes."""
    rows: list[list[str]] = []
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            if ast.unparse(call.func if call else decorator) != "nox.session":
                continue
            given = {k.arg: ast.literal_eval(k.value) for k in (call.keywords if call else []) if k.arg != "python"}
            name = given.get("name", node.name)
            runs = "yes" if given.get("default", True) else ""
            rows.append([f"`{name}`", runs, cell(first_sentence(ast.get_docstring(node)))])
    builds = matrix.build_sessions(catalog.all_recipes(ROOT / "recipes"))
    names = ", ".join(f"`{name}`" for name, _, _ in builds)
    rows.insert(0, [names, "", "Build a CUDA wheel: one session per CUDA line (its default minor) and per minor "
                               "(the recipes below)"])
    return table(["session", "plain `nox`", "what it does"], rows)


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option as ``--help`` shows it (``--arch ARCH``, ``-v, --verbose``)."""
    shown = re.sub(r"\x1b\[[0-9;]*m", "", parser._get_formatter()._format_action_invocation(action))  # 3.14 colours
    return f"`{shown}`" + (" (repeatable)" if isinstance(action, argparse._AppendAction) else "")


def _default(action: argparse.Action) -> str:
    value = action.default
    flag = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
    if action.required:
        return "required"
    if flag or value in (None, argparse.SUPPRESS, []) or not action.option_strings:
        return ""
    return f"`{value}`"


Command = tuple[str, str, argparse.ArgumentParser]
"""A command's words (``llamawheel index check``), its help line and its parser."""


def _commands(parser: argparse.ArgumentParser, path: str, about: str) -> Iterator[Command]:
    """Each command under ``parser``, itself first."""
    yield path, about, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                yield from _commands(child, f"{path} {name}", helps.get(name, ""))


def commands() -> str:
    """A heading per command and a table of its arguments, in the parser's order."""
    top = cli.parser()
    parts: list[str] = []
    for path, about, parser in _commands(top, "llamawheel", top.description or ""):
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parts.append(f"### `{path}`\n\n{cell(about).rstrip('.')}.\n" if about else f"### `{path}`\n")
        if subcommands:
            words = ", ".join(f"`{path} {name}`" for a in subcommands for name in a.choices)
            parts.append(f"Subcommands: {words}.\n")
        if not actions:
            continue
        build = path == "llamawheel build"  # resolved by `options.resolve`, which also reads LLAMAWHEEL_* variables
        rows: list[list[str]] = []
        for action in actions:
            env = options.env_variable(action.dest) if build else None
            rows.append([_invocation(parser, action), _default(action), *([f"`{env}`" if env else ""] if build else []),
                         cell(action.help or "")])
        header = ["argument", "default", *(["environment"] if build else []), "meaning"]
        parts.append(table(header, rows))
    return "\n".join(parts)


def _usage_status() -> int:
    """The exit status argparse gives a command line it cannot parse."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.parser().parse_args([])
        except SystemExit as exc:
            return int(exc.code or 0)
    raise AssertionError("llamawheel's parser accepted no command at all")


def exit_codes() -> str:
    """0, then each error class with an exit code of its own and the classes that share it."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.LlamawheelError)]

    def owner(cls: type[errors.LlamawheelError]) -> type:
        return next(c for c in cls.__mro__ if "exit_code" in vars(c))

    rows = [["`0`", "", "success"]]
    usage = _usage_status()
    for cls in (c for c in classes if owner(c) is c):
        names = [f"`{cls.__name__}`", *(f"`{c.__name__}`" for c in classes if c is not cls and owner(c) is cls)]
        meaning = cell(first_sentence(cls.__doc__))
        if cls.exit_code == usage:
            meaning += "; also argparse's own status for a command line it cannot parse (`llamawheel: error: ...`)"
        rows.append([f"`{cls.exit_code}`", ", ".join(names), meaning])
    return table(["code", "error", "meaning"], sorted(rows, key=lambda row: int(row[0].strip("`"))))


def recipes() -> str:
    """The recipes (one per CUDA line, and the CPU) and, for each CUDA minor, where its toolchain comes from."""
    found = catalog.all_recipes(ROOT / "recipes")
    pins = {f"{r.llama_cpp_python.version} (sdist sha256 `{r.llama_cpp_python.sha256}`)" for r in found.values()}
    lines = [f"Every recipe builds llama-cpp-python {' or '.join(sorted(pins))}.\n"]
    lines.append(table(["recipe", "what it builds", "default minor", "default architectures"], [
        [f"`recipes/{r.path.name}`", cell(r.description), f"`{r.default_minor}`" if r.default_minor else "",
         ", ".join(f"`{a}`" for a in r.default_archs)] for r in found.values()]))
    rows: list[list[str]] = []
    for recipe in (r for r in found.values() if r.kind == "cuda"):
        for version, minor in recipe.minors.items():
            source = "NVIDIA's wheels (PyPI)" if minor.provider == "pypi" else ""
            if minor.apt is not None:
                apt = minor.apt
                where = f"{apt.suite} ({', '.join(apt.components)})" if apt.components else apt.path or apt.suite
                source = f"`{apt.upstream}` {cell(where)}"
            platforms = ", ".join(["x86_64", *minor.targets])
            rows.append([f"`{version}`" + (" (default)" if version == recipe.default_minor else ""),
                         f"`recipes/{recipe.path.name}`", f"`{minor.provider}`", source,
                         "any" if minor.max_gcc >= 99 else str(minor.max_gcc), platforms, f"`build-cuda-{version}`"])
    lines.append(table(["CUDA", "recipe", "provider", "from", "host GCC up to", "platforms", "nox session"], rows))
    return "\n".join(lines)


def mirrors() -> str:
    """Each shipped profile: what it is, and which host serves each upstream through it."""
    found = [profiles.load_profile(str(path)) for path in sorted((ROOT / "mirrors").glob("*.toml"))]
    described = table(["profile", "description"], [[f"`{p.name}`", cell(p.description)] for p in found])

    def host(value: str) -> str:
        return f"`{urlsplit(value).netloc + urlsplit(value).path if '://' in value else value}`" if value else "-"

    mirrored = table(["profile", *(f"`{u}`" for u in profiles.UPSTREAMS)],
                     [[f"`{p.name}`", *(host(v) for v in p.urls().values())] for p in found])
    unset = (f"`-`: not mirrored; pip and apt as this machine configured them, NVIDIA's own CUDA repository "
             f"(`{profiles.NVIDIA_CUDA_APT}`), {' and '.join(f'`{r}`' for r in profiles.REGISTRY_DEFAULTS.values())} "
             "themselves.\n")
    return described + "\n" + mirrored + "\n" + unset


TABLES: dict[str, Callable[[], str]] = {
    "sessions": sessions,
    "commands": commands,
    "exit-codes": exit_codes,
    "recipes": recipes,
    "mirrors": mirrors,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or with --check, check) docs/reference.md's tables.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale table")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the page (default: docs/reference.md)")
    args = parser.parse_args(argv)
    text = args.reference.read_text()
    found = [m["name"] for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(TABLES))
    missing = [name for name in TABLES if name not in found]
    if unknown or missing:
        print(f"{args.reference}: " + "; ".join(
            ([f"no generator for {', '.join(unknown)}"] if unknown else []) +
            ([f"no <!-- generated: NAME --> block for {', '.join(missing)}"] if missing else [])), file=sys.stderr)
        return 1
    generated = {name: make() for name, make in TABLES.items()}
    stale = [m["name"] for m in BLOCK.finditer(text) if m["body"] != generated[m["name"]]]
    if args.check:
        if stale:
            print(f"{args.reference}: stale generated table(s): {', '.join(stale)}; regenerate with: {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if stale:
        args.reference.write_text(BLOCK.sub(lambda m: m["start"] + generated[m["name"]] + m["end"], text))
    print(f"{args.reference}: " + (f"rewrote {', '.join(stale)}" if stale else "every table is current"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
