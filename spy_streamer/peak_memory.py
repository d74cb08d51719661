"""A process's own peak resident memory (VmHWM): what the compaction child reports and what the
benchmarks compare. psutil has no portable high-water mark, and `ru_maxrss` after a fork carries the
parent's; the kernel's per-process figure is the honest one (Linux; 0 where /proc has none)."""
from __future__ import annotations

from pathlib import Path


def peak_rss_bytes(pid: int | str = "self") -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
