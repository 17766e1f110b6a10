"""Exact search vs HNSW + exact re-rank vs embedded Milvus vs a Milvus server, side by side on
species-like clustered embeddings.

For each gallery size this builds every index over the same unit vectors and prints build
time, memory per vector, single-query latency (p50 / p99), batched throughput, recall@10
against exact search, the p50 speed-up and the load average when the row was measured.
Milvus rows (an embedded Milvus Lite file, `songsight.index.milvus.MilvusIndex`, re-ranked
exactly) add the ingest rate, the time to reopen the file (what `songsight search` pays
first) and the file's size; their memory is the Milvus Lite process's RSS (with its fixed
start-up share, ~200 MB, so small N overstate it). Server rows (``--backends server``) run a
real Milvus standalone server started for the run from PyPI's ``milvus`` package
(``scripts/milvus_server_setup.sh``), or the one ``--milvus-uri`` names: ingest rate, the
time the server takes to index the rows after the last write, the server process's memory
(resident, its start-up share included) and its data folder, one row per ``--server-ef``.
Queries are held-out draws from the same distribution as the gallery.

    python benchmarks/search.py                     # 100k and 1M, 768-d
    python benchmarks/search.py --quick             # smoke run, seconds
    python benchmarks/search.py --sizes 100000 --expansion-search 128 256
    python benchmarks/search.py --sizes 100000 --milvus-index FLAT IVF_FLAT --nprobe 16 64
    python benchmarks/search.py --sizes 100000 --backends hnsw milvus server --milvus-index auto
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import numpy as np

from harness.machine import load_average
from harness.memory import children_rss_bytes, rss_bytes, status_kib, wait_quiet
from harness.timing import latencies_ms
from harness.vectors import make_embeddings, recall_at_k


def build_measured(build, n: int) -> tuple[object, dict]:
    """Run `build()`; return the index with build time and memory per vector (RSS and held)."""
    gc.collect()
    rss0, t0 = rss_bytes(), time.perf_counter()
    index = build()
    build_s = time.perf_counter() - t0
    held = index.nbytes + getattr(index, "graph_nbytes", 0)
    return index, {"build_s": build_s, "rss_b": (rss_bytes() - rss0) / n, "held_b": held / n}


def time_searches(
    index, queries: np.ndarray, single: np.ndarray, k: int
) -> tuple[np.ndarray, dict]:
    """Batched ids `(Q, k)` and latency / throughput numbers."""
    # One query per call: (1, dim) slices, after one warm-up call.
    lat = latencies_ms(
        lambda q: index.search(q, k), [single[i : i + 1] for i in range(len(single))]
    )
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    qps = len(queries) / (time.perf_counter() - t0)
    return ids, {
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "qps": qps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries, batched")
    parser.add_argument(
        "--tune-queries",
        type=int,
        default=500,
        help="a second held-out set: recall@10 on it ('tune' column) is what a search-time knob "
        "is chosen by, so the reported recall is never measured on the queries it was tuned on",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["hnsw", "milvus", "server"],
        choices=["hnsw", "milvus", "server"],
        help="measured after exact, in this order (milvus: the embedded file; server: a Milvus "
        "server)",
    )
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--species", type=int, default=1000, help="cluster centres")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--connectivity", type=int, default=None)
    parser.add_argument("--expansion-add", type=int, default=None)
    parser.add_argument(
        "--expansion-search", type=int, nargs="+", default=None, help="one row per value"
    )
    parser.add_argument("--graph-dtype", default=None, choices=["float16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--milvus-index",
        nargs="*",
        default=["FLAT", "IVF_FLAT"],
        help="embedded Milvus index types (or auto: what a gallery picks by size), one build each "
        "(none: skip Milvus)",
    )
    parser.add_argument(
        "--nprobe",
        type=int,
        nargs="+",
        default=[16, 32, 64],
        help="IVF rows (embedded file and server), one per value",
    )
    parser.add_argument("--work-dir", default=None, help="where the Milvus files go (default tmp)")
    parser.add_argument(
        "--milvus-uri",
        default=None,
        help="the server rows measure this Milvus server (e.g. http://host:19530) instead of "
        "one started for the run; its collection 'songsight_bench' is dropped first",
    )
    parser.add_argument(
        "--milvus-server-venv",
        default=str(Path(__file__).resolve().parents[1] / ".venv" / "milvus-server"),
        help="where PyPI's milvus package is (scripts/milvus_server_setup.sh): the server the "
        "server rows start, on loopback, in --work-dir",
    )
    parser.add_argument(
        "--server-index",
        nargs="+",
        default=["auto"],
        help="server index types (auto: what a gallery picks by size, HNSW past 200,000), "
        "one build each",
    )
    parser.add_argument(
        "--server-ef",
        type=int,
        nargs="+",
        default=[128, 512],
        help="server HNSW rows besides the default hnsw_ef (ef is at least the candidate count, "
        "100); server IVF rows take --nprobe",
    )
    parser.add_argument(
        "--server-config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="milvus.yaml settings (dotted) for the server the run starts, e.g. "
        "dataCoord.segment.maxSize=4096 (segments of up to 4 GB: fewer to search)",
    )
    parser.add_argument(
        "--server-quiet-s",
        type=float,
        default=120.0,
        help="searches start once the server used under 0.1 core for this many seconds in a "
        "row (its compactions are triggered on a timer, a minute or more after an index is "
        "reported built)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.server_config):  # before an hour of building
        parser.error("--server-config takes KEY=VALUE, e.g. dataCoord.segment.maxSize=4096")
    if args.work_dir:  # a folder of the user's choosing, made if it does not exist yet
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.sizes, args.queries, args.single, args.species = [5_000, 20_000], 200, 50, 100

    import torch

    from songsight.index.search import ExactIndex, HNSWIndex

    hnsw_options = {
        name: value
        for name, value in [
            ("connectivity", args.connectivity),
            ("expansion_add", args.expansion_add),
            ("graph_dtype", args.graph_dtype),
        ]
        if value is not None
    }
    defaults = HNSWIndex(args.dim, **hnsw_options)
    ef_values = args.expansion_search or [defaults.expansion_search]
    print(
        f"dim={args.dim} species={args.species} k={args.k} queries={args.queries} "
        f"single={args.single} torch_threads={torch.get_num_threads()} "
        f"usearch_threads={args.threads} hnsw: connectivity={defaults.connectivity} "
        f"expansion_add={defaults.expansion_add} graph_dtype={defaults.graph_dtype} "
        f"rerank_factor={defaults.rerank_factor} min_candidates={defaults.min_candidates}",
        flush=True,
    )
    del defaults
    header = (
        f"{'N':>9} {'backend':<20} {'build_s':>8} {'B/vec rss':>9} {'B/vec held':>10} "
        f"{'p50_ms':>8} {'p99_ms':>8} {'batch_qps':>9} {'recall@10':>9} {'tune':>6} {'p50 x':>7} "
        f"{'load':>5}"
    )
    rows = [header, "-" * len(header)]

    def row(
        n: int, name: str, m: dict, build_s: float | None, recall: float, speedup: float,
        tune: float = 1.0,
    ):  # fmt: skip
        build = f"{build_s:8.1f}" if build_s is not None else f"{'':>8}"
        rows.append(
            f"{n:>9} {name:<20} {build} {m['rss_b']:9.0f} {m['held_b']:10.0f} {m['p50']:8.2f} "
            f"{m['p99']:8.2f} {m['qps']:9.0f} {recall:9.4f} {tune:6.4f} {speedup:7.1f} "
            f"{load_average():5.1f}"
        )
        print(rows[-1], flush=True)

    print(header, flush=True)
    for n in args.sizes:
        t0 = time.perf_counter()
        data = make_embeddings(
            n + args.queries + args.tune_queries, args.dim, args.species, args.seed
        )
        gallery, queries = data[:n], data[n : n + args.queries]
        tune = data[n + args.queries :]
        single = queries[: args.single]
        ids = np.arange(n, dtype=np.int64)
        print(
            f"# N={n}: data in {time.perf_counter() - t0:.1f} s; "
            f"load average {load_average():.1f} on {os.cpu_count()} cores",
            flush=True,
        )

        def build_exact(gallery=gallery, ids=ids):
            index = ExactIndex(args.dim)
            index.add(gallery, ids)
            return index

        index, exact = build_measured(build_exact, n)
        truth, timing = time_searches(index, queries, single, args.k)
        tune_truth = index.search(tune, args.k)[1]
        exact.update(timing)
        del index
        row(n, "exact", exact, exact["build_s"], 1.0, 1.0)

        def build_hnsw(gallery=gallery, ids=ids):
            index = HNSWIndex(args.dim, threads=args.threads, **hnsw_options)
            index.add(gallery, ids)
            return index

        for backend in args.backends:
            if backend == "server":
                for index_type in args.server_index:
                    bench_server(
                        n, index_type, gallery, (queries, tune), single, (truth, tune_truth),
                        exact["p50"], args, row,
                    )  # fmt: skip
                continue
            if backend == "milvus":
                for index_type in args.milvus_index:
                    bench_milvus(
                        n, index_type, gallery, (queries, tune), single, (truth, tune_truth),
                        exact["p50"], args, row,
                    )  # fmt: skip
                continue

            index, hnsw = build_measured(build_hnsw, n)
            print(
                f"# N={n}: HNSW built in {hnsw['build_s']:.1f} s; "
                f"load average {load_average():.1f}",
                flush=True,
            )
            for i, ef in enumerate(ef_values):
                index.expansion_search = ef
                found, timing = time_searches(index, queries, single, args.k)
                hnsw.update(timing)
                row(
                    n,
                    f"hnsw ef={ef}",
                    hnsw,
                    hnsw["build_s"] if i == 0 else None,
                    recall_at_k(found, truth),
                    exact["p50"] / hnsw["p50"],
                    recall_at_k(index.search(tune, args.k)[1], tune_truth),
                )
            del index
        del data, gallery, queries, single, tune
        gc.collect()

    rows.append(
        "B/vec rss: resident memory growth during the build / N. B/vec held: stored vectors + "
        "ids + usearch's memory_usage (which counts reserved capacity) / N. p50 x: exact p50 / "
        "this p50. HNSW rows re-rank max(4k, 100) candidates exactly; ef is expansion_search. "
        "Milvus rows: an embedded Milvus Lite file, max(4k, 100) candidates ordered by "
        "(score, id) (FLAT and IVF_FLAT score exactly); np is nprobe (*: the default one, "
        "ivf_nprobe=0, chosen from nlist); tune: recall@10 on a second held-out query set; "
        "build_s is ingest + flush; B/vec rss is the Milvus Lite process's RSS / N and B/vec "
        "held the file's size on disk / N; searched after reopening the file. Server rows: a "
        "Milvus standalone server on loopback (2 cores shared with this process), build_s is "
        "ingest + flush + the server's indexing after it; B/vec rss the server process's RSS / "
        "N, B/vec held its data folder / N; ef rows per hnsw_ef, np rows per ivf_nprobe (*: "
        "the default); searched once the server process was idle. load: 1-min "
        "load average when the row was printed."
    )
    print("\n".join(["", *rows]))


def bench_milvus(n, index_type, gallery, query_sets, single, truths, exact_p50, args, row) -> None:
    """Ingest ``gallery`` into a fresh embedded Milvus file, reopen it, time searches.

    ``query_sets`` / ``truths``: the benchmark's queries and the tuning set, with exact
    search's top-k ids for each."""
    import shutil
    import tempfile

    from songsight.index.milvus import MilvusIndex

    work = Path(tempfile.mkdtemp(prefix="songsight-bench-", dir=args.work_dir))
    uri = args.milvus_uri or str(work / "bench.db")
    queries, tune = query_sets
    truth, tune_truth = truths
    settings = {"index_type": index_type}
    try:
        index = MilvusIndex(args.dim, uri, "songsight_bench", settings=settings)
        if args.milvus_uri:
            index.drop()  # a run before this one's
        t0 = time.perf_counter()
        index.add(gallery, np.arange(n, dtype=np.int64))
        ingest_s = time.perf_counter() - t0
        index.flush()
        build_s = time.perf_counter() - t0
        index.close()
        print(
            f"# N={n}: Milvus {index_type}: ingest {n / ingest_s:.0f} vectors/s, "
            f"ingest + flush {build_s:.1f} s; load average {load_average():.1f}",
            flush=True,
        )
        t0 = time.perf_counter()
        index = MilvusIndex(args.dim, uri, "songsight_bench", settings=settings)
        index.search(single[:1], args.k)
        open_s = time.perf_counter() - t0
        # On a server neither the file nor the child process exist: those columns read 0.
        size_b = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
        memory = {"rss_b": children_rss_bytes() / n, "held_b": size_b / n}
        print(
            f"# N={n}: Milvus {index_type}: {index.index_type} {index.index_params()}; "
            f"reopened and first search in {open_s:.1f} s; "
            f"file {size_b / 1e6:.0f} MB; load average {load_average():.1f}",
            flush=True,
        )
        ivf = str(index.index_type).startswith("IVF")
        # nprobe 0 is the settings' default ("auto": chosen from nlist); then each one asked for.
        for i, nprobe in enumerate([0, *args.nprobe] if ivf else [None]):
            if nprobe is not None:
                index.settings.ivf_nprobe = nprobe
            found, timing = time_searches(index, queries, single, args.k)
            name = f"milvus {index.index_type}"
            if ivf:
                name += f" np={index.search_params()['nprobe']}" + ("*" if nprobe == 0 else "")
            row(
                n,
                name,
                {**memory, **timing},
                build_s if i == 0 else None,
                recall_at_k(found, truth),
                exact_p50 / timing["p50"],
                recall_at_k(index.search(tune, args.k)[1], tune_truth),
            )
        index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _launcher():
    """scripts/milvus_server.py (`MilvusServer`), which starts a server from PyPI's package."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "milvus_server.py"
    spec = importlib.util.spec_from_file_location("milvus_server_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loaded_segments(uri: str, collection: str) -> dict[int, int]:
    """Rows of each segment (by id) the server's query nodes hold for ``collection`` (each is
    searched on its own, then the answers merged: their number is part of a search's cost; a
    compaction replaces ids)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        return {
            int(info.segment_id): int(info.num_rows)
            for info in client.list_loaded_segments(collection)
        }
    finally:
        client.close()


