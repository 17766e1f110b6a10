"""What an evaluation run writes: RESULTS.json, RESULTS.md, figures, RESULTS.html and embedding
stores.

``--save-embeddings DIR`` stores every vector a number was computed from, as Parquet files of
``path``, ``label`` and ``embedding`` (`songsight.index.store` format, with provenance):
``gallery.parquet`` (plus ``source`` where the gallery has one: nabirds / inat, or a photo
manifest's), ``queries_<method>.parquet`` for each retrieval method and
``queries_original.parquet`` (BioLingual audio), the species text embeddings of both models,
and ``train_<model>.parquet`` for the probes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.outputs import write_text_atomically


def jsonable(obj):
    """numpy scalars and arrays -> Python; NaN and inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: dict) -> None:
    """Strict JSON (NaN -> null), written to a temporary name then renamed into place."""
    write_text_atomically(path, json.dumps(jsonable(obj), indent=1, allow_nan=False))


def save_store(
    path: Path, df: pd.DataFrame, emb: np.ndarray, provenance: dict, extra: Sequence[str] = ()
) -> None:
    """``path``, ``label`` (+ ``extra`` columns) and ``embedding`` rows as a Parquet store (replaced)."""
    from songsight.index.store import EmbeddingWriter

    if len(df) == 0:
        return
    writer = EmbeddingWriter(path, {"dim": int(emb.shape[1]), **provenance}, overwrite=True)
    cols = {c: df[c].tolist() for c in ("path", "label", *extra)}
    writer.add(
        [
            {
                "path": str(cols["path"][i]),
                "label": int(cols["label"][i]),
                **{c: cols[c][i] for c in extra},
                "embedding": emb[i],
            }
            for i in range(len(df))
        ]
    )
    writer.close()


def write_outputs(run, out: Path, results: dict, kept: dict) -> None:
    """RESULTS.json, RESULTS.md, the figures in RESULTS_figures/, RESULTS.html (tables and
    figures in one file), and the embeddings when asked."""
    from songsight.eval.report import render_markdown
    from songsight.eval.report_html import render_results_html

    cfg = run.cfg
    write_json(out, results)
    write_text_atomically(out.with_suffix(".md"), render_markdown(results))
    run.log(f"wrote {out} and {out.with_suffix('.md')}")
    written = []
    if cfg.figures and "sims" in kept:
        from songsight.eval.figures import write_figures

        folder = out.with_name(out.stem + "_figures")
        written = write_figures(
            results,
            kept["sims"],
            kept["test"],
            kept["gallery"],
            folder,
            n_examples=cfg.n_examples,
            seed=cfg.seed,
        )
        run.log(f"wrote {len(written)} figure(s) to {folder}")
    write_text_atomically(out.with_suffix(".html"), render_results_html(results, written))
    if cfg.save_embeddings:
        save_embeddings(run, Path(cfg.save_embeddings), kept)


def save_embeddings(run, folder: Path, kept: dict) -> None:
    """Parquet stores of every vector a number was computed from (path, label, embedding)."""
    cfg = run.cfg
    folder.mkdir(parents=True, exist_ok=True)
    image_prov = run.image_encoder.provenance()
    test = kept["test"]
    if "queries" in kept:
        save_store(
            folder / "gallery.parquet",
            kept["gallery"],
            kept["g_emb"],
            image_prov,
            extra=tuple(c for c in ("source",) if c in kept["gallery"].columns),
        )
        for method, q in kept["queries"].items():
            save_store(
                folder / f"queries_{method}.parquet",
                test,
                q,
                {"encoder": method, "kind": "query", "space": image_prov},
            )
    for name, emb in kept["q_audio"].items():
        if name != "distilled" or "queries" not in kept:  # the distilled queries are saved above
            save_store(
                folder / f"queries_{name}.parquet", test, emb, run.encoders[name].provenance()
            )
    names = pd.DataFrame(
        {"path": [s.scientific_name for s in run.species], "label": run.species_labels}
    )
    save_store(
        folder / "species_text_image_model.parquet",
        names,
        run.teacher_text,
        {**image_prov, "kind": "text", "prompts": [cfg.prompt_format, cfg.templates]},
    )
    save_store(
        folder / "species_text_audio_model.parquet",
        names,
        run.audio_text,
        {
            **run.encoders["original"].provenance(),
            "kind": "text",
            "prompts": [cfg.audio_prompt_format, cfg.audio_templates],
        },
    )
    for name, emb in kept.get("t_audio", {}).items():
        save_store(
            folder / f"train_{name}.parquet", kept["train"], emb, run.encoders[name].provenance()
        )
    run.log(f"wrote embeddings to {folder}")
