"""Whose recipes, mirror profiles and Containerfile llamawheel reads (core/paths.py): the package's own, unless
``--root`` or ``$LLAMAWHEEL_ROOT`` names a checkout; never a checkout that happens to be above the working
directory; and nothing is decided when a module is imported."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamawheel import cli
from llamawheel.core import paths
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import UsageError
from llamawheel.recipe import catalog

from .helpers import ROOT

NOT_DATA = {"docker/README.md"}
"""Files of the data folders that document the checkout and are not shipped."""


def decoy_checkout(folder: Path) -> Path:
    """A llamawheel checkout whose recipes, profiles and Containerfile are told apart from the real ones: the CPU
    recipe's description says DECOY and there is a ``decoy`` mirror profile."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "llamawheel"\n')
    for kind in paths.DATA_KINDS:
        shutil.copytree(ROOT / kind, folder / kind)
    cpu = folder / "recipes" / "cpu.toml"
    cpu.write_text(cpu.read_text().replace('description = "CPU only', 'description = "DECOY CPU only'))
    shutil.copy(ROOT / "mirrors" / "default.toml", folder / "mirrors" / "decoy.toml")
    (folder / "docker" / "Containerfile").write_text("FROM decoy\n")
    return folder


def installed_copy(site: Path) -> Path:
    """The llamawheel package laid out as a wheel installs it (the data folders inside, as ``_data``), in ``site``
    (a folder to put on PYTHONPATH)."""
    package = site / "llamawheel"

    def code_only(folder: str, names: list[str]) -> set[str]:  # (the tests' llamawheel may be an installed one)
        data = paths.DATA_KINDS if Path(folder) == paths.PACKAGE_DIR / "_data" else ()
        return {n for n in names if n == "__pycache__" or n in data}

    shutil.copytree(paths.PACKAGE_DIR, package, ignore=code_only)
    for kind in paths.DATA_KINDS:
        shutil.copytree(ROOT / kind, package / "_data" / kind)
    return package


