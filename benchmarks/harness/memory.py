"""Resident memory and CPU time from /proc (Linux), of this process or another."""

from __future__ import annotations

import os
import time
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


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(
    pid: int, below_cores: float = 0.1, window_s: float = 10.0, timeout_s: float = 1800.0
) -> float:
    """Wait until process ``pid`` uses less than ``below_cores`` of a core over ``window_s``
    (a server done with its background work: index builds, compaction); returns the seconds
    waited (``timeout_s`` if it never settled)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        before = cpu_seconds(pid)
        time.sleep(window_s)
        if (cpu_seconds(pid) - before) / window_s < below_cores:
            return time.perf_counter() - t0
    return timeout_s
