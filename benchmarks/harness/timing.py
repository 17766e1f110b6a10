"""Timing: interleaved rounds, best of repeats, per-call latencies, slopes, matmul peak, FLOPs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .machine import cpu_share

MATMUL_SIZE = 4096


def sync(device: str) -> None:
    """Wait for the device's queued work, so a timer stops after it (no-op on CPU)."""
    if device.startswith("cuda"):  # torch imported only here: a CPU timer never pays for it
        import torch

        torch.cuda.synchronize()


@dataclass
class Runner:
    """One way of doing the timed job: ``run()`` does all of it and returns its output.

    Construction loads what the job needs and runs an untimed warm-up, so rounds time only
    the job. ``info`` is copied into the timing row.
    """

    run: Callable[[], np.ndarray]
    batch_size: int
    info: dict = field(default_factory=dict)


def time_rounds(paths: dict[str, Runner], n_items: int, rounds: int) -> dict[str, dict]:
    """Time every path ``rounds`` times, interleaved (A B C A B C) so a burst of load from other
    processes hits all paths alike; keep each path's best pass.

    Per path: ``rate`` (items/s), ``wall_s``, ``cpu_share`` (`machine.cpu_share` over the torch
    threads), ``embeddings`` (the best pass's output), ``batch_size`` and the runner's info.
    """
    import torch

    threads = torch.get_num_threads()
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, path in paths.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            emb = path.run()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            rate = n_items / wall
            if name not in best or rate > best[name]["rate"]:
                best[name] = {
                    "rate": rate,
                    "wall_s": wall,
                    "cpu_share": cpu_share(cpu, wall, threads),
                    "embeddings": emb,
                    "batch_size": path.batch_size,
                    **path.info,
                }
    return best


def best_s(fn: Callable[[], object], repeats: int = 3, device: str = "cpu") -> float:
    """Best wall time (s) of ``fn()`` over ``repeats`` calls, each waited for on ``device``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def latencies_ms(fn: Callable[[object], object], items: Sequence) -> np.ndarray:
    """Latency in ms of ``fn(item)`` for each item, after one untimed warm-up call."""
    fn(items[0])
    times = np.empty(len(items))
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        fn(item)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def slope_s(
    fn: Callable[[int], object], n_small: int, n_large: int, repeats: int = 1
) -> tuple[float, float]:
    """(seconds per item, fixed seconds) of ``fn(n)`` from its best times at two counts: the
    per-item cost without the start-up that a single rate would smear over the items."""
    t_small = best_s(lambda: fn(n_small), repeats)
    t_large = best_s(lambda: fn(n_large), repeats)
    per_item = (t_large - t_small) / (n_large - n_small)
    return per_item, t_small - per_item * n_small


def interleaved_slopes(
    runs: dict[str, Callable[[], object]], k: int, rounds: int
) -> dict[str, float]:
    """Seconds a call of each of ``runs``, as the slope between ``k`` and ``3k`` calls in a row,
    the runs interleaved over ``rounds`` (A B C A B C, best time of each count kept): per-call
    cost without the start-up, with a burst of load hitting every run alike."""
    best: dict[str, dict[int, float]] = {name: {} for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            for reps in (k, 3 * k):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                best[name][reps] = min(best[name].get(reps, np.inf), time.perf_counter() - t0)
    return {name: (b[3 * k] - b[k]) / (2 * k) for name, b in best.items()}


def calls_lasting(runs: dict[str, Callable[[], object]], min_s: float) -> int:
    """The fewest calls of the slowest of ``runs`` that last ``min_s`` (each run called twice
    first: a warm-up, then the timed call)."""
    slowest = 0.0
    for fn in runs.values():
        fn()
        t0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t0)
    return max(1, int(np.ceil(min_s / slowest)))


def peak_gflops(dtype_name: str, device: str, size: int = MATMUL_SIZE, min_s: float = 1.5) -> float:
    """Best GFLOP/s of a ``size``x``size`` matmul over repetitions lasting at least ``min_s``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    torch.mm(a, b)  # warm-up: library dispatch, packing buffers
    sync(device)
    best, spent, reps = float("inf"), 0.0, 0
    while spent < min_s or reps < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return 2 * size**3 / best / 1e9


def count_flops(fn, *args) -> float:
    """FLOPs of one call, counted by ``FlopCounterMode`` (matmul, conv, bmm, attention)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # Fused kernels without a registered FLOP formula would count as zero: nn.MultiheadAttention's
    # inference fast path (``_native_multi_head_attention``, all of ViT-L's attention projections)
    # and the CPU flash-attention kernel. Turning both off runs the same maths as counted
    # linear and bmm calls.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    counter = FlopCounterMode(display=False)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
            fn(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def param_bytes(module) -> int:
    """Bytes held by ``module``'s parameters."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