def python(code: str, cwd: Path, site: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMAWHEEL_", "PYTHONPATH"))}
    if site is not None:
        clean["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**clean, **env}, timeout=120)


def test_an_installed_llamawheel_reads_its_own_data_even_inside_another_checkout(tmp_path: Path) -> None:
    """The working directory is inside a llamawheel checkout (which the tool once took as its own): an installed
    llamawheel still reads the recipes, profiles and Containerfile it carries, and writes wheels/ here."""
    package = installed_copy(tmp_path / "site")
    here = decoy_checkout(tmp_path / "decoy") / "docs"
    here.mkdir()
    code = ("import llamawheel; from llamawheel.core import paths; from llamawheel.recipe import catalog; "
            "from llamawheel.mirror import profiles; "
            "print(llamawheel.__file__); print(paths.root()); print(paths.recipes_dir()); print(paths.wheels_dir()); "
            "print(paths.containerfile().read_text().splitlines()[0]); print(catalog.cpu_recipe().description); "
            "print(sorted(profiles.available()))")
    result = python(code, here, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(package / "__init__.py")
    assert lines[1:4] == ["None", str(package / "_data" / "recipes"), str(here / "wheels")]
    assert lines[4] == (ROOT / "docker" / "Containerfile").read_text().splitlines()[0]
    assert lines[5].startswith("CPU only")
    assert "decoy" not in lines[6] and "tsinghua" in lines[6]


def test_run_from_a_source_tree_the_trees_own_data_is_used_wherever_the_working_directory_is(
    tmp_path: Path,
) -> None:
    """Imported from src/ (an editable install, or the noxfile's sys.path): the data beside src/, which a wheel
    would carry, whatever the working directory; wheels/ in the tree, as before."""
    here = decoy_checkout(tmp_path / "decoy")
    code = ("import llamawheel; from llamawheel.core import paths; from llamawheel.recipe import catalog; "
            "print(llamawheel.__file__); print(paths.root()); print(paths.recipes_dir()); print(paths.wheels_dir()); "
            "print(catalog.cpu_recipe().description)")
    result = python(code, here, ROOT / "src")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(ROOT / "src" / "llamawheel" / "__init__.py"), str(ROOT),
                                          str(ROOT / "recipes"), str(ROOT / "wheels"),
                                          catalog.load_recipe(ROOT / "recipes" / "cpu.toml").description]


def test_llamawheel_root_names_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoy = decoy_checkout(tmp_path / "decoy")
    monkeypatch.setenv("LLAMAWHEEL_ROOT", str(decoy))
    assert paths.root() == decoy
    assert (paths.recipes_dir(), paths.mirrors_dir()) == (decoy / "recipes", decoy / "mirrors")
    assert paths.containerfile().read_text() == "FROM decoy\n"
    assert paths.wheels_dir() == decoy / "wheels"
    assert catalog.cpu_recipe().description.startswith("DECOY")
    monkeypatch.delenv("LLAMAWHEEL_ROOT")  # resolved on each call: the same process sees the change
    assert paths.root() != decoy
    assert not catalog.cpu_recipe().description.startswith("DECOY")


def test_the_root_option_comes_before_llamawheel_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    decoy = decoy_checkout(tmp_path / "decoy")
    other = decoy_checkout(tmp_path / "other")
    (other / "mirrors" / "decoy.toml").rename(other / "mirrors" / "other.toml")
    monkeypatch.setenv("LLAMAWHEEL_ROOT", str(other))
    assert cli.main(["--root", str(decoy), "mirrors", "list"]) == 0
    out = capsys.readouterr().out
    assert "decoy: " in out and "other: " not in out
    assert cli.main(["mirrors", "list"]) == 0  # without --root: LLAMAWHEEL_ROOT again
    out = capsys.readouterr().out
    assert "other: " in out and "decoy: " not in out


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_root_without_the_data_folders_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    wrong = tmp_path / "not-llamawheel"
    (wrong / "docker").mkdir(parents=True)
    if how == "env":
        monkeypatch.setenv("LLAMAWHEEL_ROOT", str(wrong))
        code = cli.main(["recipes"])
        named, instead = f"LLAMAWHEEL_ROOT={wrong}", "unset LLAMAWHEEL_ROOT"
    else:
        code = cli.main(["--root", str(wrong), "toolchains"])  # refused even by a command that reads no recipe
        named, instead = f"--root {wrong}", "leave out --root"
    err = capsys.readouterr().err
    assert code == UsageError.exit_code == 2
    assert f"ERROR {named} is not a llamawheel checkout: it has no recipes/ or mirrors/\n" in err
    assert f"TIP name a llamawheel checkout (the folder that holds recipes/, mirrors/ and docker/), or {instead} to " \
           "use the recipes, mirror profiles and Containerfile shipped with llamawheel\n" in err


def test_a_root_that_does_not_exist_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError, match=f"^LLAMAWHEEL_ROOT={tmp_path / 'nowhere'}: no such folder$"):
        paths.recipes_dir()


def test_importing_llamawheel_reads_no_root(tmp_path: Path) -> None:
    """Every module imports with a LLAMAWHEEL_ROOT that is no checkout; the first data path asked for says so."""
    code = ("import importlib, pkgutil, llamawheel\n"
            "for m in pkgutil.walk_packages(llamawheel.__path__, 'llamawheel.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "from llamawheel.core import paths\n"
            "paths.mirrors_dir()\n")
    result = python(code, tmp_path, LLAMAWHEEL_ROOT=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"llamawheel.core.errors.UsageError: LLAMAWHEEL_ROOT={tmp_path} is not a llamawheel checkout: it has no "
        "recipes/, mirrors/ or docker/")


def test_the_wheel_carries_every_data_file() -> None:
    """pyproject.toml maps recipes/, mirrors/ and docker/ into llamawheel._data, and its package-data patterns take
    every file there (a non-editable install, as the build sessions use, reads only what they take)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for kind in paths.DATA_KINDS:
        package = f"llamawheel._data.{kind}"
        assert package in setuptools["packages"]
        assert setuptools["package-dir"][package] == kind
        folder = ROOT / kind
        taken = {p for pattern in setuptools["package-data"][package] for p in glob.glob(pattern, root_dir=folder)}
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
        assert files - taken == {f[len(kind) + 1:] for f in NOT_DATA if f.startswith(f"{kind}/")}


def test_every_package_under_src_is_listed() -> None:
    """pyproject.toml lists the packages one by one: a new stage folder left off the list would be missing from a
    non-editable install (what the build sessions use), and only there."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
