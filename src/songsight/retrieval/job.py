"""``songsight search`` as a job: recordings (files and folders) in, result files out.

`run_search` walks folders for audio, refuses to overwrite outputs unless asked, searches with a
`songsight.retrieval.searcher.Searcher` and writes the chosen format (and Raven tables), reporting
unusable recordings on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from songsight.errors import SongsightError
from songsight.retrieval.results import keep_detections
from songsight.retrieval.writers import (
    OUTPUT_FORMATS,
    raven_table_names,
    write_raven,
    write_results,
)

__all__ = ["run_search"]


def _check_outputs(files: list[Path], out, raven, overwrite: bool) -> None:
    """Refuse, before any work, to replace result files that exist (as ``embed`` does)."""
    if overwrite:
        return
    if out is not None and Path(out).exists():
        raise SongsightError(f"{out} already exists; pass --overwrite to replace it")
    if raven is not None:
        taken = [
            n for n in raven_table_names([str(f) for f in files]) if (Path(raven) / n).exists()
        ]
        if taken:
            raise SongsightError(
                f"{raven} already holds {', '.join(taken[:3])}"
                + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
                + "; pass --overwrite to replace them, or choose another --raven folder"
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
    **prompts,
) -> int:
    """`songsight search`: folders are walked for audio files; writes the results; returns
    the exit code (1 when some recording could not be used, else 0). ``prompts``: the
    cascade's ``prompt_format``, ``templates``, ``audio_prompt_format``, ``audio_templates``."""
    from songsight.inputs.audio import AUDIO_SUFFIXES
    from songsight.inputs.files import collect_files
    from songsight.retrieval.searcher import Searcher

    if fmt not in OUTPUT_FORMATS:
        raise SongsightError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
    if fmt == "parquet" and out is None:
        raise SongsightError("--format parquet needs --out FILE")
    if not 0 <= min_score <= 1:
        raise SongsightError(f"--min-score is a probability, in [0, 1]; got {min_score:g}")
    if isinstance(recordings, (str, Path)):
        recordings = [recordings]
    files: list[Path] = []
    for r in map(Path, recordings):
        # A missing file is reported in the results like any other bad recording.
        files += collect_files([r], AUDIO_SUFFIXES) if r.is_dir() else [r]
    _check_outputs(files, out, raven, overwrite)
    searcher = Searcher(
        gallery, model, audio_model=audio_model, image_model=image_model, device=device,
        cascade_mode=cascade_mode, batch_size=batch_size, precision=precision,
        species_list=species_list, method=method, **prompts,
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
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"songsight: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
