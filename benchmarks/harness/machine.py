"""The machine a figure was measured on: load average, cpu share, device and versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def load() -> str:
    """``"load 1.2/0.9/0.8"``: the 1/5/15-minute load averages, printed beside a figure."""
    return "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_share(cpu_s: float, wall_s: float, threads: int) -> float:
    """Process CPU time over wall time and threads: well under 1 means other processes took
    the cores (spinning OpenMP threads count as busy, so it overstates useful work)."""
    return cpu_s / wall_s / threads


def processor_name(device: str = "cpu") -> str:
    """The CPU model (from /proc/cpuinfo where there is one) or the CUDA device's name."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def describe(device: str) -> dict:
    """Device, its name, CPUs, torch threads, load average and library versions."""
    import open_clip
    import torch
    import transformers

    return {
        "device": device,
        "name": processor_name(device),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
    }


def pick_device(requested: str | None) -> str:
    """``requested``, else cuda when present, else cpu."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
