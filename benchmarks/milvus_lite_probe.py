"""What the embedded Milvus Lite file does with an index declaration: answers and latency
for FLAT, IVF_FLAT at several nlist and nprobe, and AUTOINDEX, against exact search.

The probe talks to Milvus Lite through ``pymilvus.MilvusClient`` directly (not through
songsight), so it measures the engine alone. Each data kind gets its own file: ``random``
(unit vectors with no structure, the hardest case for any IVF) and ``species`` (the clustered,
species-shaped vectors of `harness.vectors.make_embeddings`, like a photo gallery). Queries are
held-out vectors of the same kind. For every declaration the table prints single-query p50 and
min latency (after one warm-up call), recall@10 against exact (numpy) search, and the load
average beside it.

    python benchmarks/milvus_lite_probe.py --n 100000 --work-dir /tmp/lite-probe

Reading it: if nlist and nprobe reached a real IVF index, recall and latency would move with
them (nprobe = nlist is a full scan: recall 1.0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from harness.machine import load
from harness.timing import latencies_ms
from harness.vectors import make_embeddings, recall_at_k

DIM = 768
K = 10
ROWS_PER_INSERT = 2000  # songsight's own batch (index/milvus/rows.py): larger ones stall Lite


def vectors(kind: str, n: int, seed: int) -> np.ndarray:
    if kind == "species":
        return make_embeddings(n, DIM, n_species=max(10, n // 100), seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def open_collection(path: Path, gallery: np.ndarray):
    from pymilvus import DataType, MilvusClient

    fresh = not path.exists()
    client = MilvusClient(str(path))
    if fresh:
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection("probe", schema=schema)
        t0 = time.perf_counter()
        for start in range(0, len(gallery), ROWS_PER_INSERT):
            rows = gallery[start : start + ROWS_PER_INSERT]
            client.insert("probe", [{"id": start + i, "vec": v} for i, v in enumerate(rows)])
        client.flush("probe")
        rate = len(gallery) / (time.perf_counter() - t0)
        print(f"# {path.name}: ingest {rate:.0f} vectors/s  ({load()})", flush=True)
    return client


def declare(client, index_type: str, params: dict) -> float:
    """Drop the vector index, declare ``index_type`` and load; seconds taken."""
    client.release_collection("probe")
    for name in client.list_indexes("probe"):
        client.drop_index("probe", name)
    index = client.prepare_index_params()
    index.add_index(field_name="vec", index_type=index_type, metric_type="IP", params=params)
    t0 = time.perf_counter()
    client.create_index("probe", index)
    client.load_collection("probe")
    return time.perf_counter() - t0


def measure(client, queries: np.ndarray, truth: np.ndarray, search_params: dict) -> dict:
    def one(q):
        return client.search(
            "probe", data=[q], anns_field="vec", limit=K,
            search_params={"metric_type": "IP", "params": search_params},
        )  # fmt: skip

    lat = latencies_ms(one, list(queries))
    hits = client.search(
        "probe", data=list(queries), anns_field="vec", limit=K,
        search_params={"metric_type": "IP", "params": search_params},
    )  # fmt: skip
    found = np.array([[h["id"] for h in row] + [-1] * (K - len(row)) for row in hits])
    return {"p50": float(np.median(lat)), "min": float(np.min(lat)), "recall": recall_at_k(found, truth)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--kinds", nargs="+", choices=("random", "species"), default=["random", "species"])  # fmt: skip
    p.add_argument("--work-dir", required=True, help="the Milvus Lite files (reused when present)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    import milvus_lite
    import pymilvus

    print(f"milvus-lite {milvus_lite.__version__}, pymilvus {pymilvus.__version__}; N={args.n}, "
          f"{args.queries} single queries, k={K}  ({load()})")  # fmt: skip
    nlist_sqrt = int(4 * np.sqrt(args.n))
    declarations = [("FLAT", {}, [{}])]
    for nlist in sorted({16, nlist_sqrt, 5000}):
        probes = sorted({1, 16, nlist})
        declarations.append(("IVF_FLAT", {"nlist": nlist}, [{"nprobe": n} for n in probes]))
    declarations.append(("AUTOINDEX", {}, [{}]))
    for kind in args.kinds:
        data = vectors(kind, args.n + args.queries, args.seed)
        gallery, queries = data[: args.n], data[args.n :]
        truth = np.argsort(-(queries @ gallery.T), axis=1)[:, :K]
        client = open_collection(work / f"{kind}_{args.n}.db", gallery)
        print(f"\n{kind}: {'index':10s} {'build':>18s} {'search':>12s} {'p50 ms':>8s} {'min ms':>8s} {'recall@10':>10s}")  # fmt: skip
        flat_p50 = None
        for index_type, build, searches in declarations:
            seconds = declare(client, index_type, build)
            for params in searches:
                m = measure(client, queries, truth, params)
                flat_p50 = flat_p50 or m["p50"]
                print(
                    f"{kind}: {index_type:10s} {str(build):>18s} {str(params):>12s} "
                    f"{m['p50']:8.2f} {m['min']:8.2f} {m['recall']:10.3f}  "
                    f"(x{flat_p50 / m['p50']:.1f} FLAT's speed; declared in {seconds:.1f} s)  ({load()})",
                    flush=True,
                )
        client.close()


if __name__ == "__main__":
    main()