def compactions_logged(logs: Path) -> str:
    """How many compactions the server's log records, and why each was triggered (a
    segment with too many stats logs is compacted, and its index built again, after the
    index was first reported built)."""
    reasons: dict[str, int] = {}
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "trigger compaction" in line:
                reason = line.split('["', 1)[-1].split('"]', 1)[0]
                reasons[reason] = reasons.get(reason, 0) + 1
    total = sum(reasons.values())
    listed = "; ".join(f"{count} x {why}" for why, count in sorted(reasons.items()))
    return f"server log: {total} compactions triggered" + (f" ({listed})" if listed else "")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_server(n, index_type, gallery, query_sets, single, truths, exact_p50, args, row) -> None:
    """Ingest ``gallery`` into a Milvus server (started here unless ``--milvus-uri``), wait
    for it to index the rows, reopen the collection and time searches, one row per ef.

    Ingest is `MilvusIndex.add` as a gallery's sync calls it for photos the collection lacks
    (``absent=True``: inserts of 2,000 rows; the collection was just dropped, so none is held).
    The server's memory is its process's resident set (with its start-up share, ~0.3 GB)."""
    import shutil
    import tempfile

    from songsight.index.milvus import MilvusIndex

    work = Path(tempfile.mkdtemp(prefix="songsight-bench-server-", dir=args.work_dir))
    queries, tune = query_sets
    truth, tune_truth = truths
    server = None
    try:
        if args.milvus_uri:
            uri = args.milvus_uri
        else:
            launcher = _launcher()
            config = dict(item.split("=", 1) for item in args.server_config)
            server = launcher.MilvusServer(
                Path(args.milvus_server_venv), work / "server", settings=config
            ).start()
            uri = server.uri
            print(
                f"# N={n}: Milvus server {server.version} (pid {server.pid}) at {uri}"
                + (f" with {', '.join(args.server_config)}" if config else "")
                + ", "
                f"{status_kib('VmRSS', server.pid) / 1024:.0f} MiB resident at start; "
                f"load average {load_average():.1f}",
                flush=True,
            )
        settings = {"index_type": index_type}
        index = MilvusIndex(args.dim, uri, "songsight_bench", settings=settings)
        index.drop()  # a run before this one's (a server of your own)
        index = MilvusIndex(args.dim, uri, "songsight_bench", settings=settings)
        t0 = time.perf_counter()
        index.add(gallery, keys=[str(i) for i in range(n)], absent=True)  # keys: decimal ids
        ingest_s = time.perf_counter() - t0
        index.flush()
        flush_s = time.perf_counter() - t0 - ingest_s
        index_s = index.wait_for_index(timeout_s=6 * 3600)
        build_s = time.perf_counter() - t0
        index.close()
        print(
            f"# N={n}: server {index_type}: ingest {n / ingest_s:.0f} vectors/s "
            f"({ingest_s:.1f} s"
            + (
                ", with auto's change of index at the end of the add"
                if index_type == "auto"
                else ""
            )
            + "), "
            f"flush {flush_s:.1f} s, indexed {index_s:.1f} s after; "
            f"load average {load_average():.1f}",
            flush=True,
        )
        if server:
            # Compaction and index builds of compacted segments go on after the index is
            # reported built; searches are timed once the server is idle, as a user's would be.
            quiet_s = wait_quiet(server.pid, window_s=args.server_quiet_s)
            print(
                f"# N={n}: server idle {quiet_s:.0f} s after that; peak RSS "
                f"{status_kib('VmHWM', server.pid) / 1024:.0f} MiB; load average "
                f"{load_average():.1f}",
                flush=True,
            )
        t0 = time.perf_counter()
        index = MilvusIndex(args.dim, uri, "songsight_bench", settings=settings)
        index.search(single[:1], args.k)
        open_s = time.perf_counter() - t0
        rss_b = status_kib("VmRSS", server.pid) * 1024 if server else 0
        held_b = _dir_bytes(work / "server" / "data") if server else 0
        segments = loaded_segments(uri, "songsight_bench")
        print(
            f"# N={n}: server {index_type}: {index.index_type} {index.index_params()}; reopened "
            f"and first search in {open_s:.1f} s; server RSS {rss_b / 2**20:.0f} MiB, data "
            f"{held_b / 1e6:.0f} MB; {len(segments)} segments searched "
            f"({', '.join(f'{rows:,}' for rows in sorted(segments.values(), reverse=True))} rows); "
            f"load average {load_average():.1f}",
            flush=True,
        )
        memory = {"rss_b": rss_b / n, "held_b": held_b / n}
        kind = str(index.index_type)
        # One row per search knob: the settings' default first (*), then each one asked for.
        if kind.startswith("HNSW"):
            knob, field, values = "ef", "hnsw_ef", [None, *args.server_ef]
        elif kind.startswith("IVF"):
            knob, field, values = "nprobe", "ivf_nprobe", [None, *args.nprobe]
        else:
            knob, field, values = None, None, [None]
        default = getattr(index.settings, field) if field else None
        for i, value in enumerate(values):
            if field:
                setattr(index.settings, field, default if value is None else value)
            found, timing = time_searches(index, queries, single, args.k)
            name = f"server {kind}"
            if knob:
                short = "np" if knob == "nprobe" else knob
                name += f" {short}={index.search_params()[knob]}" + ("*" if value is None else "")
            if server:
                memory["rss_b"] = status_kib("VmRSS", server.pid) * 1024 / n
            row(
                n,
                name,
                {**memory, **timing},
                build_s if i == 0 else None,
                recall_at_k(found, truth),
                exact_p50 / timing["p50"],
                recall_at_k(index.search(tune, args.k)[1], tune_truth),
            )
        after = loaded_segments(uri, "songsight_bench")
        if after != segments:  # a compaction during the timing: say so
            print(
                f"# N={n}: WARNING the server's segments changed while it was timed "
                f"({len(segments)} -> {len(after)}): a compaction ran during these rows",
                flush=True,
            )
        if server:  # the server's own account, before its folder (and log) is deleted
            print(f"# N={n}: {compactions_logged(work / 'server' / 'logs')}", flush=True)
        index.drop()
        index.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
