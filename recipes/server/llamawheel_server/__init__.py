"""llama.cpp's own server, running on the llama-cpp-python wheel installed beside it.

``llama-server`` (this package's console script) starts it the way the wheel itself loads llama.cpp: ggml's GPU
modules, and the one CPU variant that really runs on this machine (``llama_cpp._backends``, which tries each
instruction first rather than trusting CPUID; ``LLAMA_CPP_CPU_VARIANT`` forces one). The binary finds the wheel's
libraries by its RUNPATH; ggml looks for its backend modules in the working directory, so a folder holding links
to just those modules is made and the server starts there. Paths given to it are made absolute first.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BINARY = HERE / "llama-server"
PATH_OPTIONS = frozenset({"-m", "--model", "--mmproj", "--lora", "--chat-template-file", "--log-file",
                          "--slot-save-path", "--grammar-file", "--json-schema-file", "--media-path", "-mm",
                          "-md", "--model-draft", "--api-key-file", "--ssl-key-file", "--ssl-cert-file"})


def backend_dir(base: Path | None = None) -> tuple[Path, str | None]:
    """A folder of links to the wheel's backend modules that should be loaded here, and the CPU variant among them
    (None: ggml was built with its backends linked in, nothing to link)."""
    import llama_cpp  # loads the library and chooses the CPU variant, as an import of the wheel does
    from llama_cpp import _backends

    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    variant = _backends.CPU_VARIANT
    wanted = [p for p in sorted(lib.glob("libggml-*.so")) if p.name != "libggml-base.so"
              and (not p.name.startswith("libggml-cpu-") or p.name == f"libggml-cpu-{variant}.so")]
    top = (base or Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")) / f"llamawheel-server-{os.getuid()}"
    top.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in top.iterdir():  # one folder per server (its pid: exec keeps it); those of servers gone go
        if stale.name.isdigit() and not _running(int(stale.name)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = top / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    for module in wanted:
        (folder / module.name).symlink_to(module)
    return folder, variant


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def absolute(argv: list[str]) -> list[str]:
    """``argv`` with the values of options that name files made absolute (the server starts in another folder)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if eq and name in PATH_OPTIONS and value:
            arg = f"{name}={os.path.abspath(value)}"
        elif i > 0 and argv[i - 1] in PATH_OPTIONS and not arg.startswith("-"):
            arg = os.path.abspath(arg)
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """Replace this process with the server (same arguments), in the folder of backend modules."""
    args = absolute(list(sys.argv[1:] if argv is None else argv))
    folder, variant = backend_dir()
    if variant and os.environ.get("LLAMAWHEEL_QUIET") is None:
        print(f"llamawheel-server: llama.cpp runs its {variant} CPU code", file=sys.stderr, flush=True)
    os.chdir(folder)
    os.execv(str(BINARY), [str(BINARY), *args])
