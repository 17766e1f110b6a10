"""Ingest rate into an embedded Milvus Lite file: the write path before and after, side by side.

Each variant adds the same N species-like 768-d unit vectors (`harness.vectors.make_embeddings`) to a
fresh file through `MilvusIndex.add` and prints vectors/s beside the load average, and the
CPU seconds this process (pymilvus packing rows) and the Milvus Lite server (storing them)
spent: on a loaded machine the wall-clock rate is mostly the other jobs', while CPU seconds per
vector are the work itself; the quiet-machine ceiling is N / (client + server) CPU seconds
(one batch at a time: the two never run at once).
Variants are interleaved and repeated so a load spike on a shared machine hits them alike.

- ``before (upsert)``: one upsert of 2,000 rows at a time (the write path before inserts).
- ``after (insert)``: inserts, one batch at a time (`MilvusIndex.add` now, when no row can
  exist).
- ``gallery (upsert)`` / ``gallery (add)``: what a gallery's sync writes: 256 photos a call,
  sha256 keys and the gallery's scalar fields, as upserts (the sync before it told new photos
  from changed ones) or as new rows (what it does now for photos the collection lacks).

    python benchmarks/milvus_ingest.py --n 50000 --repeats 2
    python benchmarks/milvus_ingest.py --n 1000000 --repeats 1 --variants "gallery (add)"
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness.vectors import make_embeddings  # noqa: E402

# name -> (how rows are written, insert/add rather than upsert)
VARIANTS = {
    "before (upsert)": ("bulk", False),
    "after (insert)": ("bulk", True),
    "gallery (upsert)": ("gallery", False),
    "gallery (add)": ("gallery", True),
}


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process ``pid``."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def milvus_pid() -> int:
    """The Milvus Lite server: this process's child (Linux /proc)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                return int(stat.parent.name)
        except OSError:
            continue
    raise RuntimeError("no Milvus Lite child process found")


def gallery_ingest_rate(data: np.ndarray, add: bool, work: Path) -> tuple[float, float, float]:
    """As `ingest_rate`, written as a gallery's sync writes: 256 photos per `MilvusIndex.add`
    with sha256 keys and the gallery's scalar fields; ``add``: new rows, else upserts."""
    import hashlib

    from songsight.gallery.milvus.collection import SCALAR_FIELDS
    from songsight.gallery.milvus.sync import SYNC_ROWS
    from songsight.index.milvus import MilvusIndex

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(data))]

    def fields(rows: range) -> dict:
        return {
            name: [i % 1000 if kind == "int" else f"{name} {i % 1000} photos/{i}.jpg" for i in rows]
            for name, kind in SCALAR_FIELDS.items()
        }

    def write(rows: range) -> None:
        index.add(data[rows.start : rows.stop], keys=keys[rows.start : rows.stop],
                  fields=fields(rows), replace=not add)  # fmt: skip

    directory = Path(tempfile.mkdtemp(prefix="ingest-", dir=work))
    index = MilvusIndex(
        data.shape[1], directory / "g.db", "g", scalar_fields=SCALAR_FIELDS,
        settings={"index_type": "FLAT"},
    )  # fmt: skip
    try:
        write(range(1))  # the collection exists: only rows are timed
        server = milvus_pid()
        t0, client0, server0 = time.perf_counter(), cpu_s(), cpu_s(server)
        for start in range(1, len(data), SYNC_ROWS):
            write(range(start, min(len(data), start + SYNC_ROWS)))
        wall = time.perf_counter() - t0
        return (len(data) - 1) / wall, cpu_s() - client0, cpu_s(server) - server0
    finally:
        index.close()
        shutil.rmtree(directory, ignore_errors=True)


def ingest_rate(data: np.ndarray, absent: bool, work: Path) -> tuple[float, float, float]:
    """Vectors/s of one `MilvusIndex.add` of ``data`` into a fresh embedded file, and the CPU
    seconds of this process and of the Milvus Lite server during it."""
    from songsight.index.milvus import MilvusIndex
    from songsight.index.milvus import rows as milvus_rows

    write_rows = milvus_rows.write_rows

    def patched(*args, **kwargs):
        kwargs["absent"] = absent
        return write_rows(*args, **kwargs)

    directory = Path(tempfile.mkdtemp(prefix="ingest-", dir=work))
    index = MilvusIndex(data.shape[1], directory / "b.db", "b", settings={"index_type": "FLAT"})
    import songsight.index.milvus.collection as milvus_module

    milvus_module.write_rows = patched
    try:
        index.add(data[:1], np.arange(1))  # the collection exists: only rows are timed
        server = milvus_pid()
        t0, client0, server0 = time.perf_counter(), cpu_s(), cpu_s(server)
        index.add(data[1:], np.arange(1, len(data)))
        wall = time.perf_counter() - t0
        return (len(data) - 1) / wall, cpu_s() - client0, cpu_s(server) - server0
    finally:
        milvus_module.write_rows = write_rows
        index.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
        help="which write paths to time (at 1M, one variant alone takes ~6 min)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    data = make_embeddings(args.n, args.dim, 1000, seed=0)
    work = Path(tempfile.mkdtemp(prefix="songsight-ingest-", dir=args.work_dir))
    variants = {name: VARIANTS[name] for name in args.variants}
    rates: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    try:
        for r in range(args.repeats):
            for name, (kind, absent) in variants.items():
                measure = gallery_ingest_rate if kind == "gallery" else ingest_rate
                rate, client_s, server_s = measure(data, absent, work)
                rates[name].append((rate, client_s, server_s))
                print(
                    f"repeat {r}  {name:<20} {rate:7.0f} vectors/s  CPU us/vector: client "
                    f"{client_s / args.n * 1e6:4.0f}, Milvus {server_s / args.n * 1e6:4.0f}  "
                    f"(load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = np.median([r[0] for r in next(iter(rates.values()))])
    print(f"\nN={args.n} dim={args.dim}, median of {args.repeats}:")
    for name, values in rates.items():
        rate, client_s, server_s = np.median(np.asarray(values), axis=0)
        ceiling = args.n / (client_s + server_s)
        print(
            f"  {name:<20} {rate:7.0f} vectors/s  x{rate / base:.2f}; CPU-bound ceiling "
            f"{ceiling:5.0f} vectors/s (client {client_s:.1f} s, Milvus {server_s:.1f} s)"
        )


if __name__ == "__main__":
    main()
