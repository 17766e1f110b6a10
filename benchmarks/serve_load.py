"""`songsight serve` under load: N clients at once against one server, queued and batched vs one
search at a time.

The server is the real CLI (``python -m songsight.cli serve``) in a subprocess on loopback,
answering with the zero-shot cascade through the exact BioLingual architecture at random init
(``ClapModel(ClapConfig())``, built by `harness.models.build_biolingual_shape`; speed does
not depend on the weights). The gallery's photos are embedded with songsight's tiny open_clip
model: the image tower only runs at start-up (species text), so a search costs exactly what it
costs over a BioCLIP-2 gallery. Every search uploads the same 10 s 22.05 kHz WAV.

Per configuration it prints the time of one search alone (median of a few, sequential), then
``--clients`` clients sending ``--searches`` searches each at once: answered (200) / refused
(503, with Retry-After) / other, p50/p95/p99 latency, searches/s, the batches the server ran,
the server's RSS before and after (and its peak), and the load average beside each figure:
the machine is shared, so the figures mean something only when the load is low.

    python benchmarks/serve_load.py                 # 20 clients x 3 searches, ~3 min
    python benchmarks/serve_load.py --quick         # tiny models, smoke run (~1 min)

Loopback only; clients, searches and the time per run are bounded (``--max-run-s``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.inputs import write_clips, write_photos
from harness.machine import load
from harness.memory import rss_mib
from harness.models import build_biolingual_shape
from harness.report import work_folder, write_json

HOST = "127.0.0.1"
MAX_CLIENTS = 200
MAX_SEARCHES = 20
SPECIES = [
    ("Turdus merula", "Eurasian Blackbird"),
    ("Erithacus rubecula", "European Robin"),
    ("Parus major", "Great Tit"),
    ("Fringilla coelebs", "Common Chaffinch"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def build_gallery(work: Path, image_model: Path, n_photos: int) -> Path:
    """A gallery of ``n_photos`` JPEGs over four species, embedded with ``image_model``."""
    import csv

    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.gallery import Gallery
    from songsight.taxonomy import Species, write_species_csv

    out = work / "gallery"
    if (out / "provenance.json").is_file() or any(out.glob("*.parquet")):
        return out
    photos = write_photos(work / "photos", n_photos)
    taxa = [Species(i, s, c, order="Passeriformes") for i, (s, c) in enumerate(SPECIES)]
    write_species_csv(taxa, work / "taxa.csv")
    with (work / "photos.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows({"path": str(p), "label": i % len(taxa)} for i, p in enumerate(photos))
    encoder = BioCLIPEncoder(image_model, device="cpu", batch_size=8)
    Gallery.build(
        [], out, encoder, manifest=work / "photos.csv", species_csv=work / "taxa.csv",
        progress=False,
    )  # fmt: skip
    return out


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = "songsightbench" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{path.name}"'
        "\r\nContent-Type: audio/wav\r\n\r\n"
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, url: str, body=None, headers=None, timeout_s: float = 600):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class Server:
    """``songsight serve`` in a subprocess; stopped on exit."""

    def __init__(self, gallery: Path, audio_model: Path, batch: int, queue: int, log: Path):
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "songsight.cli", "serve", "--gallery", str(gallery),
            "--audio-model", str(audio_model), "--device", "cpu", "--host", HOST,
            "--port", str(self.port), "--batch", str(batch), "--queue", str(queue),
            "--timeout-s", "600",
        ]  # fmt: skip
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def wait_ready(self, limit_s: float) -> float:
        while time.monotonic() - self.started < limit_s:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if request(self.port, "GET", "/api/health", timeout_s=2)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not answer within {limit_s:g} s")

    def health(self) -> dict:
        return json.loads(request(self.port, "GET", "/api/health")[2])

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process."""
        return rss_mib(self.proc.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def alone_s(port: int, body: bytes, ctype: str, n: int) -> float:
    """Median time of one search with nothing else running (after one warm-up search)."""
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        status = request(port, "POST", "/api/search", body, {"Content-Type": ctype})[0]
        if status != 200:
            raise SystemExit(f"a lone search answered {status}")
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def burst(port: int, body: bytes, ctype: str, clients: int, searches: int, max_s: float) -> dict:
    """``clients`` threads released together, each sending ``searches`` searches in turn."""
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]
    rows: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def client() -> None:
        start.wait()
        for _ in range(searches):
            if time.monotonic() > stop_at[0]:
                return
            t0 = time.perf_counter()
            try:
                status, headers, _ = request(
                    port, "POST", "/api/search", body, {"Content-Type": ctype}, timeout_s=max_s
                )
                retry = headers.get("Retry-After") or headers.get("retry-after")
            except OSError as exc:
                status, retry = -1, type(exc).__name__
            with lock:
                rows.append((status, time.perf_counter() - t0, retry))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + max_s
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(max(stop_at[0] - time.monotonic(), 0) + 5)
    wall_s = time.perf_counter() - t0
    ok = sorted(s for status, s, _ in rows if status == 200)
    refused = [r for r in rows if r[0] == 503]

    def pct(q: float) -> float:
        return ok[min(int(q * len(ok)), len(ok) - 1)] if ok else float("nan")

    return {
        "answered": len(ok),
        "refused": len(refused),
        "refused_with_retry_after": sum(1 for r in refused if r[2]),
        "other": len(rows) - len(ok) - len(refused),
        "not_sent": clients * searches - len(rows),
        "p50_s": pct(0.50),
        "p95_s": pct(0.95),
        "p99_s": pct(0.99),
        "searches_per_s": len(ok) / wall_s,
        "wall_s": wall_s,
    }


