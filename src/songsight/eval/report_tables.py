"""The report's tables: one Markdown section per task (retrieval, against the cascade,
discriminability, alignment), rows per method and run, and the small formatting helpers
`songsight.eval.report` and `songsight.eval.report_html` share. Values are percentages of the
fractions in RESULTS.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
    "chance", "original", "map_ridge", "map_procrustes", "map_mlp", "distilled",
    "distilled_proto", "fused", "ceiling",
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


def pct(value) -> str:
    return "–" if value is None else f"{100.0 * float(value):.1f}"


def _with_ci(ci: dict | None) -> str | None:
    if not ci or ci.get("mean") is None:
        return None
    if ci.get("ci_low") is None:
        return pct(ci["mean"])
    return f"{pct(ci['mean'])} [{pct(ci['ci_low'])}, {pct(ci['ci_high'])}]"


def dig(d: dict | None, *keys):
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
        scores = dig(ret, key, method)
        if scores is None:
            return None
        if ci_key is not None and j == 0:
            return _with_ci(dig(ret, ci_key, method, "map")) or pct(scores.get("map"))
        return pct(scores.get(RETRIEVAL_COLUMNS[j][1]))

    return cell


def _recorded_note(runs: Sequence[Run]) -> str:
    """Which readout each run's distilled checkpoint answers with (search's default)."""
    notes = []
    for name, res in runs:
        r = dig(res, "retrieval", "recorded_readout")
        if not r:
            continue
        how = LABELS.get(r["method"], r["method"])
        if r["method"] == "fused":
            how += f" (gate {r.get('fusion_gate') or 'hard'}, weight {r.get('fusion_weight')})"
        if r.get("answers_as") != r["method"]:
            how += f", which answers as {LABELS.get(r['answers_as'], r['answers_as'])}"
        chosen = f"; chosen on {r['chosen_on']}" if r.get("chosen_on") else ""
        notes.append(f"{name + ': ' if len(runs) > 1 else ''}{how}{chosen}")
    text = f" The distilled checkpoint answers with: {'; '.join(notes)}." if notes else ""
    lands = []
    for name, res in runs:
        land = dig(res, "retrieval", "distilled_landing")
        if land:
            where = ", ".join(
                f"{part} {v['cos_text']:.2f} / {v.get('cos_photos', float('nan')):.2f}"
                for part, v in land.items()
            )
            lands.append(f"{name + ': ' if len(runs) > 1 else ''}{where}")
    if lands:
        text += (
            " Where the raw distilled embedding lands (mean cosine to its species' text / to "
            f"its species' photo centroid): {'; '.join(lands)}."
        )
    return text


def _paired_text(d: dict | None) -> str | None:
    """A paired difference ({diff, ci_low, ci_high} fractions) as "+1.2 [+0.3, +2.0]" points;
    None where there is none (absent, or NaN: nothing to compare)."""
    if not d or d.get("diff") is None or math.isnan(d["diff"]):
        return None
    signed = f"{100.0 * d['diff']:+.1f}"
    if d.get("ci_low") is None or math.isnan(d["ci_low"]):
        return signed
    return f"{signed} [{100.0 * d['ci_low']:+.1f}, {100.0 * d['ci_high']:+.1f}]"


def _versus_cascade_section(runs: Sequence[Run]) -> list[str]:
    """Each method's mAP minus the cascade's on the same queries, with the paired interval."""
    parts = [("all", ("audio_to_image_vs_cascade",))]
    parts += [
        (name, ("audio_to_image_vs_cascade_by_subset", name))
        for name in dict.fromkeys(
            n for _, r in runs for n in dig(r, "retrieval", "audio_to_image_vs_cascade_by_subset") or {}
        )
    ]  # fmt: skip

    def cell(res, method, j):
        return _paired_text(dig(res, "retrieval", *parts[j][1], method))

    return _section(
        "Against the cascade, query by query",
        "mAP minus the zero-shot cascade's (top-1) on the same queries, in points, with a paired "
        "95% bootstrap interval (both methods resampled together): above zero when the interval "
        "is.",
        _table(runs, RETRIEVAL_ROWS, [p[0] for p in parts], cell),
    )


def retrieval_sections(runs: Sequence[Run]) -> list[str]:
    heads = [h for h, _ in RETRIEVAL_COLUMNS]
    gallery = next(
        (r["retrieval"].get("gallery", "all") for _, r in runs if r.get("retrieval")), "all"
    )
    unmatched = "".join(f" {n}" for n in dict.fromkeys(unmatched_note(r) for _, r in runs) if n)
    out = _section(
        f"Audio-to-image retrieval (gallery: {gallery})",
        "Queries: test recordings; relevant: every image of the same species. mAP with 95% "
        "bootstrap CI." + unmatched + _recorded_note(runs),
        _table(runs, RETRIEVAL_ROWS, heads, _retrieval_cell("audio_to_image", "audio_to_image_ci")),
    )
    seen = [g for _, r in runs for g in dig(r, "retrieval", "audio_to_image_by_gallery") or {}]
    # The parts of the gallery, then the whole; nothing when the whole is the only part.
    galleries = [*dict.fromkeys(g for g in seen if g != "all"), "all"] if len(set(seen)) > 1 else []

    def by_gallery(res, method, j):
        if not res.get("retrieval"):
            return None
        if method == "original":
            return NA
        value = dig(res, "retrieval", "audio_to_image_by_gallery", galleries[j], method, "map")
        return None if value is None else pct(value)

    out += _section(
        "mAP by gallery",
        "",
        _table(runs, RETRIEVAL_ROWS, [GALLERY_NAMES.get(g, g) for g in galleries], by_gallery),
    )
    out += _versus_cascade_section(runs)
    if any(dig(r, "retrieval", "audio_to_image_by_subset") for _, r in runs):
        cols = [("seen", "map"), ("seen", "recall@1"), ("heldout", "map"), ("heldout", "recall@1")]

        def subset(res, method, j):
            if not dig(res, "retrieval", "audio_to_image_by_subset"):
                return None
            if method == "original":
                return NA
            part, metric = cols[j]
            value = dig(res, "retrieval", "audio_to_image_by_subset", part, method, metric)
            return None if value is None else pct(value)

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
        block = dig(res, *section)
        if not block:
            return None
        if method == "ceiling":
            return pct(1.0)
        value = dig(block, method, keys[j])
        return None if method not in block else pct(value)

    return cell


def other_sections(runs: Sequence[Run]) -> list[str]:
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
    if any(dig(r, "alignment", "focal_by_subset") for _, r in runs):
        cols = [("seen", "top1"), ("heldout", "top1")]

        def subset(res, method, j):
            block = dig(res, "alignment", "focal_by_subset", cols[j][0])
            if not block:
                return None
            if method == "ceiling":
                return pct(1.0)
            return None if method not in block else pct(block[method].get(cols[j][1]))

        out += _section(
            "Zero-shot top-1, seen vs held-out species",
            "",
            _table(runs, ALIGNMENT_ROWS, ["Seen", "Held-out"], subset),
        )
    scores = _scores_cell(("alignment", "soundscape"), ("map", "auroc"))

    def soundscape(res, method, j):
        if j < 2:
            return scores(res, method, j)
        return _paired_text(dig(res, "alignment", "soundscape_vs_original", method))

    out += _section(
        "Audio-text alignment: soundscapes",
        "Windows scored against every species; class-wise mAP and AUROC over classes present. "
        "The last column: class-wise mAP minus BioLingual's, species by species, in points, "
        "with a paired 95% bootstrap interval over the species.",
        _table(
            runs,
            ALIGNMENT_ROWS,
            ["Class-wise mAP", "AUROC", "− BioLingual (paired)"],
            soundscape,
        ),
    )
    return out


def unmatched_note(res: dict) -> str:
    """Queries with no photo of their species, photos with no query of theirs: out of the means."""
    c = dig(res, "data", "counts") or {}
    notes = [
        f"{n} {what} left out of the {means} means"
        for n, what, means in (
            (c.get("queries_without_photos"), "recording(s) of species with no photo are", "audio-to-image"),
            (c.get("photos_without_queries"), "image(s) of species with no recording are", "image-to-audio"),
        )
        if n
    ]  # fmt: skip
    return "; ".join(notes) + "." if notes else ""
