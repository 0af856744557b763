"""The ``image`` command: argument parsing and output only; the work is done in `image`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from llamawheel.core import log, paths
from llamawheel.image.engine import SAVE_FORMATS
from llamawheel.recipe import platforms


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``image`` to the top-level subcommands."""
    p = sub.add_parser("image", help="build the slim API image for llama-gpt from the private index")
    p.add_argument("--variant", default="cpu", help="the index variant to install: cpu, cu130, cu124 ... (default cpu)")
    p.add_argument("--index", type=Path, help="index folder (default: wheels/)")
    p.add_argument("--platform", help="the machine the image runs on: x86_64 (default) or aarch64 (built here "
                                      "without running anything of it; run it on Arm, or under QEMU)")
    p.add_argument("--wheel-version", help="the llama-cpp-python version to install (default: the newest published)")
    p.add_argument("--mirror", help="mirror profile: the apt mirror for the base, the registry mirror for --base")
    p.add_argument("--engine", help="docker, podman or buildah (default: the first that works here)")
    p.add_argument("--base", help="base image reference, or 'registry' for Debian's slim image through the profile's"
                                  " registry mirror (default: made from the apt mirror with mmdebstrap)")
    p.add_argument("--refresh-base", action="store_true", help="make the mmdebstrap base again (security updates)")
    p.add_argument("--save", type=Path, metavar="FILE", help="also write the image as an OCI archive (+ .sha256)")
    p.add_argument("--save-format", choices=SAVE_FORMATS, default="oci",
                   help="oci (default) or docker: a Docker archive keeps the image's health check")
    p.add_argument("--context-only", type=Path, metavar="DIR",
                   help="write the build context to DIR and print the build command, without building")

    c = sub.add_parser("compose-env", help="write docker/.env so that docker compose uses this API image, pulls "
                                           "llama-gpt's UI through the mirror profile, and has an API key of its own")
    c.add_argument("--variant", default="cu130", help="the API image's variant: cu130, cpu ... (default cu130)")
    c.add_argument("--mirror", help="mirror profile: its ghcr mirror serves the UI image")
    c.add_argument("--env-file", type=Path,
                   help="the file to write (default: docker/.env of the root, --root or a source tree, else .env "
                        "here)")


def _cmd_compose_env(args: argparse.Namespace) -> int:
    from llamawheel.image import compose
    from llamawheel.mirror import profiles

    mirror = profiles.load_profile(args.mirror)
    root = paths.root()
    target = args.env_file or (root / "docker" / ".env" if root else Path(".env"))
    values = compose.compose_env(mirror, args.variant, compose.read_env(target))
    compose.write_env(target, values)
    print(f"wrote {target} ({mirror.name} mirror profile; readable by you only):")
    for key, value in values.items():
        print(f"    {key}={'(a new key: the UI sends it, the API requires it)' if key == 'API_KEY' else value}")
    if "API_KEY" not in values:
        print("    API_KEY kept as it was")
    if not mirror.ghcr:
        print("    (the profile names no ghcr.io mirror: the UI comes from ghcr.io itself; where that is blocked, "
              "load it from an archive: llamawheel index bundle --ui-archive)")
    compose_file = paths.data_dir("docker") / "compose.yaml"
    print(f"then: docker compose -f {compose_file} --env-file {target} up")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    from llamawheel import image
    from llamawheel.image import engine as image_engine
    from llamawheel.mirror import profiles

    mirror = profiles.load_profile(args.mirror)
    index_root = (args.index or paths.wheels_dir()).resolve()
    target = platforms.get(args.platform or platforms.X86_64.name)
    if args.context_only:
        context = image.context_only(index_root, args.variant, args.wheel_version, target, mirror,
                                     args.context_only.resolve(), args.base)
        if not target.native:
            print(f"(the base {context.base} is made by llamawheel image --platform {target.name}: mmdebstrap's "
                  "extract variant, imported with its architecture)")
        print(f"wrote the build context for llama-cpp-python {context.wheel.version} to {context.folder}; build it "
              "with:")
        print(f"    {shlex.join(context.command)}")
        print("(podman build and buildah bud take the same arguments; add --format docker to keep the health check)")
        return 0
    engine = image_engine.find(args.engine)
    wheel = image.ensure_wheel(index_root, args.variant, mirror, args.wheel_version, target)
    base = image.registry_base(mirror) if args.base == "registry" else args.base
    result = image.build(engine, wheel, mirror, base=base, refresh_base=args.refresh_base, save=args.save,
                         save_format=args.save_format)
    size_target = image.size_target_mb(wheel.variant)
    print(f"built {', '.join(result.tags)} with {engine.name}")
    print(f"    size {log.human_size(result.size)} uncompressed (target: under {size_target} MB)")
    print(f"    manifest {result.manifest_path}")
    if result.archive is not None:
        print(f"    archive {result.archive} (sha256 {result.archive_sha256})")
        print("    on the offline machine: sha256sum -c " + result.archive.name + ".sha256 && podman load -i "
              + result.archive.name + "   (or docker load -i)")
    profile = args.mirror or mirror.name
    print(f"    for docker compose: llamawheel compose-env --variant {result.tags[0].split(':')[-1]} --mirror {profile}"
          "   (writes docker/.env: this image, and llama-gpt's UI through the profile's ghcr mirror)")
    return 0


COMMANDS = {"image": _cmd_image, "compose-env": _cmd_compose_env}