def run(args) -> list[dict]:
    from songsight.sim.tiny_models import build_tiny_clap, build_tiny_open_clip

    with work_folder(args.work_dir, "songsight-serve-load-") as work:
        print(f"building models and gallery in {work} ({load()})", flush=True)
        if args.quick:
            audio_model = work / "tiny-audio"  # 16 kHz, 2 s windows: a clip is several
            if not (audio_model / "config.json").is_file():
                build_tiny_clap(audio_model)
        else:
            audio_model = build_biolingual_shape(work / "biolingual")
        image_model = work / "tiny-image"
        if not (image_model / "open_clip_config.json").is_file():
            build_tiny_open_clip(image_model)
        gallery = build_gallery(work, image_model, args.photos)
        clip = write_clips(work / "clips", 1)[0]
        body, ctype = multipart(clip)
        configs = [("one at a time", 1, args.queue), ("queued + batched", args.batch, args.queue)]
        if args.small_queue:
            configs.append((f"batched, queue {args.small_queue}", args.batch, args.small_queue))
        results = []
        for name, batch, queue in configs:
            with Server(gallery, audio_model, batch, queue, work / f"server-b{batch}.log") as srv:
                ready_s = srv.wait_ready(args.max_run_s)
                single = alone_s(srv.port, body, ctype, args.alone)
                single_load = load()
                rss_before = srv.rss_mib()[0]
                out = burst(srv.port, body, ctype, args.clients, args.searches, args.max_run_s)
                out["load"] = load()
                health = srv.health()
                rss_after, rss_peak = srv.rss_mib()
            n = args.clients * args.searches
            out.update(
                name=name, batch=batch, queue=queue, ready_s=ready_s, alone_s=single,
                alone_load=single_load, rss_before_mib=rss_before, rss_after_mib=rss_after,
                rss_peak_mib=rss_peak, batches=health["queue"]["batches"],
                largest_batch=health["queue"]["largest_batch"], n=n,
            )  # fmt: skip
            results.append(out)
            print(format_row(out), flush=True)
        return results


def format_row(r: dict) -> str:
    return (
        f"\n== {r['name']} (--batch {r['batch']} --queue {r['queue']}); server ready in "
        f"{r['ready_s']:.1f} s\n"
        f"  one search alone: {r['alone_s']:.3f} s  ({r['alone_load']})\n"
        f"  {r['n']} searches at once: answered {r['answered']}, refused {r['refused']} "
        f"({r['refused_with_retry_after']} with Retry-After), other {r['other']}, "
        f"not sent {r['not_sent']}  ({r['load']})\n"
        f"  latency p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, p99 {r['p99_s']:.2f} s; "
        f"{r['searches_per_s']:.2f} searches/s over {r['wall_s']:.1f} s  ({r['load']})\n"
        f"  server: {r['batches']} batches (largest {r['largest_batch']}); "
        f"RSS {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB, "
        f"peak {r['rss_peak_mib']:.0f} MiB"
    )


def summary(results: list[dict]) -> str:
    lines = ["\n== summary (figures from a shared machine are noisy: compare within one run)"]
    one = next((r for r in results if r["batch"] == 1), None)
    for r in results:
        line = (
            f"  {r['name']:<22} answered {r['answered']:>3}/{r['n']}  p95 {r['p95_s']:6.2f} s  "
            f"{r['searches_per_s']:5.2f} searches/s  ({r['load']})"
        )
        if r["queue"] < r["n"] - r["batch"]:  # the bound's own demonstration, not a latency run
            past = r["refused"] == r["refused_with_retry_after"] > 0 and r["other"] == 0
            line += (
                f"\n  {'':<22} a queue of {r['queue']} under {r['n']} searches: {r['refused']} "
                f"refused, {r['refused_with_retry_after']} with Retry-After; target (503 with "
                f"Retry-After past the bound, nothing else failing): {'met' if past else 'NOT met'}"
            )
        elif one is not None and r is not one and one["searches_per_s"] > 0:
            speedup = r["searches_per_s"] / one["searches_per_s"]
            bound_s = 2 * r["n"] * r["alone_s"] / max(speedup, 1e-9)
            line += (
                f"\n  {'':<22} x{speedup:.2f} searches/s vs one at a time; target p95 <= "
                f"2 x {r['n']} x {r['alone_s']:.3f} s / {speedup:.2f} = {bound_s:.1f} s: "
                f"{'met' if r['p95_s'] <= bound_s and r['answered'] == r['n'] else 'NOT met'}"
            )
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--searches", type=int, default=3, help="per client, one after another")
    p.add_argument("--batch", type=int, default=8, help="the batched server's --batch")
    p.add_argument("--queue", type=int, default=64, help="the servers' --queue")
    p.add_argument(
        "--small-queue", type=int, default=10,
        help="also run the batched server with this --queue, to see 503s (0: skip)",
    )  # fmt: skip
    p.add_argument("--alone", type=int, default=3, help="lone searches timed per server")
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--max-run-s", type=float, default=300.0, help="bound on each phase")
    p.add_argument("--work-dir", help="keep models and gallery here (reused when present)")
    p.add_argument("--quick", action="store_true", help="tiny models: a smoke run")
    p.add_argument("--out", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.searches <= MAX_SEARCHES):
        p.error(f"--clients in [1, {MAX_CLIENTS}], --searches in [1, {MAX_SEARCHES}]")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args)
    print(summary(results))
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
