"""The GGUF header reader (gpu_layers, and convert's check of a cached conversion) on crafted headers: huge
counts, huge lengths, deep nesting. Each gets GgufError naming the file and what is wrong, at once: never a
MemoryError, a RecursionError, a traceback or a read of the whole file.

The huge files are sparse (``os.truncate``): they take no disk, but a reader that trusted the header would
read or allocate gigabytes from them."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from llamawheel.runtime import gpu_layers
from llamawheel.runtime.gpu_layers import GgufError, read_gguf_header, read_layout

GIB = 1 << 30
HUGE = 1 << 62
U32, U64, F32, STRING, ARRAY = 4, 10, 6, 8, 9


def text(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def entry(key: bytes, vtype: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", vtype) + payload


def header(*entries: bytes, tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(entries)) + b"".join(entries)


LLAMA = entry(b"general.architecture", STRING, text(b"llama"))


def crafted(tmp_path: Path, data: bytes, size: int = 0) -> Path:
    """``data``, then zeros up to ``size`` bytes (a sparse file)."""
    path = tmp_path / "crafted.gguf"
    path.write_bytes(data)
    if size:
        os.truncate(path, size)
    return path


def test_a_header_claiming_2_to_the_62_tensors_is_refused_before_reading_them(tmp_path: Path) -> None:
    path = crafted(tmp_path, header(tensors=HUGE), 64 * GIB)  # 64 GiB of zeros: empty tensor entries
    with pytest.raises(GgufError, match=f"crafted.gguf: the header says {HUGE} tensors; at most 65536"):
        read_gguf_header(path)


def test_a_header_claiming_2_to_the_62_keys_is_refused_before_reading_them(tmp_path: Path) -> None:
    path = crafted(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 0, HUGE), 64 * GIB)
    with pytest.raises(GgufError, match=f"the header says {HUGE} metadata keys; at most 65536"):
        read_gguf_header(path)


def test_more_tensors_than_the_file_can_hold_is_a_truncated_file(tmp_path: Path) -> None:
    path = crafted(tmp_path, header(LLAMA, tensors=60000))
    with pytest.raises(GgufError, match=r"truncated: .* the header says 60000 tensors, at least 1440000 bytes"):
        read_gguf_header(path)


def test_a_32_gib_key_is_refused_before_reading_it(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 32 * GIB)
    path = crafted(tmp_path, data, 64 * GIB)
    with pytest.raises(GgufError, match=f"a metadata key at byte 24 is {32 * GIB} bytes long; at most 65535"):
        read_gguf_header(path)


def test_a_16_gib_string_value_is_refused_before_reading_it(tmp_path: Path) -> None:
    data = header(LLAMA, text(b"general.name") + struct.pack("<IQ", STRING, 16 * GIB))
    path = crafted(tmp_path, data, 32 * GIB)
    with pytest.raises(GgufError, match=f"the string general.name at byte \\d+ is {16 * GIB} bytes long; at most"):
        read_gguf_header(path)


def test_an_array_of_2_to_the_62_strings_is_refused_before_reading_them(tmp_path: Path) -> None:
    data = header(entry(b"tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, HUGE)))
    path = crafted(tmp_path, data, 64 * GIB)
    with pytest.raises(GgufError, match=f"the header says {HUGE} elements in the array tokenizer.ggml.tokens;"
                                        " at most 16777216"):
        read_gguf_header(path)


def test_arrays_nested_100000_deep_are_refused(tmp_path: Path) -> None:
    nested = struct.pack("<IQ", ARRAY, 1) * 100_000 + struct.pack("<IQ", U32, 0)
    path = crafted(tmp_path, header(entry(b"x", ARRAY, nested)))
    with pytest.raises(GgufError, match=r"crafted\.gguf: x nests arrays in arrays more than 4 deep"):
        read_gguf_header(path)


def test_a_block_count_of_2_to_the_40_is_refused(tmp_path: Path) -> None:
    path = crafted(tmp_path, header(LLAMA, entry(b"llama.block_count", U64, struct.pack("<Q", 1 << 40))))
    with pytest.raises(GgufError, match=f"the header says {1 << 40} blocks; at most 65536"):
        read_layout(path)


def test_a_block_count_that_is_not_a_number_is_missing(tmp_path: Path) -> None:
    path = crafted(tmp_path, header(LLAMA, entry(b"llama.block_count", F32, struct.pack("<f", math.nan))))
    with pytest.raises(GgufError, match=r"no llama\.block_count in the metadata"):
        read_layout(path)


def test_an_alignment_that_is_not_a_power_of_two_is_refused(tmp_path: Path) -> None:
    path = crafted(tmp_path, header(LLAMA, entry(b"general.alignment", U32, struct.pack("<I", 48))))
    with pytest.raises(GgufError, match=r"general\.alignment is 48, not a power of two"):
        read_gguf_header(path)


def test_the_command_line_says_what_is_wrong_without_a_traceback(tmp_path: Path) -> None:
    nested = struct.pack("<IQ", ARRAY, 1) * 100_000 + struct.pack("<IQ", U32, 0)
    path = crafted(tmp_path, header(LLAMA, entry(b"x", ARRAY, nested)))
    out = subprocess.run([sys.executable, "-m", "llamawheel.runtime.gpu_layers", str(path), "--free-mib", "8192"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: {path}: x nests arrays") and "Traceback" not in out.stderr


def test_the_tensor_size_table_is_ggmls() -> None:
    """GGML_BLOCKS sizes tensors for the file-length check; the gguf package has the same table."""
    known = {int(t): sizes for t, sizes in gguf.constants.GGML_QUANT_SIZES.items()}
    assert {t: known[t] for t in gpu_layers.GGML_BLOCKS} == gpu_layers.GGML_BLOCKS


def test_a_tensor_name_of_a_megabyte_is_refused(tmp_path: Path) -> None:
    """65,536 tensors with long names would hold gigabytes: names are as short as llama.cpp allows (and more)."""
    path = crafted(tmp_path, header(LLAMA, tensors=1) + text(b"t" * (1 << 20)) + struct.pack("<IIQ", 0, 0, 0))
    with pytest.raises(GgufError, match=r"a tensor name at byte \d+ is 1048576 bytes long; at most 256"):
        read_gguf_header(path)
