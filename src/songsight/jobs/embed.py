"""Embedding jobs over files on disk: walk folders, hash, skip what is done, embed, store.

``embed_audio_files`` and ``embed_image_files`` are what ``songsight embed`` runs. Each input
file gives rows in a Parquet store (see `songsight.index.store`) or one line in the side
file ``FILE.errors.csv``; a bad file never stops the batch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from songsight.errors import InputFileError, SongsightError
from songsight.index.store import EmbeddingWriter, audio_rows, image_rows
from songsight.inputs.audio import AUDIO_SUFFIXES
from songsight.inputs.files import ErrorLog, collect_files, errors_path_for, sha256_file
from songsight.inputs.images import IMAGE_SUFFIXES
from songsight.outputs import Claim, claim
from songsight.provenance import environment


@dataclass
class EmbedReport:
    out: Path
    errors_path: Path
    n_files: int
    n_embedded: int
    n_skipped: int
    n_failed: int
    n_rows: int
    n_silent: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0

    def summary(self) -> str:
        text = (
            f"{self.n_embedded} embedded, {self.n_skipped} already done, {self.n_failed} failed "
            f"of {self.n_files} files; {self.n_rows} rows in {self.out}"
        )
        if self.n_silent:
            text += f"; {self.n_silent} silent file(s) flagged"
        if self.n_failed:
            text += f"; errors in {self.errors_path}"
        return text


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="file",
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
    )


def claim_store(out: str | Path, resume: bool, overwrite: bool) -> Claim:
    """Claim a store before its job loads a model (`songsight.outputs.claim`): writable, one
    writer, and an existing store (or an interrupted run's parts) only with ``resume`` or
    ``overwrite``. Release it when the job ends (``with``)."""
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    held = claim(out, what="--out")
    if not (resume or overwrite) and (out.exists() or parts.exists()):
        held.release()
        raise SongsightError(
            f"{out} already exists (or an interrupted run left {parts.name}); "
            "pass --resume to continue it or --overwrite to start again"
        )
    return held


def open_store(
    out: Path, provenance: dict, resume: bool, overwrite: bool, vector_dtype: str = "float32"
) -> tuple[EmbeddingWriter, Path]:
    """The store a job writes into (provenance and the package versions recorded, a resume
    refused on any mismatch) and its errors file's path. The caller holds its claim
    (`claim_store`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = EmbeddingWriter(
        out,
        {**provenance, "environment": environment()},
        resume=resume,
        overwrite=overwrite,
        vector_dtype=vector_dtype,
    )
    return writer, errors_path_for(out)


def _prepare(paths, suffixes, out, provenance, resume, overwrite, vector_dtype="float32"):
    files = collect_files(paths, suffixes)
    out = Path(out)
    writer, errors_path = open_store(out, provenance, resume, overwrite, vector_dtype)
    todo, hashes, errors = [], {}, []
    for f in files:
        try:
            digest = sha256_file(f)
        except OSError as exc:
            errors.append((str(f), f"cannot read file ({exc.strerror or exc})"))
            continue
        if digest in writer.done_hashes:
            continue
        hashes[f] = digest
        todo.append(f)
    return files, writer, errors_path, todo, hashes, errors


def _run_job(prepared, results, rows_for, desc: str, progress: bool) -> EmbedReport:
    """Drain ``results`` ((index into todo, result or InputFileError)) into the store.

    ``rows_for(path, sha256, result) -> list[dict]`` makes a file's rows; they are added in one
    call, so a file is stored whole or not at all.
    """
    files, writer, errors_path, todo, hashes, errors = prepared
    log = ErrorLog(errors_path, errors)
    n_ok = n_silent = 0
    bar = _progress(len(todo), desc, progress)
    try:
        for i, res in results:
            f = todo[i]
            bar.update(1)
            if isinstance(res, InputFileError):
                log.write(str(f), res.reason)
                continue
            n_ok += 1
            rows = rows_for(f, hashes[f], res)
            n_silent += bool(rows[0].get("silent", False))
            writer.add(rows)
    finally:
        bar.close()
        writer.flush()
        log.close()
    total_rows = writer.close()
    n_skipped = len(files) - len(todo) - len(errors)
    return EmbedReport(
        Path(writer.path), errors_path, len(files), n_ok, n_skipped, log.count, total_rows, n_silent
    )


def embed_audio_files(
    paths: Iterable[str | Path],
    out: str | Path,
    encoder,
    window_s: float | None = None,
    hop_s: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbedReport:
    """Embed recordings into ``out`` (Parquet): one row per analysis window.

    Columns: ``path``, ``sha256``, ``window`` (index in the file), ``start_s``, ``end_s``,
    ``duration_s``, ``silent``, ``embedding``. The clip-level vector of a file is the
    re-normalised mean of its window rows.
    """
    window_s, hop_s = encoder.windowing(window_s, hop_s)
    prov = {**encoder.provenance()}
    prov["preprocessing"] = {**prov["preprocessing"], "window_s": window_s, "hop_s": hop_s}

    def rows_for(f, digest, res):
        return audio_rows(
            str(f), digest, res.windows, res.starts_s, res.ends_s, res.duration_s, res.silent
        )

    with claim_store(out, resume, overwrite):
        prepared = _prepare(paths, AUDIO_SUFFIXES, out, prov, resume, overwrite)
        results = encoder.embed_windows(prepared[3], window_s, hop_s)
        return _run_job(prepared, results, rows_for, "embedding audio", progress)


def embed_image_files(
    paths: Iterable[str | Path],
    out: str | Path,
    encoder,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    vector_dtype: str = "float32",
) -> EmbedReport:
    """Embed photos into ``out`` (Parquet): columns ``path``, ``sha256``, ``embedding``."""

    def rows_for(f, digest, res):
        return image_rows(str(f), digest, res)

    with claim_store(out, resume, overwrite):
        prepared = _prepare(
            paths, IMAGE_SUFFIXES, out, encoder.provenance(), resume, overwrite, vector_dtype
        )
        return _run_job(
            prepared, encoder.iter_images(prepared[3]), rows_for, "embedding images", progress
        )
