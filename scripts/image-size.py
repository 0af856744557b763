#!/usr/bin/env python3
"""Benchmark: build the API image of each variant and print its size against the target, with timings.

    python scripts/image-size.py                      # every variant published in wheels/
    python scripts/image-size.py --variant cpu --variant cu130 --index /path/to/wheels --save-dir out/

Targets (uncompressed): the CPU image under 300 MB, the CUDA images under 1.2 GB. A build reuses the base
(made once from the apt mirror); pass --refresh-base to time a base made from scratch too. Exits 1 when an
image is over its target. It runs the real `llamawheel image`; nothing is simulated.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamawheel.image import context as image_context  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", help="cpu, cu130, cu124 ... (default: all in the index)")
    parser.add_argument("--index", type=Path, default=ROOT / "wheels")
    parser.add_argument("--save-dir", type=Path, help="also save each image as an OCI archive here")
    parser.add_argument("--refresh-base", action="store_true", help="make the base again (times it too)")
    args = parser.parse_args()
    variants = args.variant or list(image_context.variants_in(args.index))
    if not variants:
        print(f"no variants in {args.index}: publish a wheel first (llamawheel publish wheels/*.whl)")
        return 2
    rows, over = [], False
    for variant in variants:
        cmd = [sys.executable, "-m", "llamawheel", "image", "--variant", variant, "--index", str(args.index)]
        if args.refresh_base:
            cmd.append("--refresh-base")
        if args.save_dir:
            cmd += ["--save", str(args.save_dir / f"llamawheel-api-{variant}.tar")]
        started = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - started
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return result.returncode
        manifest_path = re.search(r"manifest (\S+)", result.stdout)
        assert manifest_path, result.stdout
        m = json.loads(Path(manifest_path[1]).read_text())
        target = m["size_target_bytes"]
        over |= m["size_bytes"] > target
        archive = f"{m['archive']['size_bytes'] / 1e6:.1f}" if "archive" in m else "-"
        rows.append((variant, m["llama_cpp_python"], m["size_bytes"] / 1e6, target / 1e6,
                     "yes" if m["size_bytes"] <= target else "NO", archive, m["seconds"]["base"],
                     m["seconds"]["build"], wall))
    print(f"{'variant':<8} {'llama-cpp-python':<20} {'size MB':>8} {'target':>7} {'within':>6} {'archive MB':>10}"
          f" {'base s':>7} {'build s':>8} {'wall s':>7}")
    for v, ver, size, target, ok, archive, base_s, build_s, wall in rows:
        print(f"{v:<8} {ver:<20} {size:>8.1f} {target:>7.0f} {ok:>6} {archive:>10} {base_s:>7.1f} {build_s:>8.1f}"
              f" {wall:>7.1f}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
