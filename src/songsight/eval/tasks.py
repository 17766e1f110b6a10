"""The paper's evaluation: embed once per model, score every task, write the results.

`run_evaluation` (what ``songsight evaluate`` calls) reads the data (`songsight.eval.datasets`:
SSW60, or a user's audio manifest, photo manifest and species table; the same `EvalData`
either way), loads the models (`songsight.eval.setup`: models, prompts, mappings, shared by
every task), embeds each set of recordings once per model (BioLingual's audio embeddings
serve the cascade, the mappings and the original model), embeds the gallery once, and scores:

- retrieval (`songsight.eval.audio_to_image`): audio -> image and image -> audio, every method,
  per part of the gallery (SSW60: NABirds, iNat; a photo manifest: its ``source`` values) and
  whole, with bootstrap CIs and per-species AP;
- discriminability (`songsight.eval.alignment`): linear probe and k-NN, train -> test
  recordings; skipped, with a note under ``skipped_tasks``, when there are no train recordings;
- alignment: zero-shot species classification on focal clips, and class-wise mAP / AUROC on
  soundscape windows when a soundscape manifest is given.

A query whose species has no photo in the gallery, and a photo whose species has no query,
have no relevant item: they are left out of the means (`songsight.eval.metrics`), counted under
``data.counts`` and named under ``retrieval.unmatched``.

When the distilled checkpoint's ``train_labels`` leave species out, retrieval and zero-shot
scores are also split into ``seen`` and ``heldout`` queries, and the mappings are fitted on
the seen species only. Files that cannot be decoded are skipped, warned about and listed
under ``data.skipped``; they never stop the run.

Outputs: ``RESULTS.json`` (provenance, what data was read, counts, every number),
``RESULTS.md`` beside it (`songsight.eval.report`), figures in ``RESULTS_figures/``
(`songsight.eval.figures`), and with ``save_embeddings`` the Parquet files every number can be
recomputed from.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from songsight.errors import InputFileError, SongsightError
from songsight.eval import alignment as align
from songsight.eval.audio_to_image import build_queries, chance_queries, score_retrieval
from songsight.eval.config import FORMAT_VERSION, TASKS, EvalConfig
from songsight.eval.datasets import EvalData, load_eval_data
from songsight.eval.inputs import (
    embed_image_set,
    embed_with_models,
    file_sha256,
    limit_rows,
    table_sha256,
    warn_skipped,
)
from songsight.eval.outputs import jsonable, write_outputs
from songsight.eval.readouts import readout_inputs, readout_posteriors, recorded_readout
from songsight.eval.setup import EvalRun, load_run
from songsight.eval.statistics import landing


def run_evaluation(
    ssw60: str | Path | None = None, out: str | Path = "RESULTS.json", **options
) -> dict:
    """Evaluate on an extracted SSW60 (``ssw60``) or on a user's data (``audio=``,
    ``photos=`` and ``species=``: manifests and a species table) and write RESULTS.json,
    RESULTS.md and figures.

    ``options`` are `EvalConfig` fields (``audio_model``, ``image_model``, ``distilled``,
    ``methods``, ``save_embeddings``, ``soundscapes``, ``gallery``, ``bootstrap``, ``seed``,
    ``device``, ``batch_size``, ``limit_queries`` ...). Returns the results dict as written.
    """
    return evaluate(
        EvalConfig(ssw60=None if ssw60 is None else str(ssw60), out=str(out), **options)
    )


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation described by ``cfg``; see the module docstring. Returns the results.

    Its outputs (``out`` and ``save_embeddings``) are claimed before any data or model is read
    (`songsight.outputs.claim`): writable, and written by this job alone."""
    from contextlib import ExitStack

    from songsight.outputs import claim

    with ExitStack() as held:
        held.enter_context(claim(cfg.out, what="--out"))
        if cfg.save_embeddings:
            held.enter_context(claim(cfg.save_embeddings, folder=True, what="--save-embeddings"))
        return _evaluate(cfg)


