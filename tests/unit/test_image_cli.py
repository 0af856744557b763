"""``llamawheel image`` before any engine runs: choosing the wheel from the index, tags, build arguments,
the build context, and the errors a user gets for bad input. No container is built here (that is
tests/integration/test_image.py); `pipeline.run` is a tripwire so nothing compiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llamawheel import cli, image, pipeline
from llamawheel.core.errors import UsageError
from llamawheel.image import api_image
from llamawheel.image import base as image_base
from llamawheel.image import context as image_context
from llamawheel.image import engine as image_engine
from llamawheel.mirror import profiles
from llamawheel.publish import closure, index

from ..index_wheels import make_wheel


@pytest.fixture(autouse=True)
def _no_real_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(plan: pipeline.Plan) -> Path:
        raise AssertionError(f"a unit test reached a real build of {plan.describe()}")

    monkeypatch.setattr(pipeline, "run", tripwire)


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    """An index with two cu130 builds of llama-cpp-python, the second published with llama.cpp's server of the
    release (no closure: no network)."""
    built = tmp_path / "built"
    built.mkdir()
    server = make_wheel(built, name="llamawheel_server", version="0.3.36", platform="manylinux_2_28_x86_64",
                        requires=("llama-cpp-python==0.3.36",), extras=(), package="llamawheel_server")
    for version, companions in (("0.3.36+cu130.sm86", []), ("0.3.36+cu130.sm90", [server])):
        index.publish([make_wheel(built, version=version), *companions], index_root=tmp_path / "wheels",
                      with_closure=False)
    return tmp_path / "wheels"


def _lock_for_the_image(wheels: Path, variant: str = "cu130") -> None:
    """What a publish with ``--python-version 3.11`` writes beside the pages (without its network): the lock of the
    closure for the image's Python, naming each llama-cpp-python wheel of the variant as a root."""
    pages = wheels / variant / "simple"
    roots = [f.name + "[server]" for f in index.load_state(wheels / variant).files if f.project == "llama-cpp-python"]
    lock = closure.Lock(image.PYTHON, "x86_64", (), tuple(roots))
    (pages.resolve() / lock.name).write_text(lock.render())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_newest_published_wheel_is_chosen_unless_one_is_named(wheels: Path) -> None:
    chosen = image.chosen_wheel(wheels, "cu130")
    assert chosen is not None and chosen.version == "0.3.36+cu130.sm90"
    named = image.chosen_wheel(wheels, "cu130", "0.3.36+cu130.sm86")
    assert named is not None and named.name == "llama_cpp_python-0.3.36+cu130.sm86-py3-none-manylinux_2_17_x86_64.whl"
    assert image.chosen_wheel(wheels, "cpu") is None


def test_tags_and_build_arguments_pin_the_exact_wheel(wheels: Path) -> None:
    chosen = image.chosen_wheel(wheels, "cu130")
    assert chosen is not None
    assert image.tags_for(chosen) == ("localhost/llamawheel-api:cu130", "localhost/llamawheel-api:0.3.36-cu130.sm90")
    tsinghua = profiles.load_profile("tsinghua")
    args = image.build_args("localhost/llamawheel-base:x", tsinghua, chosen)
    assert args == {"BASE_IMAGE": "localhost/llamawheel-base:x",
                    "REQUIREMENT": "llama-cpp-python==0.3.36+cu130.sm90 llamawheel-server==0.3.36 uvicorn pyyaml",
                    "APT_MIRROR": tsinghua.debian}
    assert "APT_MIRROR" not in image.build_args("b", profiles.load_profile("default"), chosen)


def test_the_registry_base_goes_through_the_profiles_docker_hub_mirror(tmp_path: Path) -> None:
    own = tmp_path / "mine.toml"
    own.write_text('dockerhub = "hub.example.internal/proxy"\n')
    assert image.registry_base(profiles.load_profile(str(own))) == (
        "hub.example.internal/proxy/library/debian:bookworm-slim")
    assert image.registry_base(profiles.load_profile("default")) == "docker.io/library/debian:bookworm-slim"


