"""Recipes: every shipped file loads, and a malformed one fails naming the file, the key
and the closest valid spelling."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from llamawheel.core.compat import tomllib
from llamawheel.core.errors import RecipeError, UsageError
from llamawheel.recipe import catalog

from .helpers import RECIPES_DIR

SHIPPED = catalog.recipe_files(RECIPES_DIR)
DEFAULTS = RECIPES_DIR / "defaults.toml"
CUDA13 = RECIPES_DIR / "cuda-13.toml"
NVCC_SHA = "56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"


def test_the_shipped_recipes_include_cuda_13_and_cpu() -> None:
    assert {p.stem for p in SHIPPED} >= {"cuda-13", "cpu"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_loads(path: Path) -> None:
    recipe = catalog.load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.path == path
    assert recipe.kind in ("cuda", "cpu")
    assert re.fullmatch(r"\d+\.\d+\.\d+", recipe.llama_cpp_python.version)
    if recipe.kind == "cpu":
        assert recipe.minors == {}
        assert not any("GGML_CUDA" in a for a in recipe.cmake_args)
        return
    line = path.stem.removeprefix("cuda-")
    assert recipe.default_minor in recipe.minors
    assert "-DGGML_CUDA=ON" in recipe.cmake_args
    for version, minor in recipe.minors.items():
        # find_cuda resolves "13.x" through the file cuda-13.toml: a minor of another line would be unreachable
        assert version.split(".")[0] == line, f"{path.name} lists minor {version}, which is not CUDA {line}"
        assert minor.major == int(line)
        if minor.provider == "pypi":
            assert minor.packages
            assert all(pkg.sha256 for pkg in minor.packages)
        if minor.provider == "deb":
            assert minor.apt is not None and minor.deb_packages
            # exact Debian versions; globs only where the package name itself carries the minor
            for deb in minor.deb_packages:
                assert not deb.is_glob or minor.version.replace(".", "-") in deb.name, deb
    assert {t.sm for t in recipe.default_targets()} <= set(recipe.supported_archs)


def test_shipped_recipes_all_resolve_through_find_cuda() -> None:
    for path in SHIPPED:
        recipe = catalog.load_recipe(path)
        for version in recipe.minors:
            found, minor = catalog.find_cuda(version, RECIPES_DIR)
            assert (found.name, minor.version) == (recipe.name, version)


def _write_variant(tmp_path: Path, old: str, new: str, *, name: str = "cuda-13.toml", count: int = 1) -> Path:
    """A copy of the shipped cuda-13 recipe with ``old`` replaced by ``new`` (checked to be there)."""
    text = CUDA13.read_text()
    assert text.count(old) >= count, f"the shipped recipe no longer contains {old!r}: update this test"
    out = tmp_path / name
    out.write_text(text.replace(old, new, count))
    _copy_defaults(tmp_path)
    return out


def _copy_defaults(folder: Path) -> None:
    """``defaults.toml`` and the patches it names, beside a recipe written to ``folder``."""
    shutil.copy(DEFAULTS, folder / DEFAULTS.name)
    shutil.copytree(RECIPES_DIR / "patches", folder / "patches", dirs_exist_ok=True)


def _load_error(path: Path) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        catalog.load_recipe(path)
    assert info.value.exit_code == 3
    assert str(path) in info.value.message
    return info.value


def test_unknown_top_level_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, "default-minor = ", "default-minr = ")
    err = _load_error(path)
    assert "key 'default-minr'" in err.message
    assert 'did you mean "default-minor"?' in err.message
    assert err.tip is not None and "default-minor" in err.tip


def test_misspelled_package_sha256_names_the_dotted_key(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, f'sha256 = "{NVCC_SHA}"', f'sha265 = "{NVCC_SHA}"')
    err = _load_error(path)
    assert "key 'minors.13.0.packages[0].sha265'" in err.message
    assert 'did you mean "sha256"?' in err.message


def test_misspelled_key_in_cuda_table_names_the_dotted_key(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, "supported-archs = ", "suported-archs = ")
    err = _load_error(path)
    assert "key 'cuda.suported-archs'" in err.message
    assert 'did you mean "supported-archs"?' in err.message


def test_package_without_sha256_fails_naming_the_key(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, f', sha256 = "{NVCC_SHA}"', "")
    err = _load_error(path)
    assert "key 'minors.13.0.packages[0].sha256'" in err.message
    assert "is missing" in err.message


@pytest.mark.parametrize("bad", ["not-a-hash", NVCC_SHA[:-1], NVCC_SHA.upper()], ids=["word", "short", "uppercase"])
def test_package_with_non_hex_sha256_fails_naming_the_key(tmp_path: Path, bad: str) -> None:
    path = _write_variant(tmp_path, NVCC_SHA, bad)
    err = _load_error(path)
    assert "key 'minors.13.0.packages[0].sha256'" in err.message
    assert f"'{bad}' is not a lowercase hex sha256" in err.message


def test_sdist_sha256_must_be_hex(tmp_path: Path) -> None:
    sdist_sha = catalog.load_recipe(CUDA13).llama_cpp_python.sha256
    recipe = _write_variant(tmp_path, "", "")
    defaults = tmp_path / DEFAULTS.name
    defaults.write_text(DEFAULTS.read_text().replace(f'sha256 = "{sdist_sha}"', 'sha256 = "TODO"'))
    with pytest.raises(RecipeError) as info:
        catalog.load_recipe(recipe)
    assert str(defaults) in info.value.message  # the file the mistake is in, not the recipe that uses it
    assert "key 'llama-cpp-python.sha256'" in info.value.message
    assert "'TODO' is not a lowercase hex sha256" in info.value.message


def test_defaults_are_shared_and_a_recipe_can_replace_them(tmp_path: Path) -> None:
    shipped = catalog.load_recipe(CUDA13)
    assert shipped.llama_cpp_python == catalog.cpu_recipe(RECIPES_DIR).llama_cpp_python
    assert "llama-cpp-python" not in CUDA13.read_text()  # one pin, in defaults.toml
    assert shipped.cmake_args[-2:] == ("-DGGML_CUDA=ON", "-DGGML_CUDA_NO_VMM=ON")  # the recipe's own come last
    assert "-DGGML_NATIVE=OFF" in shipped.cmake_args  # from defaults.toml
    path = _write_variant(tmp_path, 'kind = "cuda"', 'kind = "cuda"\npython-versions = ["3.12"]')
    assert catalog.load_recipe(path).python_versions == ("3.12",)
    assert [p.name for p in shipped.patch_files] == ["stream-incremental.patch", "backend-modules.patch",
                                                   "cpu-variants-compiler.patch", "subprocess-glibc-2.28.patch"]
    assert shipped.build.env == "bullseye"  # from defaults.toml
    assert shipped.build.glibc == "2.28"


def test_a_missing_patch_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, "", "")
    (tmp_path / "patches" / "backend-modules.patch").unlink()
    err = _load_error(path)
    assert "key 'build.patches'" in err.message and "backend-modules.patch" in err.message


def test_without_defaults_a_recipe_must_pin_the_sdist_itself(tmp_path: Path) -> None:
    path = tmp_path / CUDA13.name
    shutil.copy(CUDA13, path)
    err = _load_error(path)
    assert "key 'llama-cpp-python'" in err.message and "is missing" in err.message


def test_unknown_key_in_defaults_names_defaults_toml(tmp_path: Path) -> None:
    recipe = _write_variant(tmp_path, "", "")
    defaults = tmp_path / DEFAULTS.name
    defaults.write_text(DEFAULTS.read_text().replace("python-versions", "python-version"))
    with pytest.raises(RecipeError) as info:
        catalog.load_recipe(recipe)
    assert str(defaults) in info.value.message
    assert 'did you mean "python-versions"?' in info.value.message


def test_the_published_schema_is_the_one_the_dataclasses_give() -> None:
    published = json.loads((RECIPES_DIR / catalog.SCHEMA_FILE).read_text())
    assert published == catalog.schema(), "recipes/recipe.schema.json is stale: llamawheel recipes --schema > it"


def test_the_schema_knows_every_key_a_shipped_recipe_uses() -> None:
    schema = catalog.schema()

    def keys_ok(data: object, node: dict[str, object], where: str) -> None:
        if not isinstance(data, dict):
            return
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key, value in data.items():
            sub = props.get(key) if isinstance(props, dict) else (extra if isinstance(extra, dict) else None)
            assert isinstance(sub, dict), f"{where}{key} is not in the schema"
            items = sub.get("items")
            for item in value if isinstance(value, list) and isinstance(items, dict) else []:
                keys_ok(item, items, f"{where}{key}[].")
            keys_ok(value, sub, f"{where}{key}.")

    for path in [*SHIPPED, DEFAULTS]:
        keys_ok(tomllib.loads(path.read_text()), schema, f"{path.name}: ")


def test_default_minor_must_be_listed(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, 'default-minor = "13.0"', 'default-minor = "13.9"')
    err = _load_error(path)
    assert "key 'default-minor'" in err.message
    assert "'13.9' is not one of the listed minors" in err.message


def test_unknown_provider_suggests_the_close_one(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, 'provider = "pypi"', 'provider = "pipy"')
    err = _load_error(path)
    assert "key 'minors.13.0.provider'" in err.message
    assert 'did you mean "pypi"?' in err.message


def test_default_arch_outside_supported_archs_fails(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, 'default-archs = ["75",', 'default-archs = ["35", "75",')
    err = _load_error(path)
    assert "key 'cuda.default-archs'" in err.message
    assert "'35' is not in supported-archs" in err.message


def test_wrong_type_names_the_expected_type(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, 'kind = "cuda"', "kind = 13")
    err = _load_error(path)
    assert "key 'kind'" in err.message
    assert "must be a string, not int" in err.message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cuda-13.toml"
    path.write_text('kind = "cuda\n')
    err = _load_error(path)
    assert "not valid TOML" in err.message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    err = _load_error(tmp_path / "cuda-99.toml")
    assert "no such file" in err.message


def test_find_cuda_unknown_minor_lists_known_versions() -> None:
    with pytest.raises(UsageError) as info:
        catalog.find_cuda("13.9", RECIPES_DIR)
    assert info.value.exit_code == 2
    assert "unknown CUDA version 13.9" in info.value.message
    assert info.value.tip is not None
    assert info.value.tip.startswith("known CUDA versions: ")
    known = info.value.tip.removeprefix("known CUDA versions: ").split(", ")
    assert "13" in known and "13.0" in known
    assert "13.9" not in known
    assert set(catalog.load_recipe(CUDA13).minors) <= set(known)


def test_find_cuda_unknown_line_lists_known_versions() -> None:
    with pytest.raises(UsageError) as info:
        catalog.find_cuda("10.2", RECIPES_DIR)
    assert "unknown CUDA version 10.2" in info.value.message
    assert info.value.tip is not None and "13.0" in info.value.tip


def test_find_cuda_line_gives_its_default_minor() -> None:
    recipe, minor = catalog.find_cuda("13", RECIPES_DIR)
    assert recipe.name == "cuda-13"
    assert minor.version == "13.0"
    assert minor.tag == "cu130"
    assert minor.major == 13


def test_find_cuda_in_another_folder(tmp_path: Path) -> None:
    _write_variant(tmp_path, 'default-minor = "13.0"', 'default-minor = "13.2"')
    _, minor = catalog.find_cuda("13", tmp_path)
    assert minor.version == "13.2"
    assert minor.tag == "cu132"


def test_minor_tag() -> None:
    recipe = catalog.load_recipe(CUDA13)
    assert recipe.minors["13.0"].tag == "cu130"
    assert recipe.minors["13.5"].tag == "cu135"


def test_cpu_recipe_has_no_cuda_versions() -> None:
    cpu = catalog.cpu_recipe(RECIPES_DIR)
    assert cpu.kind == "cpu"
    with pytest.raises(UsageError, match="builds for the CPU"):
        cpu.minor(None)


def test_cpu_recipe_missing_is_reported(tmp_path: Path) -> None:
    shutil.copy(CUDA13, tmp_path / CUDA13.name)
    _copy_defaults(tmp_path)
    with pytest.raises(RecipeError, match=r"no recipes/cpu\.toml"):
        catalog.cpu_recipe(tmp_path)


def test_requirement_line_pins_version_and_hash() -> None:
    nvcc = catalog.load_recipe(CUDA13).minors["13.0"].packages[0]
    assert nvcc.requirement_line() == f"nvidia-cuda-nvcc==13.0.88 --hash=sha256:{NVCC_SHA}"


def test_runtime_pins_must_name_a_runtime_requirement(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, '[minors."13.0"]\n', '[minors."13.0"]\nruntime-pins = ["nvidia-cublass==13.0.*"]\n')
    err = _load_error(path)
    assert "key 'minors.13.0.runtime-pins'" in err.message
    assert "'nvidia-cublass' is not one of runtime-requires" in err.message
    assert 'did you mean "nvidia-cublas"?' in err.message


def test_runtime_pins_default_to_the_toolchains_own_pins() -> None:
    _, minor = catalog.find_cuda("13.0")
    assert minor.runtime_pins == ("nvidia-cuda-runtime==13.0.96", "nvidia-cublas==13.0.2.14")
    _, deb_minor = catalog.find_cuda("12.4")
    assert deb_minor.runtime_pins == ("nvidia-cuda-runtime-cu12==12.4.*", "nvidia-cublas-cu12==12.4.*")