def _evaluate(cfg: EvalConfig) -> dict:
    # A copy: the defaults resolved below are recorded, and the caller's object is left alone.
    cfg = replace(cfg)
    data = load_eval_data(cfg)  # warns once about files listed but absent
    tasks, skipped_tasks = _runnable(list(cfg.tasks or TASKS), data)
    run, methods, selection = load_run(cfg, data, tasks)

    test = limit_rows(data.queries, cfg.limit_queries, cfg.seed)
    run.log(f"embedding {len(test)} query recordings with {', '.join(run.encoders)}")
    test, q_audio = embed_with_models(run.encoders, test, "audio test", run.skipped)
    run.hashes["audio_test"] = table_sha256(test)
    run.counts.update(species=len(run.species), queries=len(test))
    results: dict = {"format_version": FORMAT_VERSION}
    if selection:
        results["template_selection"] = selection
    if skipped_tasks:
        results["skipped_tasks"] = skipped_tasks
    kept: dict = {"test": test, "q_audio": q_audio}
    if "retrieval" in tasks:
        results["retrieval"] = _retrieval(run, data, methods, test, q_audio, kept)
    if "discriminability" in tasks:
        results["discriminability"] = _discriminability(run, data, test, q_audio, kept)
    if "alignment" in tasks:
        results["alignment"] = _alignment(run, test, q_audio)

    run.counts["skipped"] = len(run.skipped)
    results["data"] = {
        **data.source,
        "counts": run.counts,
        "missing": data.missing,
        "skipped": run.skipped,
    }
    results["species"] = [
        {
            "label": s.label,
            "scientific_name": s.scientific_name,
            "common_name": s.common_name,
            "seen": s.label in set(run.train_labels),
        }
        for s in run.species
    ]
    results["provenance"] = _provenance(run, data)
    results = jsonable(results)
    write_outputs(run, Path(cfg.out), results, kept)
    return results


def _runnable(tasks: list[str], data: EvalData) -> tuple[list[str], dict[str, str]]:
    """The tasks the data allows, and {task: why not} for those it does not."""
    skipped = {}
    if data.train is None and "discriminability" in tasks:
        skipped["discriminability"] = (
            f"the probes need train recordings and {data.no_train}; give the audio manifest a "
            "split column with 'train' and 'test' rows to run them"
        )
    left = [t for t in tasks if t not in skipped]
    if not left:
        raise SongsightError(f"no task left to run: {'; '.join(skipped.values())}")
    for task, why in skipped.items():
        warnings.warn(f"{task} skipped: {why}", stacklevel=3)
    return left, skipped


def _provenance(run: EvalRun, data: EvalData) -> dict:
    from songsight.provenance import environment, package_version

    cfg, dist = run.cfg, run.encoders.get("distilled")
    return {
        "songsight_version": package_version(),
        "environment": environment(),
        "audio_model": run.encoders["original"].provenance(),
        "image_model": run.image_encoder.provenance(),
        "distilled": (
            {"checkpoint": str(dist.checkpoint), "meta": dist.meta, "encoder": dist.provenance()}
            if dist
            else None
        ),
        "dataset": {**data.source, "manifest_sha256": run.hashes},
        "train_labels": run.train_labels,
        "prompts": cfg.prompts_provenance(),
        "config": cfg.to_dict(),
    }


def _retrieval(
    run: EvalRun, data: EvalData, methods: list[str], test: pd.DataFrame, q_audio: dict, kept: dict
) -> dict:
    cfg = run.cfg
    gallery = data.gallery
    run.log(f"embedding {len(gallery)} gallery images")
    g_emb, ok = embed_image_set(
        run.image_encoder, gallery["path"].tolist(), "images test", run.skipped
    )
    gallery, g_emb = gallery.loc[ok].reset_index(drop=True), g_emb[ok]
    run.hashes["gallery"] = table_sha256(gallery)
    galleries = _gallery_parts(gallery)
    run.counts["gallery"] = {name: int(mask.sum()) for name, mask in galleries.items()}
    q_labels = test["label"].to_numpy(np.int64)
    g_labels = gallery["label"].to_numpy(np.int64)
    unmatched = _unmatched(run, q_labels, g_labels)
    queries = build_queries(
        methods,
        labels=q_labels,
        species_labels=run.species_labels,
        teacher_species_emb=run.teacher_text,
        audio_emb=q_audio["original"],
        audio_species_emb=run.audio_text,
        cascade_temperature=cfg.cascade_temperature,
        mappings=run.maps,
        distilled_emb=q_audio.get("distilled"),
        readout=readout_inputs(run),
        seed=cfg.seed,
    )
    run.log(f"scoring retrieval: {', '.join(queries)}")
    scored = score_retrieval(
        queries,
        q_labels,
        g_emb,
        g_labels,
        n_boot=cfg.bootstrap,
        seed=cfg.seed,
        galleries=galleries,
        subsets=run.subsets(q_labels),
    )
    kept.update(queries=queries, gallery=gallery, g_emb=g_emb, sims=scored.pop("_similarity"))
    return {
        "gallery": cfg.gallery,
        "methods": list(queries),
        "not_applicable": {"original": "BioLingual has no image space"},
        "cascade_temperature": cfg.cascade_temperature,
        "unmatched": unmatched,
        **({"recorded_readout": recorded} if (recorded := recorded_readout(run)) else {}),
        **(
            {"distilled_landing": _landing(run, queries["distilled"], q_labels, g_emb, g_labels)}
            if "distilled" in queries
            else {}
        ),
        **scored,
    }


