"""The private wheel index without the network: pages, variants, idempotence, refusal, `index check`,
crash safety and concurrent publishers. Every publish here is ``--no-closure`` (the closure download
is covered by the integration tests)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llamawheel import cli
from llamawheel.core.errors import IndexCheckError, PublishError, UsageError
from llamawheel.publish import closure, index, index_check, share
from llamawheel.publish.index_pages import IndexedFile, parse_links, project_page, root_page
from llamawheel.recipe import catalog
from llamawheel.recipe.variant import index_name
from llamawheel.wheel import distmeta, requirements

from ..index_wheels import make_wheel

ROOT = Path(__file__).resolve().parents[2]


def publish(root: Path, *wheels: Path, force: bool = False) -> list[index.PublishResult]:
    return index.publish(list(wheels), index_root=root, with_closure=False, force=force)


def links(root: Path, variant: str, project: str) -> list[dict[str, str]]:
    return parse_links((root / variant / "simple" / project / "index.html").read_text())


def linked_names(root: Path, variant: str, project: str) -> list[str]:
    return [link["#text"] for link in links(root, variant, project)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def built(tmp_path: Path) -> Path:
    folder = tmp_path / "built"
    folder.mkdir()
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "wheels"


# ----------------------------------------------------------------------------- pages


def test_project_page_has_hash_escaped_requires_python_and_metadata_attributes() -> None:
    f = IndexedFile(
        name="llama_cpp_python-0.3.36+cu130.sm90-py3-none-manylinux_2_35_x86_64.whl", project="llama-cpp-python",
        version="0.3.36+cu130.sm90", sha256="ab" * 32, size=10, metadata_sha256="cd" * 32,
        requires_python='>=3.8,<4,!="3.9.0"',
    )
    text = project_page("llama-cpp-python", [f])
    assert 'data-requires-python="&gt;=3.8,&lt;4,!=&quot;3.9.0&quot;"' in text
    (link,) = parse_links(text)
    quoted = "llama_cpp_python-0.3.36%2Bcu130.sm90-py3-none-manylinux_2_35_x86_64.whl"
    assert link["href"] == f"../../files/{'ab' * 32}/{quoted}#sha256={'ab' * 32}"
    assert link["data-requires-python"] == '>=3.8,<4,!="3.9.0"'
    assert link["data-core-metadata"] == f"sha256={'cd' * 32}"
    assert "data-dist-info-metadata" not in link  # pip 23.0 (Debian 12's) misreads it: see project_page
    assert link["#text"] == f.name
    assert "<title>Links for llama-cpp-python</title>" in text


def test_page_without_requires_python_has_no_such_attribute() -> None:
    f = IndexedFile(name="x-1.0-py3-none-any.whl", project="x", version="1.0", sha256="0" * 64, size=1,
                    metadata_sha256="1" * 64)
    (link,) = parse_links(project_page("x", [f]))
    assert "data-requires-python" not in link


def test_publish_writes_normalized_names_hashes_and_metadata_files(root: Path, built: Path) -> None:
    wheel = make_wheel(built)
    wheel.with_name(wheel.name + ".json").write_text('{"schema": 1}\n')  # the build manifest travels along
    odd = make_wheel(built, name="My_Weird.Pkg", version="1.0+cpu", platform="any", requires=(), extras=(),
                     requires_python=None, package="weird")
    (result,) = publish(root, wheel, odd)
    assert result.variant == "cpu"
    url = f"{root.resolve().as_uri()}/cpu/simple"
    assert result.commands == (f'pip install --index-url {url} "llama-cpp-python[server]"',
                               f'pip install --index-url {url} "my-weird-pkg"')
    simple = root / "cpu" / "simple"
    assert [(a["href"], a["#text"]) for a in parse_links((simple / "index.html").read_text())] == [
        ("llama-cpp-python/", "llama-cpp-python"), ("my-weird-pkg/", "my-weird-pkg"),
    ]
    assert sorted(p.name for p in simple.iterdir() if p.is_dir()) == ["llama-cpp-python", "my-weird-pkg"]
    (link,) = links(root, "cpu", "llama-cpp-python")
    stored = root / "cpu" / "files" / sha256(wheel) / wheel.name
    assert stored.read_bytes() == wheel.read_bytes()
    assert link["href"].endswith(f"#sha256={sha256(wheel)}")
    assert link["data-requires-python"] == ">=3.8"
    metadata = stored.with_name(stored.name + ".metadata")
    assert metadata.read_bytes() == distmeta.read(wheel).raw
    assert b"Requires-Dist: diskcache>=5.6.1" in metadata.read_bytes()
    assert link["data-core-metadata"] == f"sha256={sha256(metadata)}"
    assert stored.with_name(stored.name + ".json").read_text() == '{"schema": 1}\n'
    assert "data-requires-python" not in links(root, "cpu", "my-weird-pkg")[0]
    top = (root / "index.html").read_text()
    assert "cpu/simple/" in top and "llama-cpp-python[server]" in top
    assert index_check.check(root).problems == []


def test_root_page_lists_projects_sorted() -> None:
    assert [a["#text"] for a in parse_links(root_page(["zeta", "alpha"]))] == ["alpha", "zeta"]


# ----------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("local", "variant"),
    [("cu130.sm90", "cu130"), ("cu130", "cu130"), ("cpu", "cpu"), ("cu124.sm86.sys", "cu124"), ("CU130.sm90", "cu130")],
)
def test_variant_is_the_first_label_of_the_local_version(local: str, variant: str) -> None:
    assert index_name(local) == variant


def test_wheel_without_local_version_is_refused(built: Path, root: Path) -> None:
    wheel = make_wheel(built, version="0.3.36")
    with pytest.raises(PublishError, match="no local version label"):
        publish(root, wheel)
    assert not (root / "cpu").exists()


def test_wheels_go_to_their_variant_folders(root: Path, built: Path) -> None:
    cuda = make_wheel(built, version="0.3.36+cu130.sm90", platform="manylinux_2_35_x86_64")
    cpu = make_wheel(built)
    results = publish(root, cuda, cpu)
    assert sorted(r.variant for r in results) == ["cpu", "cu130"]
    assert linked_names(root, "cu130", "llama-cpp-python") == [cuda.name]
    assert linked_names(root, "cpu", "llama-cpp-python") == [cpu.name]
    assert index_check.check(root).variants == ["cpu", "cu130"]


def test_python_versions_come_from_the_recipe_of_the_variant() -> None:
    cuda13 = catalog.all_recipes()["cuda-13"]
    assert index.python_versions_for("cu130") == cuda13.python_versions
    assert index.python_versions_for("cpu") == catalog.cpu_recipe().python_versions
    with pytest.raises(PublishError, match="no recipe builds the variant 'cu999'"):
        index.python_versions_for("cu999")


# ----------------------------------------------------------------------------- idempotence and refusal


def test_same_file_again_is_a_no_op(root: Path, built: Path) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    link = os.readlink(root / "cpu" / "simple")
    page = (root / "cpu" / "simple" / "llama-cpp-python" / "index.html").read_text()
    (again,) = publish(root, wheel)
    assert again.added == () and again.replaced == ()
    assert again.unchanged == (wheel.name,)
    assert os.readlink(root / "cpu" / "simple") == link, "a no-op publish must not write a new generation"
    assert (root / "cpu" / "simple" / "llama-cpp-python" / "index.html").read_text() == page


def test_different_file_under_a_published_name_is_refused(root: Path, built: Path, tmp_path: Path) -> None:
    first = make_wheel(built)
    publish(root, first)
    other_dir = tmp_path / "rebuilt"
    other_dir.mkdir()
    second = make_wheel(other_dir, payload=b"# a different build\n")
    assert second.name == first.name and sha256(second) != sha256(first)
    with pytest.raises(PublishError) as caught:
        publish(root, second)
    assert caught.value.exit_code == 10
    assert first.name in caught.value.message and sha256(second) in caught.value.message
    assert "--force" in (caught.value.tip or "")
    assert links(root, "cpu", "llama-cpp-python")[0]["href"].endswith(sha256(first))
    assert not (root / "cpu" / "files" / sha256(second)).exists()

    (forced,) = publish(root, second, force=True)
    assert forced.replaced == (second.name,)
    assert links(root, "cpu", "llama-cpp-python")[0]["href"].endswith(sha256(second))
    assert not (root / "cpu" / "files" / sha256(first)).exists(), "the replaced file stays in the store"
    report = index_check.check(root)
    assert report.problems == [] and report.orphans == []


def test_refusal_through_the_command_line(
    root: Path, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(root, make_wheel(built))
    (tmp_path / "b").mkdir()
    second = make_wheel(tmp_path / "b", payload=b"# other\n")
    code = cli.main(["publish", str(second), "--index", str(root), "--no-closure"])
    err = capsys.readouterr().err
    assert code == 10
    assert "ERROR 1 file(s) are already published under the same name with other contents" in err
    assert "TIP " in err and "--force" in err


# ----------------------------------------------------------------------------- index check


def test_check_passes_on_a_fresh_index(root: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(root, make_wheel(built))
    assert cli.main(["index", "check", str(root)]) == 0
    assert "ok: every link resolves" in capsys.readouterr().out


def test_check_finds_a_corrupted_file(root: Path, built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    stored = root / "cpu" / "files" / sha256(wheel) / wheel.name
    stored.write_bytes(stored.read_bytes() + b"\0")
    code = cli.main(["index", "check", str(root)])
    out, err = capsys.readouterr()
    assert code == 10
    assert f"PROBLEM cpu/simple/llama-cpp-python/index.html: files/{sha256(wheel)}/{wheel.name} does not match" in out
    assert "ERROR 1 problem(s) in the index" in err
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))  # the same size, other bytes
    assert len(index_check.check(root).problems) == 1
    publish(root, wheel)  # publishing the good copy again repairs the store
    assert index_check.check(root).problems == []
    assert stored.read_bytes() == wheel.read_bytes()


def test_check_finds_a_missing_file(root: Path, built: Path) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    (root / "cpu" / "files" / sha256(wheel) / wheel.name).unlink()
    report = index_check.check(root)
    assert report.problems == [f"cpu/simple/llama-cpp-python/index.html: links to files/{sha256(wheel)}/{wheel.name},"
                               " which is missing"]
    with pytest.raises(IndexCheckError):
        report.raise_if_failed()
    publish(root, wheel)
    assert index_check.check(root).problems == []


def test_check_finds_a_tampered_metadata_file(root: Path, built: Path) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    metadata = root / "cpu" / "files" / sha256(wheel) / (wheel.name + ".metadata")
    metadata.write_bytes(metadata.read_bytes().replace(b"diskcache", b"diskcach3"))
    problems = index_check.check(root).problems
    assert any("does not match data-core-metadata" in p for p in problems)
    assert any("differs from the METADATA inside the wheel" in p for p in problems)
    metadata.unlink()
    assert any(p.endswith(f"{wheel.name}.metadata is missing") for p in index_check.check(root).problems)


def test_check_lists_an_orphan_without_failing(root: Path, built: Path) -> None:
    publish(root, make_wheel(built))
    orphan = root / "cpu" / "files" / ("e" * 64) / "stray-1.0-py3-none-any.whl"
    orphan.parent.mkdir()
    orphan.write_bytes(b"not linked")
    report = index_check.check(root)
    assert report.problems == []
    assert report.orphans == [orphan]
    assert f"orphan  {orphan}" in report.render()
    publish(root, make_wheel(built))  # a publish sweeps orphans away
    assert index_check.check(root).orphans == []


def test_check_finds_an_unlisted_project_and_a_missing_index(root: Path, built: Path, tmp_path: Path) -> None:
    publish(root, make_wheel(built))
    (root / "cpu" / "simple" / "stray").mkdir()
    assert index_check.check(root).problems == ["cpu/simple/stray/ is not listed in cpu/simple/index.html"]
    assert index_check.check(tmp_path / "nothing").problems[0].endswith("no index here (no <variant>/simple/ folder)")


# ----------------------------------------------------------------------------- crash safety


def _killed_at(point: str, action: Callable[[], object]) -> None:
    """Run ``action`` in a forked child that SIGKILLs itself at ``point``; wait for it to die there."""
    pid = os.fork()
    if pid == 0:  # the child: arms the tripwire, and never returns into pytest
        try:
            _arm(point)
            action()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the child never reached {point}"


# Where each crash point is: (object, attribute) replaced in the child by a SIGKILL of itself.
CRASH_POINTS: dict[str, tuple[object, str]] = {
    "store": (os, "fsync"),  # the first fsync: a wheel's bytes are in a temp file in the store, not yet renamed
    "generation": (index, "project_page"),  # the new generation folder exists, its pages are being written
    "swap": (index, "_swap"),  # the new generation is complete, the symlink not yet swapped
    "sweep": (index, "_sweep"),  # (its 2nd call) swapped; the old generation and replaced file not yet removed
}


def _arm(point: str) -> None:
    target, attribute = CRASH_POINTS[point]
    original = getattr(target, attribute)
    calls = []

    def die(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if point == "sweep" and len(calls) == 1:
            return original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return None

    setattr(target, attribute, die)


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_publish_killed_at_any_point_leaves_a_valid_index(
    point: str, root: Path, built: Path, tmp_path: Path
) -> None:
    """A real SIGKILL, in a forked child, at each point of a publish that both adds a file and replaces one
    (with --force). Afterwards ``index check`` passes and the pages list either the old set or the new set
    of files, complete. What cannot be caused here is a power cut (written data still in the page cache):
    the fsync calls before each rename are there for that, and this test does not cover them."""
    old = make_wheel(built)
    publish(root, old)
    old_pages = {p.name: p.read_text() for p in (root / "cpu" / "simple").rglob("index.html")}
    (tmp_path / "new").mkdir()
    replaced = make_wheel(tmp_path / "new", payload=b"# rebuilt\n")
    added = make_wheel(tmp_path / "new", version="0.3.37+cpu")
    _killed_at(point, lambda: publish(root, replaced, added, force=True))

    report = index_check.check(root)
    assert report.problems == []
    hrefs = {a["href"].rsplit("#sha256=", 1)[1] for a in links(root, "cpu", "llama-cpp-python")}
    if point == "sweep":
        assert hrefs == {sha256(replaced), sha256(added)}
    else:
        assert hrefs == {sha256(old)}
        assert {p.name: p.read_text() for p in (root / "cpu" / "simple").rglob("index.html")} == old_pages
    assert report.orphans, "a killed publish leaves something unlisted behind: check names it"

    publish(root, replaced, added, force=True)  # the next publish completes and cleans up
    report = index_check.check(root)
    assert report.problems == [] and report.orphans == []
    assert sorted(linked_names(root, "cpu", "llama-cpp-python")) == sorted([replaced.name, added.name])
    hidden = [p.name for p in (root / "cpu").iterdir() if p.name.startswith(".")]
    assert hidden == [os.readlink(root / "cpu" / "simple")], "old generations and leftovers are gone"


def test_two_publishers_at_once_both_land(root: Path, built: Path) -> None:
    """Two real processes publish different wheels into one variant at the same time: the lock makes
    the second wait, and it extends what the first published instead of overwriting it."""
    wheels = [make_wheel(built, version=f"0.3.{n}+cpu") for n in range(30, 34)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "llamawheel", "publish", str(w), "--index", str(root), "--no-closure"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for w in wheels
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    assert sorted(linked_names(root, "cpu", "llama-cpp-python")) == sorted(w.name for w in wheels)
    report = index_check.check(root)
    assert report.problems == [] and report.orphans == []


def test_a_publisher_waits_for_the_lock(root: Path, built: Path) -> None:
    wheel = make_wheel(built)
    with index.publish_lock(root):
        proc = subprocess.Popen(
            [sys.executable, "-m", "llamawheel", "publish", str(wheel), "--index", str(root), "--no-closure"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        time.sleep(1.5)
        assert proc.poll() is None, "the publisher did not wait for the lock"
        assert not (root / "cpu" / "simple").exists()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "another publish to" in out and "waiting" in out
    assert linked_names(root, "cpu", "llama-cpp-python") == [wheel.name]


# ----------------------------------------------------------------------------- bundle and upload


def test_bundle_holds_the_current_pages_and_linked_files_only(root: Path, built: Path, tmp_path: Path) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    orphan = root / "cpu" / "files" / ("e" * 64) / "stray-1.0-py3-none-any.whl"
    orphan.parent.mkdir()
    orphan.write_bytes(b"x")
    out, digest = share.bundle(root, tmp_path / "out" / "site.tar.gz")
    assert (tmp_path / "out" / "site.tar.gz.sha256").read_text() == f"{digest}  site.tar.gz\n"
    assert digest == sha256(out)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    stored = f"llamawheel-index/cpu/files/{sha256(wheel)}/{wheel.name}"
    pages = {"llamawheel-index/cpu/simple/index.html", "llamawheel-index/cpu/simple/llama-cpp-python/index.html"}
    assert {stored, stored + ".metadata", "llamawheel-index/index.html", *pages} <= names
    assert not any("stray" in n or ".generation-" in n or n.endswith(".lock") for n in names)


def test_the_bundle_says_what_to_run_inside_it(
    root: Path, built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands printed and carried as OFFLINE.txt unpack, enter the folder, and install from it there."""
    publish(root, make_wheel(built))
    out = tmp_path / "site.tar.gz"
    assert cli.main(["index", "bundle", "--index", str(root), "--out", str(out)]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert printed[:3] == ["sha256sum -c site.tar.gz.sha256", "tar -xzf site.tar.gz", "cd llamawheel-index"]
    assert printed[3:] == ['pip install --index-url "file://$PWD/cpu/simple" "llama-cpp-python[server]"']
    with tarfile.open(out) as tar:
        carried = tar.extractfile("llamawheel-index/OFFLINE.txt")
        assert carried is not None
        assert [line.strip() for line in carried.read().decode().splitlines()[1:]] == printed


def test_bundle_refuses_a_damaged_index(root: Path, built: Path, tmp_path: Path) -> None:
    wheel = make_wheel(built)
    publish(root, wheel)
    (root / "cpu" / "files" / sha256(wheel) / wheel.name).write_bytes(b"damaged")
    with pytest.raises(IndexCheckError):
        share.bundle(root, tmp_path / "site.tar.gz")
    assert not (tmp_path / "site.tar.gz").exists()


def test_upload_without_twine_says_how_to_get_it(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "twine", None)  # what importlib reports when twine is not installed
    code = cli.main(["index", "upload", str(make_wheel(built)), "--repository-url", "http://127.0.0.1:9/legacy/"])
    err = capsys.readouterr().err
    assert code == 10
    assert "ERROR twine is not installed" in err
    assert "TIP pip install 'llamawheel[upload]'" in err


def test_a_refused_upload_leaves_twines_output_on_the_terminal_and_names_the_command(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "site" / "twine"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys\nprint('HTTPError: 403 Forbidden', file=sys.stderr)\nsys.exit(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    wheel = make_wheel(built)
    code = cli.main(["index", "upload", str(wheel), "--repository-url", "http://127.0.0.1:9/legacy/"])
    err = capfd.readouterr().err
    assert code == 10
    error = (f"ERROR twine upload to http://127.0.0.1:9/legacy/ failed\ncommand: {sys.executable} -m twine upload "
             f"--repository-url http://127.0.0.1:9/legacy/ {wheel}\nreturn code: 1\noutput: shown above\n"
             "TIP credentials come from ")
    assert err.index("HTTPError: 403 Forbidden\n") < err.index(error)  # twine's own words first, on the terminal


def test_upload_refuses_a_password_in_the_url(built: Path) -> None:
    with pytest.raises(UsageError, match="holds a password"):
        share.upload([make_wheel(built)], "https://user:secret@127.0.0.1/legacy/")


# ----------------------------------------------------------------------------- closure helpers


def test_platforms_cover_every_manylinux_tag_up_to_the_wheels_glibc() -> None:
    tags = requirements.platforms_for(["manylinux_2_35_x86_64"])
    assert tags[0] == "manylinux_2_35_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_36_x86_64" not in tags and "linux_x86_64" not in tags
    arm = requirements.platforms_for(["manylinux2014_aarch64", "manylinux_2_17_aarch64"])
    assert arm[0] == "manylinux_2_17_aarch64"


def test_markers_are_evaluated_for_the_target_python(tmp_path: Path) -> None:
    """pip evaluates markers for the Python it runs on; the walk over what it fetched uses the target's."""
    folder = tmp_path / "dl"
    folder.mkdir()
    root = make_wheel(folder, requires=('exceptiongroup>=1.0 ; python_version < "3.11"',
                                        'typing-extensions>=4.5 ; extra == "server"', "diskcache>=5"))
    make_wheel(folder, name="diskcache", version="5.6.3", platform="any", requires=(), extras=(), package="diskcache")
    make_wheel(folder, name="typing_extensions", version="4.1.0", platform="any", requires=(), extras=(),
               package="typing_extensions")
    platforms = requirements.platforms_for(["manylinux_2_17_x86_64"])

    def unmet(version: str, extras: tuple[str, ...]) -> list[str]:
        env = requirements.target_environment(version, "x86_64")
        return requirements.unmet_requirements(folder, root, extras, env,
                                               requirements.supported_tags(version, platforms))

    assert unmet("3.12", ()) == []
    assert unmet("3.10", ()) == ["exceptiongroup>=1.0"]
    assert unmet("3.12", ("server",)) == ["typing-extensions>=4.5"], "4.1.0 does not meet >=4.5"
    only_cp310 = make_wheel(folder, name="exceptiongroup", version="1.2.0+x", platform="manylinux_2_17_x86_64",
                            requires=(), extras=(), package="exceptiongroup")
    only_cp310.rename(folder / only_cp310.name.replace("py3-none", "cp39-cp39"))
    assert unmet("3.10", ()) == ["exceptiongroup>=1.0"], "a wheel for another Python does not count"


# ----------------------------------------------------------------------------- the lock


def _locked_index(root: Path, built: Path) -> tuple[Path, Path]:
    """A cpu index holding a llama wheel that needs diskcache, diskcache itself, and a lock naming diskcache
    (as a publish with the closure writes it); returns the lock and the diskcache wheel."""
    llama = make_wheel(built, requires=("diskcache>=5.6.1",), extras=())
    dep = make_wheel(built, name="diskcache", version="5.6.3+cpu", requires=(), extras=(), package="diskcache")
    publish(root, llama, dep)
    lock = closure.Lock("3.11", "x86_64",
                        (closure.locked_file(dep, sha256(dep), dep.stat().st_size),))
    path = (root / "cpu" / "simple").resolve() / lock.name
    path.write_text(lock.render())
    return path, dep


def test_check_verifies_the_lock_against_the_files(root: Path, built: Path) -> None:
    lock, dep = _locked_index(root, built)
    report = index_check.check(root)
    assert not report.problems and report.locks == 1
    assert "1 lock(s) match the files" in report.render()
    lock.write_text(lock.read_text().replace(sha256(dep), "f" * 64))
    problems = index_check.check(root).problems
    assert f"cpu/simple/{lock.name}: locks {dep.name} (sha256 {'f' * 64}), which no page links to" in problems
    lock.write_text("lock-version = '0.9'\n")
    assert f"cpu/simple/{lock.name}: {lock}: lock-version is '0.9', not '1.0'" in index_check.check(root).problems


def test_publish_with_a_lock_takes_the_locked_files_and_asks_pip_nothing(
    root: Path, built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock, dep = _locked_index(root, built)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip was asked to resolve although the lock covers everything")

    monkeypatch.setattr(requirements.pipfetch, "download_for", no_pip)
    newer = make_wheel(built, version="0.3.37+cpu", requires=("diskcache>=5.6.1",), extras=())
    (result,) = index.publish([newer], index_root=root, python_versions=["3.11"])
    assert result.added == (newer.name,) and dep.name in result.unchanged
    relocked = closure.read_lock(root / "cpu" / "simple" / lock.name)
    assert [(f.file, f.sha256) for f in relocked.files] == [(dep.name, sha256(dep))]
    assert relocked.roots == (newer.name,)
    assert not index_check.check(root).problems


def test_a_publish_without_the_closure_keeps_the_lock(root: Path, built: Path) -> None:
    lock, _ = _locked_index(root, built)
    before = lock.read_text()
    publish(root, make_wheel(built, version="0.3.37+cpu"))
    assert (root / "cpu" / "simple" / lock.name).read_text() == before
