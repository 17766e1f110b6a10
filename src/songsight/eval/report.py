"""RESULTS.json -> Markdown tables shaped like a paper's, for one run or several merged.

`render_markdown(results)` writes the tables of one run (RESULTS.md); `merge_reports(paths)`
(``songsight report``) puts several runs' rows side by side in the same tables, one row per
(method, run). Values are percentages of the metrics in RESULTS.json; every table carries
its floor (chance) and ceiling (the oracle for retrieval, a perfect score elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from songsight.errors import DataNotFoundError, SongsightError

LABELS = {
    "chance": "Chance (floor)", "cascade_top1": "Cascade, top-1", "cascade_weighted": "Cascade, weighted",
    "map_ridge": "Mapping, ridge", "map_procrustes": "Mapping, Procrustes", "map_mlp": "Mapping, MLP",
    "original": "BioLingual (original)", "distilled": "Distilled",
    "distilled_proto": "Distilled, species read-out", "fused": "Distilled + cascade, fused",
    "oracle": "Oracle (ceiling)",
    "ceiling": "Perfect (ceiling)",
}  # fmt: skip
RETRIEVAL_ROWS = (
    "chance", "cascade_top1", "cascade_weighted", "map_ridge", "map_procrustes", "map_mlp",
    "original", "distilled", "distilled_proto", "fused", "oracle",
)  # fmt: skip
ALIGNMENT_ROWS = (
    "chance", "original", "map_ridge", "map_procrustes", "map_mlp", "distilled", "ceiling",
)  # fmt: skip
DISCRIMINABILITY_ROWS = ("chance", "original", "distilled", "ceiling")
RETRIEVAL_COLUMNS = (
    ("mAP", "map"),
    ("R@1", "recall@1"),
    ("R@5", "recall@5"),
    ("R@10", "recall@10"),
    ("P@10", "precision@10"),
    ("nDCG@10", "ndcg@10"),
    ("MRR", "mrr"),
)
GALLERY_NAMES = {"nabirds": "NABirds", "inat": "iNat", "all": "All"}
NA = "n/a"
Run = tuple[str, dict]


def _pct(value) -> str:
    return "–" if value is None else f"{100.0 * float(value):.1f}"


def _with_ci(ci: dict | None) -> str | None:
    if not ci or ci.get("mean") is None:
        return None
    if ci.get("ci_low") is None:
        return _pct(ci["mean"])
    return f"{_pct(ci['mean'])} [{_pct(ci['ci_low'])}, {_pct(ci['ci_high'])}]"


def _dig(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _table(
    runs: Sequence[Run],
    rows: Sequence[str],
    headers: Sequence[str],
    cell: Callable[[dict, str, int], str | None],
) -> list[str]:
    """Markdown lines: one row per (method, run) that has a value; a Run column when several runs.

    ``cell(results, method, column)`` gives the formatted text, ``NA`` for a method that cannot
    take part, or None where the run lacks the method.
    """
    multi = len(runs) > 1
    head = ["Method", *(["Run"] if multi else []), *headers]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for method in rows:
        for name, res in runs:
            cells = [cell(res, method, j) for j in range(len(headers))]
            if all(c is None for c in cells):
                continue
            lines.append(
                "| "
                + " | ".join(
                    [
                        LABELS.get(method, method),
                        *([name] if multi else []),
                        *[c if c is not None else "–" for c in cells],
                    ]
                )
                + " |"
            )
    return lines if len(lines) > 2 else []


def _section(title: str, note: str, table: list[str]) -> list[str]:
    return ["", f"## {title}", "", *([note, ""] if note else []), *table] if table else []


def _retrieval_cell(key: str, ci_key: str | None = None):
    def cell(res: dict, method: str, j: int) -> str | None:
        ret = res.get("retrieval")
        if not ret:
            return None
        if method == "original":
            return NA
        scores = _dig(ret, key, method)
        if scores is None:
            return None
        if ci_key is not None and j == 0:
            return _with_ci(_dig(ret, ci_key, method, "map")) or _pct(scores.get("map"))
        return _pct(scores.get(RETRIEVAL_COLUMNS[j][1]))

    return cell


def _retrieval_sections(runs: Sequence[Run]) -> list[str]:
    heads = [h for h, _ in RETRIEVAL_COLUMNS]
    gallery = next(
        (r["retrieval"].get("gallery", "all") for _, r in runs if r.get("retrieval")), "all"
    )
    unmatched = "".join(f" {n}" for n in dict.fromkeys(_unmatched_note(r) for _, r in runs) if n)
    out = _section(
        f"Audio-to-image retrieval (gallery: {gallery})",
        "Queries: test recordings; relevant: every image of the same species. mAP with 95% "
        "bootstrap CI." + unmatched,
        _table(runs, RETRIEVAL_ROWS, heads, _retrieval_cell("audio_to_image", "audio_to_image_ci")),
    )
    seen = [g for _, r in runs for g in _dig(r, "retrieval", "audio_to_image_by_gallery") or {}]
    # The parts of the gallery, then the whole; nothing when the whole is the only part.
    galleries = [*dict.fromkeys(g for g in seen if g != "all"), "all"] if len(set(seen)) > 1 else []

    def by_gallery(res, method, j):
        if not res.get("retrieval"):
            return None
        if method == "original":
            return NA
        value = _dig(res, "retrieval", "audio_to_image_by_gallery", galleries[j], method, "map")
        return None if value is None else _pct(value)

    out += _section(
        "mAP by gallery",
        "",
        _table(runs, RETRIEVAL_ROWS, [GALLERY_NAMES.get(g, g) for g in galleries], by_gallery),
    )
    if any(_dig(r, "retrieval", "audio_to_image_by_subset") for _, r in runs):
        cols = [("seen", "map"), ("seen", "recall@1"), ("heldout", "map"), ("heldout", "recall@1")]

        def subset(res, method, j):
            if not _dig(res, "retrieval", "audio_to_image_by_subset"):
                return None
            if method == "original":
                return NA
            part, metric = cols[j]
            value = _dig(res, "retrieval", "audio_to_image_by_subset", part, method, metric)
            return None if value is None else _pct(value)

        out += _section(
            "Seen vs held-out species (audio-to-image)",
            "Held-out species were left out of distillation and of the mappings' fit.",
            _table(
                runs,
                RETRIEVAL_ROWS,
                ["Seen mAP", "Seen R@1", "Held-out mAP", "Held-out R@1"],
                subset,
            ),
        )
    keep = (0, 1, 2, 3, 6)
    out += _section(
        "Image-to-audio retrieval",
        "Queries: test images; gallery: test recordings.",
        _table(
            runs,
            RETRIEVAL_ROWS,
            [heads[i] for i in keep],
            lambda res, m, j: _retrieval_cell("image_to_audio")(res, m, keep[j]),
        ),
    )
    return out


def _scores_cell(section: tuple[str, ...], keys: Sequence[str]):
    def cell(res: dict, method: str, j: int) -> str | None:
        block = _dig(res, *section)
        if not block:
            return None
        if method == "ceiling":
            return _pct(1.0)
        value = _dig(block, method, keys[j])
        return None if method not in block else _pct(value)

    return cell


def _other_sections(runs: Sequence[Run]) -> list[str]:
    out = _section(
        "Audio discriminability",
        "Linear probe and k-NN, fitted on the train recordings, scored on the test recordings.",
        _table(
            runs,
            DISCRIMINABILITY_ROWS,
            ["Probe accuracy", "Probe macro-F1", "k-NN accuracy"],
            _scores_cell(
                ("discriminability",), ("probe_accuracy", "probe_macro_f1", "knn_accuracy")
            ),
        ),
    )
    out += _section(
        "Audio-text alignment: focal recordings",
        "Zero-shot species classification, each model against species prompts in its own text space.",
        _table(
            runs,
            ALIGNMENT_ROWS,
            ["Top-1", "Top-5"],
            _scores_cell(("alignment", "focal"), ("top1", "top5")),
        ),
    )
    if any(_dig(r, "alignment", "focal_by_subset") for _, r in runs):
        cols = [("seen", "top1"), ("heldout", "top1")]

        def subset(res, method, j):
            block = _dig(res, "alignment", "focal_by_subset", cols[j][0])
            if not block:
                return None
            if method == "ceiling":
                return _pct(1.0)
            return None if method not in block else _pct(block[method].get(cols[j][1]))

        out += _section(
            "Zero-shot top-1, seen vs held-out species",
            "",
            _table(runs, ALIGNMENT_ROWS, ["Seen", "Held-out"], subset),
        )
    out += _section(
        "Audio-text alignment: soundscapes",
        "Windows scored against every species; class-wise mAP and AUROC over classes present.",
        _table(
            runs,
            ALIGNMENT_ROWS,
            ["Class-wise mAP", "AUROC"],
            _scores_cell(("alignment", "soundscape"), ("map", "auroc")),
        ),
    )
    return out


def _unmatched_note(res: dict) -> str:
    """Queries with no photo of their species, photos with no query of theirs: out of the means."""
    c = _dig(res, "data", "counts") or {}
    notes = [
        f"{n} {what} left out of the {means} means"
        for n, what, means in (
            (c.get("queries_without_photos"), "recording(s) of species with no photo are", "audio-to-image"),
            (c.get("photos_without_queries"), "image(s) of species with no recording are", "image-to-audio"),
        )
        if n
    ]  # fmt: skip
    return "; ".join(notes) + "." if notes else ""


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
    counts = _dig(res, "data", "counts") or {}
    g = counts.get("gallery") or {}
    models = [
        f"{k.replace('_', ' ')} `{_dig(prov, k, 'model_id')}` ({_dig(prov, k, 'revision')})"
        for k in ("audio_model", "image_model")
        if _dig(prov, k)
    ]
    dist = _dig(prov, "distilled", "checkpoint")
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
    skipped = len(_dig(res, "data", "skipped") or []) + len(_dig(res, "data", "missing") or [])
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
        json.dumps(_dig(r, "provenance", "dataset", "manifest_sha256", "gallery")) for _, r in runs
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
    lines += _retrieval_sections(runs) + _other_sections(runs)
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
        lines.append(f"  {mark} {_pct(cand['top1']):>5}  {cand['spec']}  ({count} template(s))")
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
            f"  {LABELS.get(method, method):<22} mAP {_pct(scores.get('map')):>5}  "
            f"R@1 {_pct(scores.get('recall@1')):>5}"
        )
    skipped = len(_dig(results, "data", "skipped") or [])
    if skipped:
        lines.append(f"{skipped} unreadable file(s) skipped (listed under data.skipped)")
    lines += [f"not run: {t} ({why})" for t, why in (results.get("skipped_tasks") or {}).items()]
    return "\n".join(lines)
