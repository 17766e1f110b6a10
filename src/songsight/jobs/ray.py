"""Embedding on a Ray cluster: the same Parquet store as `songsight.jobs.embed`, many model workers.

``songsight index build --engine ray`` and the Ray variants of ``songsight embed`` run here.
Files are listed on the driver and handed to Ray Data (``ray.data.from_items``); each worker
is an actor (`_Embedder`) that loads the model once and, per batch of files, hashes them,
skips those the store already holds (resume by content hash, as on one machine) and embeds the
rest. One output row per *file* (its windows packed together) keeps a recording whole, so
the driver adds every file to the `EmbeddingWriter` in one call: the store, its columns, its
provenance and its resume behaviour are exactly those of the single-machine path, and a kill
loses at most the rows not yet flushed.

Needs the ``scale`` extra (``pip install 'songsight[scale]'``, i.e. ``ray[data]``). Without a
running cluster ``ray.init()`` starts a local one; connect to a cluster first with
``ray.init(address=...)`` (or ``RAY_ADDRESS``) to spread over machines. File paths must be
readable by every worker (shared storage).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from songsight.errors import InputFileError, SongsightError

__all__ = [
    "audio_model_provenance",
    "embed_audio_files_ray",
    "embed_image_files_ray",
    "image_model_provenance",
]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise SongsightError(
            "the Ray engine needs Ray Data; install it with: pip install 'songsight[scale]'"
        ) from err
    if not ray.is_initialized():
        start_local_ray(ray)
    return ray


# Ray waits a hard-coded 30 s for a new local node's raylet to register; on a busy machine
# the first start can miss that and the next one succeeds.
RAY_START_TRIES = 3


def start_local_ray(ray, tries: int = RAY_START_TRIES, **init_options) -> None:
    """``ray.init`` a local instance, trying again when its start times out."""
    options = {"include_dashboard": False, "log_to_driver": False, **init_options}
    for attempt in range(1, tries + 1):
        try:
            ray.init(**options)
            return
        except Exception as exc:  # Ray raises a bare Exception for the startup timeout
            ray.shutdown()
            if "timed out during startup" not in str(exc):
                raise
            if attempt == tries:
                raise SongsightError(
                    f"Ray's local instance did not start ({tries} tries; {exc}). The machine "
                    "may be overloaded: try again when it is quieter, or connect to a running "
                    "cluster with RAY_ADDRESS=host:port."
                ) from exc


def _make_encoder(kind: str, model: str, options: dict):
    """A worker's encoder: torch, which Ray's workers run (`open_torch_encoder`)."""
    from songsight.encoders.runtime import open_torch_encoder

    return open_torch_encoder(model, kind, **options)


def _provenance(kind: str, model: str, options: dict, window_s=None, hop_s=None) -> dict:
    encoder = _make_encoder(kind, model, options)
    prov = encoder.provenance()
    if kind == "audio":
        pre = prov["preprocessing"]
        pre["window_s"], pre["hop_s"] = encoder.windowing(window_s, hop_s)
    return prov


def _num_gpus(ray, device: str | None) -> float:
    if device and device.startswith("cuda"):
        return 1.0
    if device in (None, "auto"):
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return 0.0


def _remote_provenance(kind, model, options, device, window_s=None, hop_s=None) -> dict:
    """The encoder's provenance, computed on a worker like the ones that will embed (so the
    driver never loads the model, and device-dependent fields match)."""
    ray = _import_ray()
    task = ray.remote(num_gpus=_num_gpus(ray, device))(_provenance)
    return ray.get(task.remote(kind, model, options, window_s, hop_s))


def image_model_provenance(
    model: str, preprocess: str = "model", device: str | None = None, precision: str = "auto"
) -> dict:
    """`BioCLIPEncoder.provenance()` of ``model`` as a Ray worker sees it."""
    options = {"preprocess": preprocess, "device": _worker_device(device), "precision": precision}
    return _remote_provenance("image", model, options, device)


def audio_model_provenance(
    model: str,
    window_s: float | None = None,
    hop_s: float | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> dict:
    """`BioLingualEncoder.provenance()` of ``model`` (with the window used) on a Ray worker."""
    options = {"device": _worker_device(device), "precision": precision}
    return _remote_provenance("audio", model, options, device, window_s, hop_s)


def _worker_device(device: str | None) -> str | None:
    # Each GPU actor sees only its own GPU, always as cuda:0.
    return "cuda" if device and device.startswith("cuda") else device


class _Embedder:
    """A Ray Data actor: one model per worker; a batch of paths in, one row per file out."""

    def __init__(
        self, kind: str, model: str, options: dict, done: list, window_s, hop_s, milvus=None
    ):
        import ray

        self.kind, self.window_s, self.hop_s = kind, window_s, hop_s
        self.done = ray.get(done[0]) if done else set()
        self.encoder = _make_encoder(kind, model, options)
        self.milvus = None
        if milvus:  # photos go straight into the gallery's Milvus collection from here
            sink = ray.get(milvus[0])
            self.milvus = sink["writer"](sink)

    def __call__(self, batch: dict) -> dict:
        from songsight.inputs.files import sha256_file

        rows: list[dict] = []
        todo, hashes = [], []
        for p in (str(x) for x in batch["path"]):
            try:
                digest = sha256_file(p)
            except OSError as exc:
                rows.append(_row(p, "", "error", f"cannot read file ({exc.strerror or exc})"))
                continue
            if digest in self.done:
                rows.append(_row(p, digest, "skipped"))
                continue
            todo.append(p)
            hashes.append(digest)
        if self.kind == "image":
            results = self.encoder.iter_images(todo)
        else:
            results = self.encoder.embed_windows(todo, self.window_s, self.hop_s)
        for j, res in results:
            if isinstance(res, InputFileError):
                rows.append(_row(todo[j], hashes[j], "error", res.reason))
            elif self.kind == "image":
                rows.append(_row(todo[j], hashes[j], "ok", "", np.asarray(res)[None]))
            else:
                rows.append(
                    _row(
                        todo[j],
                        hashes[j],
                        "ok",
                        "",
                        res.windows,
                        res.starts_s,
                        res.ends_s,
                        res.duration_s,
                        res.silent,
                    )
                )
        if self.milvus is not None:
            ok = [r for r in rows if r["status"] == "ok"]
            if ok:
                vectors = np.stack([np.frombuffer(r["embedding"], np.float32) for r in ok])
                self.milvus.write([r["path"] for r in ok], [r["sha256"] for r in ok], vectors)
        columns = {key: [r[key] for r in rows] for key in _ROW_KEYS}
        out = {k: np.array(v, dtype=object) for k, v in columns.items()}
        out["n_windows"] = np.array(columns["n_windows"], np.int64)
        out["duration_s"] = np.array(columns["duration_s"], np.float64)
        out["silent"] = np.array(columns["silent"], bool)
        return out


_ROW_KEYS = (
    "path", "sha256", "status", "error", "n_windows", "embedding", "starts_s", "ends_s",
    "duration_s", "silent",
)  # fmt: skip


def _row(
    path, digest, status, error="", vectors=None, starts=None, ends=None, duration=0.0, silent=False
):
    """One file's output; arrays travel as raw bytes so a file of any length is one row."""
    vectors = np.zeros((0, 0), np.float32) if vectors is None else np.asarray(vectors, np.float32)
    return {
        "path": path,
        "sha256": digest,
        "status": status,
        "error": error,
        "n_windows": len(vectors),
        "embedding": vectors.tobytes(),
        "starts_s": np.asarray(starts if starts is not None else [], np.float64).tobytes(),
        "ends_s": np.asarray(ends if ends is not None else [], np.float64).tobytes(),
        "duration_s": float(duration),
        "silent": bool(silent),
    }


