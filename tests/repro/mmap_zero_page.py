#!/usr/bin/env python3
"""A kernel behaviour that breaks any backup of files written through mmap (no Cairn involved).

One process stores a counter through MAP_SHARED at offset 0 and then at 8 MiB of a sparse file,
in a loop; another calls sync() (optionally freezes the file system) and read()s both offsets.
On this machine's kernel (6.18.44, XFS and ext4 on loop devices and ext4 on the virtio root disk)
a few reads in a hundred return 0 at one offset, a page the writer has written. After the
writer stops the file can even keep a stale page (the counter at 0 behind the one at 8 MiB).
Seen under load (two busy CPUs); tests/live.rs's ignored mmap test is what found it.

    python3 tests/repro/mmap_zero_page.py DIR [ROUNDS] [--freeze]
"""
import os
import struct
import subprocess
import sys
import time

d = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 300
freeze = "--freeze" in sys.argv
path = os.path.join(d, "mapped.db")
writer = subprocess.Popen(
    [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "mmap_writer.py"), path]
)
load = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
try:
    time.sleep(0.5)
    zeros = 0
    for _ in range(rounds):
        os.sync()
        if freeze:
            subprocess.run(["fsfreeze", "-f", d], check=True)
        with open(path, "rb") as f:
            a = struct.unpack("<Q", f.read(8))[0]
            f.seek(8 << 20)
            b = struct.unpack("<Q", f.read(8))[0]
        if freeze:
            subprocess.run(["fsfreeze", "-u", d], check=True)
        zeros += a == 0 or b == 0
        time.sleep(0.05)
    print(f"{zeros} of {rounds} reads returned a zero page{' (frozen)' if freeze else ''}")
finally:
    writer.kill()
    for p in load:
        p.kill()