def _landing(run: EvalRun, emb, q_labels, g_emb, g_labels) -> dict:
    """Where the raw distilled embedding lands, per subset of queries (all, seen, held-out):
    its mean cosine to its species' text and to its species' photo centroid."""
    parts = {"all": np.ones(len(q_labels), bool), **run.subsets(q_labels)}
    return {
        name: landing(emb[mask], q_labels[mask], run.teacher_text, run.species_labels, g_emb, g_labels)
        for name, mask in parts.items()
        if mask.any()
    }  # fmt: skip


def _gallery_parts(gallery: pd.DataFrame) -> dict[str, np.ndarray]:
    """{part: (G,) bool} for each named ``source`` of the gallery (in order), then ``all``."""
    parts: dict[str, np.ndarray] = {}
    if "source" in gallery.columns:
        sources = gallery["source"].astype(str).str.strip().to_numpy()
        for name in dict.fromkeys(sources.tolist()):
            if name and name != "all":
                parts[name] = sources == name
    parts["all"] = np.ones(len(gallery), bool)
    return parts


def _unmatched(run: EvalRun, q_labels: np.ndarray, g_labels: np.ndarray) -> dict:
    """Species of the queries with no photo, and of photos with no query: counted, named,
    warned about; their queries (photos) have no relevant item and stay out of the means."""
    no_photo = sorted(set(q_labels.tolist()) - set(g_labels.tolist()))
    no_query = sorted(set(g_labels.tolist()) - set(q_labels.tolist()))
    run.counts["queries_without_photos"] = int(np.isin(q_labels, no_photo).sum())
    run.counts["photos_without_queries"] = int(np.isin(g_labels, no_query).sum())
    if no_photo:
        warnings.warn(
            f"{run.counts['queries_without_photos']} query recording(s) of {len(no_photo)} "
            f"species have no photo in the gallery (e.g. label {no_photo[0]}); they are left "
            "out of the audio-to-image means",
            stacklevel=3,
        )
    return {"query_species_without_photos": no_photo, "photo_species_without_queries": no_query}


def _discriminability(
    run: EvalRun, data: EvalData, test: pd.DataFrame, q_audio: dict, kept: dict
) -> dict:
    cfg = run.cfg
    train = limit_rows(data.train, cfg.limit_train, cfg.seed)
    run.log(f"embedding {len(train)} train recordings for the probes")
    train, t_audio = embed_with_models(run.encoders, train, "audio train", run.skipped)
    run.hashes["audio_train"] = table_sha256(train)
    run.counts["train"] = len(train)
    kept.update(train=train, t_audio=t_audio)
    t_labels, q_labels = train["label"].to_numpy(np.int64), test["label"].to_numpy(np.int64)
    dim = run.encoders["original"].dim
    out = {
        "chance": align.discriminability(
            chance_queries(len(train), dim, cfg.seed),
            t_labels,
            chance_queries(len(test), dim, cfg.seed + 1),
            q_labels,
            seed=cfg.seed,
            knn_k=cfg.knn_k,
        )
    }
    for name in run.encoders:
        out[name] = align.discriminability(
            t_audio[name], t_labels, q_audio[name], q_labels, seed=cfg.seed, knn_k=cfg.knn_k
        )
    return out