def test_the_base_name_says_what_it_was_made_from() -> None:
    ref = image.base_ref()
    assert ref.startswith("localhost/llamawheel-base:bookworm-") and len(ref.rsplit("-", 1)[1]) == 12
    assert image.base_recipe()["include"] == ["python3-minimal", "libpython3.11-stdlib", "libstdc++6"]


def test_context_only_writes_everything_the_containerfile_copies(
    wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pip = tmp_path / "pip-26.0-py3-none-any.whl"
    pip.write_bytes(b"a wheel")
    monkeypatch.setattr(image_context, "pip_wheel", lambda mirror: pip)  # no download in a unit test
    converter = tmp_path / "converter"
    (converter / "gguf").mkdir(parents=True)
    (converter / image.CONVERTER_SCRIPT).write_text("# llama.cpp's converter\n")
    monkeypatch.setattr(image_context, "converter_files", lambda mirror: converter)  # from the sdist in real builds
    _lock_for_the_image(wheels)
    dest = tmp_path / "context"
    code, out, _ = run(capsys, "image", "--variant", "cu130", "--index", str(wheels), "--context-only", str(dest))
    assert code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["Containerfile", "constraints.txt", "index", "pip", "runtime"]
    assert (dest / "constraints.txt").read_text() == "nvidia-cuda-runtime==13.0.96\nnvidia-cublas==13.0.2.14\n"
    assert (dest / "index" / "simple" / "llama-cpp-python" / "index.html").is_file()
    assert sorted(p.name for p in (dest / "runtime").iterdir()) == sorted([*image.RUNTIME_FILES, "converter"])
    assert (dest / "runtime" / "converter" / image.CONVERTER_SCRIPT).is_file()
    (listed,) = [p for p in (dest / "index" / "files").rglob("*.whl") if "sm90" in p.name]
    assert listed.stat().st_size > 0
    assert "docker build -t localhost/llamawheel-api:cu130 --build-arg BASE_IMAGE=docker.io/library/debian:" \
           "bookworm-slim --build-arg 'REQUIREMENT=llama-cpp-python==0.3.36+cu130.sm90 llamawheel-server==0.3.36 " \
           "uvicorn pyyaml'" in out
    assert (dest / "index" / "simple" / "llamawheel-server" / "index.html").is_file()
    code, _, err = run(capsys, "image", "--variant", "cu130", "--index", str(wheels), "--context-only", str(dest))
    assert code == 2 and "already exists" in err


def test_the_server_wheel_is_published_beside_the_wheels_of_its_release(wheels: Path, tmp_path: Path) -> None:
    (wheel,) = [f for f in index.load_state(wheels / "cu130").files if f.project == "llama-cpp-python"
                and "sm90" in f.name]
    chosen = image.chosen_wheel(wheels, "cu130")
    assert chosen is not None and chosen.name == wheel.name
    assert api_image.server_in(chosen) == "llamawheel_server-0.3.36-py3-none-manylinux_2_28_x86_64.whl"
    server = next((wheels / "cu130" / "files").rglob("llamawheel_server-*.whl"))
    with pytest.raises(UsageError, match="publish it together with them"):
        index.publish([server], index_root=wheels, with_closure=False)


def test_an_index_without_the_images_python_is_refused_before_anything_is_built(
    wheels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published without the dependencies for Python 3.11 (here: none at all), the index cannot make the image: said
    up front with the publish command that adds them, not by pip deep inside the build."""
    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the index was checked")

    monkeypatch.setattr(api_image, "ensure_server", tripwire)
    monkeypatch.setattr(image_engine, "find", lambda name: image_engine.Engine("podman", "podman"))
    monkeypatch.setattr(image_base, "make_base", tripwire)
    for argv in (["--context-only", str(tmp_path / "context")], []):
        code, _, err = run(capsys, "image", "--variant", "cu130", "--index", str(wheels), *argv)
        assert code == 13, err
        assert "holds llama_cpp_python-0.3.36+cu130.sm90-py3-none-manylinux_2_17_x86_64.whl but not its " \
               "dependencies for the image's Python (3.11 on x86_64); it has them for no Python" in err
        assert f"TIP add them: llamawheel publish --index {wheels} --python-version 3.11 {wheels}/cu130/files/" in err
        assert not (tmp_path / "context").exists()
    _lock_for_the_image(wheels)
    (lock,) = (wheels / "cu130" / "simple").glob("pylock.*.toml")
    lock.write_text(lock.read_text().replace("sm90", "sm89"))  # resolved for another wheel than the newest
    code, _, err = run(capsys, "image", "--variant", "cu130", "--index", str(wheels))
    assert code == 13 and "it has them for Python 3.11 on x86_64" in err


def test_context_only_for_a_variant_the_index_lacks(wheels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "image", "--variant", "cu124", "--index", str(wheels), "--context-only", "/tmp/x")
    assert code == 2
    assert f"ERROR the cu124 index in {wheels} has no llama-cpp-python wheel for x86_64 (variants there: cu130)" in err
    code, _, err = run(capsys, "image", "--variant", "cu130", "--platform", "aarch64", "--index", str(wheels),
                       "--context-only", "/tmp/x")
    assert code == 2  # the index holds x86-64 wheels only
    assert f"ERROR the cu130 index in {wheels} has no llama-cpp-python wheel for aarch64" in err


def test_an_unknown_wheel_version_lists_the_published_ones(wheels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "image", "--variant", "cu130", "--index", str(wheels), "--wheel-version", "0.3.1",
                       "--context-only", "/tmp/x")
    assert code == 2
    assert "ERROR --wheel-version 0.3.1: the cu130 index has 0.3.36+cu130.sm86, 0.3.36+cu130.sm90" in err


def test_an_unknown_engine_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "image", "--engine", "lxc")
    assert code == 2 and "ERROR --engine lxc: not one of docker, podman, buildah" in err


def _docker_client_without_daemon() -> bool:
    exe = shutil.which("docker")
    return exe is not None and not image_engine._docker_answers(exe)


@pytest.mark.skipif(not _docker_client_without_daemon(), reason="needs a docker client with no daemon, as here")
def test_docker_without_a_daemon_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "image", "--engine", "docker")
    assert code == 2 and "ERROR --engine docker: not usable here (no daemon answers;" in err


def test_no_engine_at_all_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run(capsys, "image")
    assert code == 13
    assert "ERROR no container engine here: docker (with a running daemon), podman or buildah" in err
    assert "TIP install one: apt-get install buildah" in err


@pytest.mark.parametrize(("version", "pins"), [
    ("0.3.36+cu130.sm90", ("nvidia-cuda-runtime==13.0.96", "nvidia-cublas==13.0.2.14")),  # the toolchain's own
    ("0.3.36+cu124.sm86", ("nvidia-cuda-runtime-cu12==12.4.*", "nvidia-cublas-cu12==12.4.*")),
    ("0.3.36+cu118", ("nvidia-cuda-runtime-cu11==11.8.*", "nvidia-cublas-cu11==11.11.*")),
    ("0.3.36+cu124.sm86.sys", ()),  # the system's CUDA libraries: no runtime wheels at all
    ("0.3.36+cpu", ()),
    ("0.3.36+cu990", ()),  # no recipe lists CUDA 99.0
])
def test_runtime_pins_follow_the_cuda_minor_the_wheel_was_built_with(
    tmp_path: Path, version: str, pins: tuple[str, ...]
) -> None:
    from llamawheel.publish import closure

    assert closure.runtime_pins(make_wheel(tmp_path, version=version)) == pins
