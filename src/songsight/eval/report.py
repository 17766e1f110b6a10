"""RESULTS.json -> Markdown tables shaped like a paper's, for one run or several merged.

`render_markdown(results)` writes the tables of one run (RESULTS.md); `merge_reports(paths)`
(``songsight report``) puts several runs' rows side by side in the same tables, one row per
(method, run). Values are percentages of the metrics in RESULTS.json; every table carries
its floor (chance) and ceiling (the oracle for retrieval, a perfect score elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from songsight.errors import DataNotFoundError, SongsightError
from songsight.eval.report_tables import (
    GALLERY_NAMES,
    LABELS,
    Run,
    dig,
    other_sections,
    pct,
    retrieval_sections,
)


def _data_source(res: dict) -> str:
    """What was scored: SSW60's folder, or the user's manifests (names and sha256 heads)."""
    data = res.get("data") or {}
    if data.get("kind") != "manifests":
        return f"SSW60 at `{data['root']}`" if data.get("root") else ""
    files = [
        f"{what} `{Path(d['path']).name}` (sha256 {d['sha256'][:12]})"
        for what, key in (("recordings", "audio"), ("photos", "photos"), ("species", "species_table"))
        if (d := data.get(key))
    ]  # fmt: skip
    return "your " + ", ".join(files)


def _describe(name: str, res: dict, multi: bool) -> list[str]:
    prov = res.get("provenance", {})
    counts = dig(res, "data", "counts") or {}
    g = counts.get("gallery") or {}
    models = [
        f"{k.replace('_', ' ')} `{dig(prov, k, 'model_id')}` ({dig(prov, k, 'revision')})"
        for k in ("audio_model", "image_model")
        if dig(prov, k)
    ]
    dist = dig(prov, "distilled", "checkpoint")
    cfg = prov.get("config", {})
    parts = ", ".join(f"{GALLERY_NAMES.get(k, k)} {v}" for k, v in g.items() if k != "all")
    source = _data_source(res)
    text = (
        (f"Data: {source}. " if source else "")
        + f"{counts.get('queries', '?')} test recordings of {counts.get('species', '?')} species"
        + (f"; gallery {g.get('all')} test images" + (f" ({parts})" if parts else "") if g else "")
        + (f"; {counts['train']} train recordings" if counts.get("train") else "")
        + f"; bootstrap {cfg.get('bootstrap')}, seed {cfg.get('seed')}. Models: "
        + ", ".join(models)
        + (f"; distilled `{dist}`" if dist else "")
        + "."
    )
    skipped = len(dig(res, "data", "skipped") or []) + len(dig(res, "data", "missing") or [])
    if skipped:
        text += f" {skipped} listed or unreadable file(s) skipped (see RESULTS.json `data`)."
    for task, why in (res.get("skipped_tasks") or {}).items():
        text += f" Not run: {task} ({why})."
    return [f"- **{name}**: {text}" if multi else text]


def render_runs(runs: Sequence[Run], title: str = "songsight evaluation") -> str:
    """Markdown for one or more runs' results dicts, ``[(name, results), ...]``."""
    lines = [f"# {title}", ""]
    for name, res in runs:
        lines += _describe(name, res, len(runs) > 1)
    hashes = {
        json.dumps(dig(r, "provenance", "dataset", "manifest_sha256", "gallery")) for _, r in runs
    }
    if len(hashes) > 1:
        lines += [
            "",
            "**Note:** the runs did not use the same image gallery; compare their numbers with care.",
        ]
    lines += [
        "",
        "Values are percentages; `n/a`: the method cannot do the task (BioLingual has no image space).",
    ]
    lines += retrieval_sections(runs) + other_sections(runs)
    return "\n".join(lines) + "\n"


def render_markdown(results: dict) -> str:
    """The RESULTS.md text of one run."""
    return render_runs([("run", results)])


def _run_names(paths: Sequence[Path]) -> list[str]:
    for candidate in (
        [p.stem for p in paths],
        [p.parent.name for p in paths],
        [f"{p.parent.name}/{p.stem}" for p in paths],
    ):
        if len(set(candidate)) == len(candidate) and all(candidate):
            return candidate
    return [str(p) for p in paths]


def merge_reports(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> str:
    """Markdown merging several RESULTS.json files into one set of tables (``songsight report``).

    ``names`` label the runs (default: the files' stems, or their folders' names when the stems
    are alike).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataNotFoundError("merge_reports needs at least one RESULTS.json")
    runs = []
    for p in paths:
        if not p.is_file():
            raise DataNotFoundError(f"results file not found: {p}")
        try:
            res = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataNotFoundError(f"{p} is not a RESULTS.json ({exc})") from None
        if not isinstance(res, dict) or "format_version" not in res:
            raise DataNotFoundError(
                f"{p} is not a RESULTS.json (no format_version; write one with songsight evaluate)"
            )
        runs.append(res)
    names = list(names) if names else _run_names(paths)
    if len(names) != len(paths):
        raise SongsightError(
            f"--names gives {len(names)} name(s) for {len(paths)} results file(s): one a file, "
            "comma-separated, in the same order"
        )
    return render_runs(
        list(zip(names, runs, strict=True)), title="songsight evaluation: merged runs"
    )


def format_selection(selection: dict) -> str:
    """The audio template candidates and their zero-shot top-1, the chosen one starred."""
    lines = [
        f"audio templates: zero-shot top-1 of BioLingual on {selection['n']} train recordings "
        f"(prompt format {selection['prompt_format']}), * = chosen"
    ]
    for cand in selection["candidates"]:
        mark = "*" if cand["spec"] == selection["chosen"] else " "
        count = len(cand["templates"])
        lines.append(f"  {mark} {pct(cand['top1']):>5}  {cand['spec']}  ({count} template(s))")
    return "\n".join(lines)


def format_summary(results: dict) -> str:
    """A few lines for the terminal: the audio template choice (when there was one),
    audio-to-image mAP and R@1 of each method, skipped files."""
    ret = results.get("retrieval") or {}
    lines = (
        [format_selection(results["template_selection"])]
        if results.get("template_selection")
        else []
    )
    lines += [f"audio-to-image retrieval (gallery: {ret.get('gallery', 'all')}):"] if ret else []
    for method, scores in (ret.get("audio_to_image") or {}).items():
        lines.append(
            f"  {LABELS.get(method, method):<22} mAP {pct(scores.get('map')):>5}  "
            f"R@1 {pct(scores.get('recall@1')):>5}"
        )
    skipped = len(dig(results, "data", "skipped") or [])
    if skipped:
        lines.append(f"{skipped} unreadable file(s) skipped (listed under data.skipped)")
    lines += [f"not run: {t} ({why})" for t, why in (results.get("skipped_tasks") or {}).items()]
    return "\n".join(lines)
