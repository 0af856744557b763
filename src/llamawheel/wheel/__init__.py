"""Wheel facts: what a wheel holds, read from the wheel itself, never from its name alone:
file name and METADATA (`distmeta`), its members (`wheelfile`), ELF files and CUDA fat binaries (`elf`),
and the manylinux policy its libraries earn (`policy`)."""