def _alignment(run: EvalRun, test: pd.DataFrame, q_audio: dict) -> dict:
    """Zero-shot on focal clips (the query recordings, or ``cfg.focal``) and on soundscape windows."""
    from songsight.data.manifest import load_manifest

    cfg = run.cfg
    focal, f_audio = test, q_audio
    if cfg.focal:
        focal = load_manifest(cfg.focal, species=run.species)
        known = np.isin(focal["label"].to_numpy(), run.species_labels)
        if not known.all():
            warnings.warn(
                f"{int((~known).sum())} focal row(s) with labels outside the species list ignored",
                stacklevel=2,
            )
        focal = limit_rows(focal.loc[known], cfg.limit_queries, cfg.seed)
        run.log(f"embedding {len(focal)} focal recordings")
        focal, f_audio = embed_with_models(run.encoders, focal, "focal", run.skipped)
        run.hashes["focal"] = file_sha256(cfg.focal)
        run.counts["focal"] = len(focal)
    labels = focal["label"].to_numpy(np.int64)
    audio, text = run.scored_sets(f_audio)
    overall, by_subset = align.zero_shot_all(
        audio, text, labels, run.species_labels, run.subsets(labels)
    )
    for method, posterior in readout_posteriors(run, f_audio).items():
        overall[method] = align.zero_shot_scores(posterior, labels, run.species_labels)
        for name, mask in run.subsets(labels).items():
            by_subset[name][method] = align.zero_shot_scores(
                posterior, labels, run.species_labels, mask
            )
    res: dict = {
        "focal": overall,
        "prompts": {
            "image_model": [cfg.prompt_format, cfg.templates],
            "audio_model": [cfg.audio_prompt_format, cfg.audio_templates],
        },
    }
    if by_subset:
        res["focal_by_subset"] = by_subset
    if cfg.soundscapes:
        res["soundscape"], res["soundscape_vs_original"] = _soundscapes(run)
    return res


def _soundscapes(run: EvalRun) -> tuple[dict, dict]:
    """Windows of long recordings, each with the species whose annotated bouts overlap it:
    each method's class-wise scores, and its class-wise mAP minus BioLingual's (``original``)
    species by species with a paired interval (`alignment.soundscape_versus`)."""
    from songsight.data.manifest import load_soundscape_manifest

    cfg = run.cfg
    ann = load_soundscape_manifest(cfg.soundscapes, species=run.species)
    unknown = sorted(set(ann["label"].tolist()) - set(run.species_labels.tolist()))
    if unknown:
        warnings.warn(
            f"soundscape labels not among the species are ignored: {unknown[:5]}", stacklevel=3
        )
    run.hashes["soundscapes"] = file_sha256(cfg.soundscapes)
    intervals: dict[str, list] = {}
    for p, a, b, lab in ann[["path", "start_s", "end_s", "label"]].itertuples(index=False):
        intervals.setdefault(str(p), []).append((a, b, lab))
    paths = list(intervals)
    run.log(f"embedding {len(paths)} soundscape recordings")
    windows, targets = {}, {}
    for name, enc in run.encoders.items():
        start, rows, tgts = len(run.skipped), [], []
        for i, clip in enc.embed_windows(paths, cfg.soundscape_window_s, cfg.soundscape_hop_s):
            if isinstance(clip, InputFileError):
                run.skipped.append(
                    {"set": f"soundscapes ({name})", "path": clip.path, "reason": clip.reason}
                )
                continue
            rows.append(clip.windows)
            tgts.append(
                align.window_targets(
                    clip.starts_s, clip.ends_s, intervals[paths[i]], run.species_labels
                )
            )
        warn_skipped(run.skipped, f"soundscapes ({name})", start)
        windows[name] = np.concatenate(rows) if rows else np.zeros((0, enc.dim), np.float32)
        targets[name] = (
            np.concatenate(tgts) if tgts else np.zeros((0, len(run.species_labels)), bool)
        )
    run.counts["soundscape_windows"] = len(targets["original"])
    audio, text = run.scored_sets(windows)
    matrices = {m: align.window_species_scores(audio[m], text[m]) for m in audio}
    truth = {m: targets["distilled" if m == "distilled" else "original"] for m in audio}
    same_windows = "distilled" in targets and np.array_equal(targets["distilled"], targets["original"])  # fmt: skip
    for method, posterior in (readout_posteriors(run, windows) if same_windows else {}).items():
        matrices[method], truth[method] = posterior, targets["original"]
    scores = {m: align.soundscape_from_scores(matrices[m], truth[m]) for m in matrices}
    versus = {}
    if "original" in matrices and len(truth["original"]):
        versus = align.soundscape_versus(matrices, truth, "original", cfg.bootstrap, cfg.seed)
    return scores, versus