def _embed_files_ray(kind: str, paths, out, model: str, options: dict, **job):
    """`_embed_claimed` with ``out`` claimed for the job (`songsight.jobs.embed.claim_store`)."""
    from songsight.jobs.embed import claim_store

    with claim_store(out, job["resume"], job["overwrite"]):
        return _embed_claimed(kind, paths, out, model, options, **job)


def _embed_claimed(
    kind: str,
    paths: Iterable[str | Path],
    out: str | Path,
    model: str,
    options: dict,
    *,
    window_s: float | None,
    hop_s: float | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    vector_dtype: str,
    concurrency: int,
    batch_size: int,
    device: str | None,
    milvus: dict | None = None,
):
    from tqdm.auto import tqdm

    from songsight.index.store import audio_rows, image_rows
    from songsight.inputs.audio import AUDIO_SUFFIXES
    from songsight.inputs.files import collect_files, write_errors
    from songsight.inputs.images import IMAGE_SUFFIXES
    from songsight.jobs.embed import EmbedReport, open_store

    if concurrency < 1 or batch_size < 1:
        raise SongsightError("concurrency (workers) and batch_size must be >= 1")
    ray = _import_ray()
    files = [
        f.absolute()
        for f in collect_files(paths, IMAGE_SUFFIXES if kind == "image" else AUDIO_SUFFIXES)
    ]
    options = {**options, "device": _worker_device(device)}
    prov = _remote_provenance(kind, model, options, device, window_s, hop_s)
    out = Path(out)
    writer, errors_path = open_store(out, prov, resume, overwrite, vector_dtype)
    dim = int(prov["dim"])
    n_ok = n_skipped = n_rows = n_silent = 0
    errors: list[tuple[str, str]] = []
    bar = tqdm(
        total=len(files),
        desc=f"embedding {kind}s (ray)",
        unit="file",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        if files:
            # Ray Data draws its own progress bars; ours (per file) is the one asked for.
            ray.data.DataContext.get_current().enable_progress_bars = False
            done = [ray.put(writer.done_hashes)] if writer.done_hashes else []
            ds = ray.data.from_items([{"path": str(f)} for f in files])
            ds = ds.map_batches(
                _Embedder,
                fn_constructor_kwargs={
                    "kind": kind,
                    "model": model,
                    "options": options,
                    "done": done,
                    "window_s": window_s,
                    "hop_s": hop_s,
                    "milvus": [ray.put(milvus)] if milvus else [],
                },
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=concurrency),
                num_gpus=_num_gpus(ray, device),
                batch_format="numpy",
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for r in range(len(batch["path"])):
                    bar.update(1)
                    path, status = str(batch["path"][r]), str(batch["status"][r])
                    if status == "skipped":
                        n_skipped += 1
                        continue
                    if status == "error":
                        errors.append((path, str(batch["error"][r])))
                        continue
                    vectors = np.frombuffer(batch["embedding"][r], np.float32).reshape(-1, dim)
                    n_ok += 1
                    digest = str(batch["sha256"][r])
                    if kind == "image":
                        writer.add(image_rows(path, digest, vectors[0]))
                        continue
                    silent = bool(batch["silent"][r])
                    n_silent += silent
                    writer.add(
                        audio_rows(
                            path, digest, vectors,
                            np.frombuffer(batch["starts_s"][r], np.float64),
                            np.frombuffer(batch["ends_s"][r], np.float64),
                            float(batch["duration_s"][r]), silent,
                        )
                    )  # fmt: skip
                    n_rows += len(vectors)
    finally:
        bar.close()
        writer.flush()
        write_errors(errors_path, errors)
    total_rows = writer.close()
    return EmbedReport(
        out, errors_path, len(files), n_ok, n_skipped, len(errors), total_rows, n_silent
    )


def embed_image_files_ray(
    paths: Iterable[str | Path],
    out: str | Path,
    model: str,
    *,
    preprocess: str = "model",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    vector_dtype: str = "float32",
    concurrency: int = 2,
    batch_size: int = 32,
    device: str | None = None,
    precision: str = "auto",
    milvus: dict | None = None,
):
    """`embed.embed_image_files` on Ray: ``concurrency`` BioCLIP-2 actors, same store.

    ``model`` is a Hub id or folder every worker can resolve. ``milvus``: a sink
    (`songsight.gallery.milvus.workers.ray_sink`) whose ``writer`` each worker builds with it
    and gives every batch (``write(paths, hashes, vectors)``). Returns an `EmbedReport`.
    """
    options = {"preprocess": preprocess, "precision": precision, "batch_size": batch_size}
    return _embed_files_ray(
        "image", paths, out, str(model), options, window_s=None, hop_s=None, resume=resume,
        overwrite=overwrite, progress=progress, vector_dtype=vector_dtype,
        concurrency=concurrency, batch_size=batch_size, device=device, milvus=milvus,
    )  # fmt: skip


def embed_audio_files_ray(
    paths: Iterable[str | Path],
    out: str | Path,
    model: str,
    *,
    window_s: float | None = None,
    hop_s: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    concurrency: int = 2,
    batch_size: int = 16,
    files_per_batch: int = 8,
    device: str | None = None,
    precision: str = "auto",
):
    """`embed.embed_audio_files` on Ray: ``concurrency`` BioLingual actors, same store.

    ``batch_size`` windows per model forward; ``files_per_batch`` recordings per actor call.
    """
    options = {"precision": precision, "batch_size": batch_size}
    return _embed_files_ray(
        "audio", paths, out, str(model), options, window_s=window_s, hop_s=hop_s, resume=resume,
        overwrite=overwrite, progress=progress, vector_dtype="float32",
        concurrency=concurrency, batch_size=files_per_batch, device=device,
    )  # fmt: skip
