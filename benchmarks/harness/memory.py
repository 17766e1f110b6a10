"""Resident memory from /proc (Linux): now, high-water mark, of this process or another."""

from __future__ import annotations

import os
from pathlib import Path


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``...); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (default this one)."""
    return status_kib("VmRSS", pid) * 1024


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB."""
    return status_kib("VmRSS", pid) / 1024, status_kib("VmHWM", pid) / 1024


def children_rss_bytes() -> int:
    """Resident set size of this process's children (e.g. a Milvus Lite server)."""
    total, me = 0, str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == me and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0]) * 1024
    return total


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0), so a job's own peak is seen
    apart from loading's; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
