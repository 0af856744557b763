"""``llamawheel image``: the slim runtime image that the stock llama-gpt UI uses as its API.

    private index (wheels/<variant>/)  ->  build context  ->  engine build (docker/Containerfile)  ->  image
                                                                        \\-> --save: OCI archive + .sha256

`base` makes the Debian bookworm base with python3 and nothing else (from the apt mirror, no registry needed), or
names a registry's. `context` chooses the wheel from the private index (its closure checked against the sha256 in
its pages, and present for the image's Python) and writes the build context. `api_image` builds the image, building
and publishing the variant's wheel and llama.cpp's server first where the index lacks them. `engine` speaks to
docker, podman or buildah; `foreign` makes another platform's image without running it; `compose` and `bundle` are
what a site runs it with.
"""

from __future__ import annotations

from llamawheel.image.api_image import Context, ImageResult, build, context_only, ensure_wheel, size_target_mb
from llamawheel.image.base import PYTHON, SUITE, base_recipe, base_ref, registry_base
from llamawheel.image.context import CONVERTER_SCRIPT, RUNTIME_FILES, IndexedWheel, build_args, chosen_wheel, tags_for

__all__ = ["CONVERTER_SCRIPT", "PYTHON", "RUNTIME_FILES", "SUITE", "Context", "ImageResult", "IndexedWheel",
           "base_recipe", "base_ref", "build", "build_args", "chosen_wheel", "context_only", "ensure_wheel",
           "registry_base", "size_target_mb", "tags_for"]
