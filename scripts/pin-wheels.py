#!/usr/bin/env python3
"""Print recipe ``packages`` entries (name, version, sha256) for pip requirements.

Maintainer tool for adding a CUDA minor to a recipe: it asks pip (with this
machine's own index configuration) which file it would take for each
``name==version`` on Linux x86_64 and prints the sha256 pip's index publishes.

    python scripts/pin-wheels.py nvidia-cuda-nvcc==13.1.115 nvidia-cublas==13.2.1.1
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
             "--only-binary=:all:", "--quiet", "--report", str(report), *argv],
            check=True,
        )
        data = json.loads(report.read_text())
    for item in data["install"]:
        meta = item["metadata"]
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        print(f'  {{ name = "{meta["name"]}", version = "{meta["version"]}", sha256 = "{sha}" }},')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
