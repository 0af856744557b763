"""Recipe patches: a unified diff applies exactly or not at all, and the shipped ones apply to the pin."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from llamawheel.building import patches
from llamawheel.core import paths
from llamawheel.core.errors import BuildError
from llamawheel.recipe import catalog

ORIGINAL = "".join(f"line {n}\n" for n in range(1, 21))
CHANGE = """A header line that is not part of the diff.

--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -3,3 +3,4 @@
 line 3
-line 4
+line four
+line 4.5
 line 5
@@ -15,2 +16,2 @@
 line 15
-line 16
+line sixteen
--- /dev/null
+++ b/pkg/new.py
@@ -0,0 +1,2 @@
+first
+second
"""


def tree_with(tmp_path: Path, text: str = ORIGINAL) -> Path:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text(text)
    return tmp_path / "src"


def test_a_patch_changes_and_adds_files(tmp_path: Path) -> None:
    tree = tree_with(tmp_path)
    (tmp_path / "p.patch").write_text(CHANGE)
    applied = patches.apply(tmp_path / "p.patch", tree)
    lines = (tree / "pkg" / "mod.py").read_text().splitlines()
    assert lines[2:6] == ["line 3", "line four", "line 4.5", "line 5"]
    assert lines[15:17] == ["line 15", "line sixteen"] and len(lines) == 21
    assert (tree / "pkg" / "new.py").read_text() == "first\nsecond\n"
    assert applied.describe()["changes"] == ["pkg/mod.py", "pkg/new.py"]
    assert len(applied.sha256) == 64


def test_a_hunk_that_moved_still_applies(tmp_path: Path) -> None:
    tree = tree_with(tmp_path, "added at the top\n" + ORIGINAL)
    (tmp_path / "p.patch").write_text(CHANGE)
    patches.apply(tmp_path / "p.patch", tree)
    assert (tree / "pkg" / "mod.py").read_text().splitlines()[4] == "line four"


def test_a_patch_for_other_sources_changes_nothing(tmp_path: Path) -> None:
    tree = tree_with(tmp_path, ORIGINAL.replace("line 16\n", "line 16 changed upstream\n"))
    (tmp_path / "p.patch").write_text(CHANGE)
    with pytest.raises(BuildError) as info:
        patches.apply(tmp_path / "p.patch", tree)
    assert "hunk 2 does not apply to pkg/mod.py" in info.value.message
    assert (tree / "pkg" / "mod.py").read_text().startswith("line 1\n") and "line four" not in (
        tree / "pkg" / "mod.py").read_text()
    assert not (tree / "pkg" / "new.py").exists()


def test_text_that_is_no_diff_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.patch").write_text("just words\n")
    with pytest.raises(BuildError, match="holds no file changes"):
        patches.apply(tmp_path / "p.patch", tree_with(tmp_path))


def test_the_shipped_patches_apply_to_the_pinned_sdist(tmp_path: Path) -> None:
    recipe = catalog.cpu_recipe()
    sdist = paths.sdists_dir() / f"llama_cpp_python-{recipe.llama_cpp_python.version}.tar.gz"
    if not sdist.is_file():
        pytest.skip(f"the pinned sdist is not in the cache yet ({sdist}): a build fetches it")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if (m.name.count("/") == 1 and m.name.endswith("/CMakeLists.txt"))
                   or (m.name.endswith(".py") and "/llama_cpp/" in m.name and "/vendor/" not in m.name)
                   or m.name.endswith(("/vendor/llama.cpp/ggml/src/CMakeLists.txt",
                                       "/vendor/llama.cpp/tools/mtmd/mtmd-helper.cpp"))]
        tar.extractall(tmp_path, members=members, filter="data")
    (top,) = tmp_path.iterdir()
    applied = patches.apply_all(recipe.patch_files, top)
    assert [a.file.name for a in applied] == ["stream-incremental.patch", "backend-modules.patch",
                                              "cpu-variants-compiler.patch", "subprocess-glibc-2.28.patch"]
    assert "stream_decoder" in (top / "llama_cpp" / "llama.py").read_text()
    assert "_backends.load(_base_path)" in (top / "llama_cpp" / "llama_cpp.py").read_text()
    assert "foreach(backend ${GGML_AVAILABLE_BACKENDS})" in (top / "CMakeLists.txt").read_text()
    assert "check_cxx_compiler_flag(-mavxvnni" in (top / "vendor/llama.cpp/ggml/src/CMakeLists.txt").read_text()
    assert "#define SUBPROCESS_HAVE_CWD 0" in (top / "vendor/llama.cpp/tools/mtmd/mtmd-helper.cpp").read_text()
