"""The container engines ``llamawheel image`` drives: docker (when its daemon answers), podman or buildah.

The three take the same Containerfile; what differs is how each is asked to build, import a root file
system, measure, save and remove an image. buildah and podman build in Docker's image format, the one
that keeps ``HEALTHCHECK``, and default to chroot isolation (works as root without a runtime that can
create cgroups; ``BUILDAH_ISOLATION`` overrides).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamawheel.core import log, proc
from llamawheel.core.errors import ImageError, UsageError

ENGINES = ("docker", "podman", "buildah")
SAVE_FORMATS = ("oci", "docker")


@dataclass(frozen=True)
class Engine:
    name: str
    exe: str

    def env(self) -> dict[str, str]:
        if self.name == "docker" or os.environ.get("BUILDAH_ISOLATION"):
            return {}
        return {"BUILDAH_ISOLATION": "chroot"}

    def _run(self, args: Sequence[str], what: str, on_line: Callable[[str], None] | None = None,
             log_file: Path | None = None) -> list[str]:
        return proc.stream([self.exe, *args], error=ImageError, what=f"{self.name} could not {what}",
                           tip="the full output is above; the build log is kept in the cache (images/*.log)",
                           env=self.env(), on_line=on_line, log_file=log_file).lines()

    def _query(self, args: Sequence[str]) -> proc.Result:
        """A short question to the engine: its answer, whatever the return code (the callers judge it)."""
        return proc.run([self.exe, *args], error=ImageError, what=f"{self.name} could not answer {shlex.join(args)}",
                        check=False, env=self.env(), timeout=300)

    def _inspect(self) -> list[str]:
        """The command that inspects an image (buildah's ``inspect`` also reads containers)."""
        return ["inspect", "--type", "image"] if self.name == "buildah" else ["image", "inspect"]

    def has_image(self, ref: str) -> bool:
        return self._query([*self._inspect(), ref]).returncode == 0

    def build(self, context: Path, tag: Sequence[str], build_args: Mapping[str, str], log_file: Path,
              on_line: Callable[[str], None], arch: str = "") -> None:
        """Build ``context``'s Containerfile; ``arch`` (Debian's name: ``arm64``) for another machine's image."""
        args = ["bud"] if self.name == "buildah" else ["build"]
        if self.name != "docker":
            args += ["--format", "docker", "--layers=false"]
        if arch:
            args += ["--platform", f"linux/{arch}"]
        for t in tag:
            args += ["-t", t]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        args += ["-f", str(context / "Containerfile"), str(context)]
        self._run(args, "build the image", on_line=on_line, log_file=log_file)

    def import_rootfs(self, tarball: Path, ref: str, env: Mapping[str, str], arch: str = "") -> None:
        """Make an image from a root file system tarball (what mmdebstrap writes); ``arch`` (``arm64``) for another
        machine's."""
        if self.name == "buildah":
            container = self._run(["from", "scratch"], "start an empty container")[-1].strip()
            try:
                self._run(["add", container, str(tarball), "/"], "unpack the base into it")
                config = [f"--env={k}={v}" for k, v in env.items()] + ([f"--arch={arch}"] if arch else [])
                self._run(["config", *config, "--cmd", "/bin/sh", container], "configure the base")
                self._run(["commit", "--quiet", "--format", "docker", container, ref], "commit the base")
            finally:
                self._query(["rm", container])
        else:
            flags = [x for k, v in env.items() for x in ("--change", f"ENV {k}={v}")]
            flags += ["--platform", f"linux/{arch}"] if arch else []
            self._run(["import", *flags, str(tarball), ref], "import the base")

    def size(self, ref: str) -> int:
        """The image's uncompressed size in bytes, as the engine reports it."""
        if self.name == "buildah":  # it reports only a rounded "93.3 MB": count the files instead
            return self._content_size(ref)
        result = self._query([*self._inspect(), "--format", "{{.Size}}", ref])
        if result.returncode == 0 and result.stdout.strip().isdigit():
            return int(result.stdout.strip())
        raise ImageError(f"{self.name} could not report the size of {ref}: {result.stderr.strip()}")

    def _content_size(self, ref: str) -> int:
        """Bytes of every file and link in the image's file system (what its layers hold unpacked)."""
        started = self._query(["from", "--pull-never", ref])
        if started.returncode != 0:
            raise ImageError(f"buildah could not open {ref}: {started.stderr.strip()}")
        container = started.stdout.strip().splitlines()[-1]
        try:
            mounted = self._query(["mount", container])
            if mounted.returncode != 0:
                raise ImageError(f"buildah could not mount {ref}: {mounted.stderr.strip()}")
            total = 0
            for folder, dirs, files in os.walk(mounted.stdout.strip()):
                for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                    total += os.lstat(os.path.join(folder, name)).st_size
            return total
        finally:
            self._query(["rm", container])

    def image_id(self, ref: str) -> str:
        field = "{{.FromImageID}}" if self.name == "buildah" else "{{.Id}}"
        result = self._query([*self._inspect(), "--format", field, ref])
        return result.stdout.strip().removeprefix("sha256:")

    def save(self, ref: str, out: Path, fmt: str = "oci") -> None:
        """Write the image as an OCI archive, or (``fmt="docker"``) a Docker archive, which keeps the health
        check that OCI's image configuration has no field for."""
        if self.name == "buildah":  # the full name: a short one would be read as docker.io/library/...
            self._run(["push", "--quiet", ref, f"{fmt}-archive:{out}:{ref}"], "save the image")
        elif self.name == "podman":
            self._run(["save", "--format", f"{fmt}-archive", "-o", str(out), ref], "save the image")
        else:  # docker save writes one archive that both docker load and OCI tools read
            self._run(["save", "-o", str(out), ref], "save the image")

    def remove(self, ref: str) -> None:
        self._query(["rmi", ref])


def archive_ref(archive: Path) -> str:
    """The image name an OCI or Docker archive carries (what ``podman load``/``docker load`` will call it);
    '' when it carries none."""
    try:
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            if "manifest.json" in names:  # Docker archive
                member = tar.extractfile("manifest.json")
                tags = json.load(member)[0].get("RepoTags") or [""] if member else [""]
                return str(tags[0])
            if "index.json" in names:
                member = tar.extractfile("index.json")
                manifests = json.load(member).get("manifests", []) if member else []
                return str(manifests[0].get("annotations", {}).get("org.opencontainers.image.ref.name", "")) \
                    if manifests else ""
    except (OSError, tarfile.TarError, ValueError, IndexError, KeyError):
        return ""
    return ""


def _docker_answers(exe: str) -> bool:
    answer = proc.probe([exe, "info"], timeout=20)
    return answer is not None and answer.ok


def find(preferred: str | None = None) -> Engine:
    """The engine to build with: ``preferred``, else docker (if its daemon answers), podman, buildah."""
    if preferred is not None and preferred not in ENGINES:
        raise UsageError(f"--engine {preferred}: not one of {', '.join(ENGINES)}")
    present = {name: path for name in ENGINES if (path := shutil.which(name))}
    if preferred is not None:
        exe = present.get(preferred)
        if exe is None or (preferred == "docker" and not _docker_answers(exe)):
            found = ", ".join(present) or "none"
            why = "no daemon answers" if exe else "not installed"
            raise UsageError(f"--engine {preferred}: not usable here ({why}; found: {found})",
                             "leave --engine out to use whichever engine works")
        return Engine(preferred, exe)
    for name, exe in present.items():
        if name == "docker" and not _docker_answers(exe):
            log.info("docker is installed but no daemon answers: trying podman and buildah")
            continue
        return Engine(name, exe)
    raise ImageError("no container engine here: docker (with a running daemon), podman or buildah",
                     "install one: apt-get install buildah (it needs no daemon)")
