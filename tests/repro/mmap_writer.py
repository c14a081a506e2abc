#!/usr/bin/env python3
"""Writes a counter through a shared mapping of FILE, never a system call: first at offset 0, then
at 8 MiB, forever. Stores to a page already dirty do not stamp the file's times, so only a sync
(which write-protects the pages again) makes the next store visible in its ctime. A consistent
copy has the counter at 0 equal to the one at 8 MiB or one ahead. Used by tests/live.rs and
mmap_zero_page.py.

    python3 tests/repro/mmap_writer.py FILE
"""
import mmap
import os
import struct
import sys

fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 8 << 20 | 4096)
m = mmap.mmap(fd, 8 << 20 | 4096)
n = 0
while True:
    n += 1
    struct.pack_into("<Q", m, 0, n)
    struct.pack_into("<Q", m, 8 << 20, n)
