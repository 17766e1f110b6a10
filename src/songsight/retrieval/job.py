"""``songsight search`` as a job: recordings (files and folders) in, result files out.

`run_search` walks folders for audio, refuses to overwrite outputs unless asked, searches with a
`songsight.retrieval.searcher.Searcher` and writes the chosen format (and Raven tables), reporting
unusable recordings on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from songsight.errors import DataNotFoundError, SongsightError
from songsight.outputs import claim
from songsight.retrieval.results import keep_detections
from songsight.retrieval.writers import (
    OUTPUT_FORMATS,
    raven_table_names,
    write_raven,
    write_results,
)

__all__ = ["run_search"]


def _claim_outputs(files: list[Path], out, raven, overwrite: bool) -> ExitStack:
    """Claim ``--out`` and ``--raven`` before any model loads (`songsight.outputs.claim`): each
    writable, not written by another job, and not replaced unless ``overwrite`` (as ``embed``)."""
    stack = ExitStack()
    try:
        if out is not None:
            stack.enter_context(claim(out, what="--out", exists=None if overwrite else _REPLACE))
        if raven is not None:
            stack.enter_context(claim(raven, folder=True, what="--raven"))
            taken = [
                n for n in raven_table_names([str(f) for f in files]) if (Path(raven) / n).exists()
            ]
            if taken and not overwrite:
                raise SongsightError(
                    f"{raven} already holds {', '.join(taken[:3])}"
                    + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
                    + "; pass --overwrite to replace them, or choose another --raven folder"
                )
    except BaseException:
        stack.close()
        raise
    return stack


_REPLACE = "pass --overwrite to replace it"


def _recordings(recordings) -> list[Path]:
    """The audio files named or found in folders (a missing file is reported in the results
    like any other bad recording); none at all is an error, as for ``index build``."""
    from songsight.inputs.audio import AUDIO_SUFFIXES
    from songsight.inputs.files import collect_files

    if isinstance(recordings, (str, Path)):
        recordings = [recordings]
    files: list[Path] = []
    for r in map(Path, recordings):
        files += collect_files([r], AUDIO_SUFFIXES) if r.is_dir() else [r]
    if not files:
        where = ", ".join(map(str, recordings)) or "no path"
        raise DataNotFoundError(
            f"no recordings found in {where} (looked for {' '.join(AUDIO_SUFFIXES)}, in folders "
            "recursively); nothing to search"
        )
    return files


def _gone_photos_note(searcher, results) -> str | None:
    """One line when photos in these answers are gone from disk (moved or deleted since the
    gallery was built), else None."""
    from songsight.gallery import missing_note

    answered = {h.image_id: h.image for r in results for h in r.hits}
    gone = sum(not os.path.isfile(p) for p in answered.values())
    if not gone:
        return None
    return missing_note(searcher.gallery.directory, gone, len(answered)).replace(
        "photos of the gallery", "photos in these answers, from the gallery"
    )


def run_search(
    recordings: Sequence[str | Path],
    gallery: str | Path,
    *,
    model: str | Path | None = None,
    audio_model: str | Path | None = None,
    image_model: str | Path | None = None,
    k: int = 10,
    window_s: float | None = None,
    hop_s: float | None = None,
    fmt: str = "table",
    out: str | Path | None = None,
    raven: str | Path | None = None,
    overwrite: bool = False,
    min_score: float = 0.0,
    species_list: str | Path | None = None,
    device: str | None = None,
    cascade_mode: str = "top1",
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = True,
    method: str | None = None,
    runtime: str = "auto",
    **prompts,
) -> int:
    """`songsight search`: folders are walked for audio files; writes the results; returns
    the exit code (1 when some recording could not be used, else 0). ``prompts``: the
    cascade's ``prompt_format``, ``templates``, ``audio_prompt_format``, ``audio_templates``."""
    from songsight.retrieval.searcher import Searcher

    if fmt not in OUTPUT_FORMATS:
        raise SongsightError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if fmt == "parquet" and out is None:
        raise SongsightError("--format parquet needs --out FILE")
    if not 0 <= min_score <= 1:
        raise SongsightError(f"--min-score is a probability, in [0, 1]; got {min_score:g}")
    files = _recordings(recordings)
    with _claim_outputs(files, out, raven, overwrite):
        searcher = Searcher(
            gallery, model, audio_model=audio_model, image_model=image_model, device=device,
            cascade_mode=cascade_mode, batch_size=batch_size, precision=precision,
            species_list=species_list, method=method, runtime=runtime, quiet=not progress,
            **prompts,
        )  # fmt: skip
        if searcher.species is not None and searcher.species.warning():
            print(f"songsight: {searcher.species.warning()}", file=sys.stderr)
        results = searcher.search(files, k=k, window_s=window_s, hop_s=hop_s, progress=progress)
        provenance = {**searcher.provenance, "min_score": min_score}
        write_results(
            keep_detections(results, min_score) if min_score else results, fmt, out, provenance
        )
        if raven is not None:
            write_raven(results, raven, searcher.sample_rate_hz / 2, min_score)
    note = _gone_photos_note(searcher, results)
    if note:
        print(f"songsight: {note}", file=sys.stderr)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"songsight: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
