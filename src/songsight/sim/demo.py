"""``songsight demo``: the paper's experiment end to end in a simulated world, offline.

Steps, each cached by what determines it so a rerun only redoes what changed:
world (SSW60 layout) -> tiny stand-ins for BioCLIP-2 and BioLingual (pretrained) -> distillation
on the non-held-out species (the real trainer) -> ``songsight evaluate`` (the real protocol) ->
the comparison table and an HTML report of example queries.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from songsight.config import DistillConfig
from songsight.provenance import stable_hash


@dataclass
class DemoPlan:
    seed: int = 0
    species: int | None = None
    quick: bool = False
    out: str = "songsight-demo"
    world_overrides: dict | None = None  # WorldConfig fields
    distill_overrides: dict | None = None  # DistillConfig fields
    clips_per_species: int | None = None  # distil on at most this many clips of each species

    def world_config(self):
        from songsight.sim.world import WorldConfig

        cfg = WorldConfig.quick(seed=self.seed) if self.quick else WorldConfig(seed=self.seed)
        if self.species:
            cfg = replace(cfg, n_species=self.species)
        return replace(cfg, **(self.world_overrides or {}))

    def distill_config(self) -> DistillConfig:
        """The distillation the demo runs: `songsight distill`'s defaults (what a user gets),
        with `distill_overrides` on top."""
        return replace(DistillConfig(), **(self.distill_overrides or {}))


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def build_world_cached(plan: DemoPlan, root: Path) -> tuple[Path, dict]:
    """Export the world unless ``root/world`` already holds this exact config."""
    from songsight.sim.export import export_world
    from songsight.sim.world import build_world

    cfg = plan.world_config()
    world_dir = root / "world"
    record = world_dir / "world.json"
    if record.is_file() and json.loads(record.read_text()).get("config_hash") == stable_hash(
        cfg.to_dict()
    ):
        return world_dir, json.loads(record.read_text())
    _say(f"building the world: {cfg.n_species} species, seed {cfg.seed}")
    export_world(build_world(cfg), world_dir, workers=2, overwrite=True)
    return world_dir, json.loads(record.read_text())


def distill_cached(plan: DemoPlan, world_dir: Path, world: dict, models: dict, root: Path) -> Path:
    import pandas as pd

    from songsight.data.manifest import save_manifest
    from songsight.data.ssw60 import SSW60
    from songsight.distill.train import distill

    cfg = plan.distill_config()
    out = root / "models" / "distilled"
    key = stable_hash(
        {"world": world["config_hash"], "models": models["key"], "config": cfg.to_dict(),
         "clips_per_species": plan.clips_per_species}
    )  # fmt: skip
    stamp = out / "demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return out
    held = set(world.get("held_out_labels", []))
    audio = SSW60(world_dir, warn_missing=False).audio("train")
    train = audio[~audio["label"].isin(held)].reset_index(drop=True)
    if plan.clips_per_species is not None:  # the first n of each species in a seeded order
        order = train.sample(frac=1.0, random_state=plan.seed)
        train = order[order.groupby("label").cumcount() < plan.clips_per_species]
        train = train.sort_index().reset_index(drop=True)
    manifest = root / "models" / "distill_train.csv"
    save_manifest(
        pd.DataFrame({"path": train["path"], "label": train["label"], "split": "train"}), manifest
    )
    _say(
        f"distilling on {train['label'].nunique()} species ({len(held)} held out), {len(train)} clips"
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    # Validation photos: the world's iNat validation split (never the test photos), so that
    # the readout is chosen by audio-to-image mAP, as a user with SSW60 would do.
    photos = SSW60(world_dir, warn_missing=False).images("inat", "val")[["path", "label"]]
    gallery = root / "models" / "distill_val_photos.csv"
    save_manifest(pd.DataFrame(photos), gallery)
    distill(
        manifest,
        world_dir / "taxa.csv",
        models["student"],
        models["teacher"],
        out,
        cfg,
        val_gallery=gallery,
        device="cpu",
        progress=True,
        cache_dir=root / "cache",
    )
    stamp.write_text(json.dumps({"key": key}))
    return out


def run_demo(
    out: str | Path = "songsight-demo",
    seed: int = 0,
    species: int | None = None,
    quick: bool = False,
    world_overrides: dict | None = None,
    distill_overrides: dict | None = None,
    clips_per_species: int | None = None,
) -> dict:
    """Run the whole demo; returns the evaluation results dict (also in ``out/results.json``).

    ``world_overrides`` set `WorldConfig` fields and ``distill_overrides`` `DistillConfig`
    fields (benchmarks/sim_sweep.py turns both); every cache key covers them.
    """
    from songsight.eval.tasks import run_evaluation
    from songsight.sim.pretrain import pretrain_stand_ins

    plan = DemoPlan(
        seed=seed,
        species=species,
        quick=quick,
        out=str(out),
        world_overrides=world_overrides,
        distill_overrides=distill_overrides,
        clips_per_species=clips_per_species,
    )
    root = Path(out).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    world_dir, world = build_world_cached(plan, root)
    _say(f"world ready ({time.time() - t0:.0f} s); pretraining the stand-in models (cached)")
    pre = pretrain_stand_ins(world_dir, root / "models", seed=seed, quick=quick)
    models = {
        "teacher": str(pre["teacher"]),
        "student": str(pre["student"]),
        "key": stable_hash(
            {k: str(v) for k, v in pre.items() if k in ("teacher", "student", "key", "recipe")}
        ),
    }
    _say(
        f"stand-ins ready ({time.time() - t0:.0f} s): teacher zero-shot {pre.get('teacher_zero_shot', float('nan')):.0%}, "
        f"student zero-shot {pre.get('student_zero_shot', float('nan')):.0%}"
    )
    distilled = distill_cached(plan, world_dir, world, models, root)
    eval_key = stable_hash({"distilled": json.loads((distilled / "demo.json").read_text())["key"],
                            "quick": quick, "seed": seed})  # fmt: skip
    stamp = root / "results.key"
    if stamp.is_file() and stamp.read_text() == eval_key and (root / "results.json").is_file():
        _say("evaluation cached")
        results = json.loads((root / "results.json").read_text())
    else:
        _say(f"distilled ({time.time() - t0:.0f} s); evaluating")
        stamp.unlink(missing_ok=True)
        results = run_evaluation(
            world_dir, root / "results.json", audio_model=models["student"], image_model=models["teacher"],
            distilled=str(distilled), soundscapes=str(world_dir / "soundscapes.csv"),
            save_embeddings=str(root / "embeddings"), device="cpu", bootstrap=200 if quick else 1000, seed=seed,
        )  # fmt: skip
        stamp.write_text(eval_key)
    write_html_report(root, world_dir, results, pre)
    table = (root / "results.md").read_text() if (root / "results.md").is_file() else ""
    print(table)
    print(f"\nReport: {root / 'report.html'}   ({time.time() - t0:.0f} s)")
    print(next_steps(root, world_dir))
    return results


def next_steps(root: Path, world_dir: Path) -> str:
    """Write ``root/gallery_photos.csv`` (the world's test photos) and return the commands that
    run the product (gallery, search, web page) on this world with the demo's models."""
    import pandas as pd

    from songsight.data.ssw60 import SSW60

    ds = SSW60(world_dir, warn_missing=False)
    photos = ds.images("all", "test")[["path", "label"]]
    manifest = root / "gallery_photos.csv"
    pd.DataFrame(photos).to_csv(manifest, index=False)
    soundscape = sorted((world_dir / "soundscapes").glob("*.wav"))
    query = soundscape[0] if soundscape else ds.audio("test")["path"].iloc[0]
    models, gallery = root / "models", root / "gallery"
    distilled = models / "distilled" / "best"
    commands = [
        ["index", "build", "--gallery", gallery, "--manifest", manifest,
         "--species", world_dir / "taxa.csv", "--image-model", models / "teacher"],
        ["search", query, "--gallery", gallery, "--model", distilled],
        ["serve", "--gallery", gallery, "--model", distilled],
    ]  # fmt: skip
    exe = " ".join(shlex.quote(part) for part in songsight_command())
    lines = [f"  {exe} {' '.join(shlex.quote(str(a)) for a in cmd)}" for cmd in commands]
    note = (
        f" (or activate its environment first, `source {shlex.quote(sys.prefix)}/bin/activate`, "
        "and type `songsight ...`)"
        if sys.prefix != sys.base_prefix
        else ""
    )
    return (
        "\nTry the product on this world with the demo's models; these commands run as printed, "
        f"from any shell{note}:\n" + "\n".join(lines)
    )


def songsight_command() -> list[str]:
    """This environment's ``songsight``, runnable from any shell: the console script beside
    the running interpreter (not resolved: a venv's python is a link out of the venv), else
    the interpreter itself with ``-m songsight.cli``."""
    here = Path(sys.executable).parent
    for name in ("songsight", "songsight.exe"):
        if (here / name).is_file():
            return [str((here / name).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "songsight.cli"]


# --- the HTML report ---------------------------------------------------------------------------


def _spectrogram_png(path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    wave, rate = sf.read(path, dtype="float32", always_2d=True)
    fig, ax = plt.subplots(figsize=(4.2, 1.6), dpi=90)
    ax.specgram(wave.mean(axis=1), NFFT=512, Fs=rate, noverlap=384, cmap="magma")
    ax.set_ylabel("Hz")
    ax.set_xlabel("s")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_html_report(
    root: Path, world_dir: Path, results: dict, pretrain: dict, n_examples: int = 6
) -> Path:
    """report.html: the results as HTML tables, the evaluation's figures embedded, then example
    test calls with their top-5 photos."""
    from songsight.eval.report import render_markdown
    from songsight.eval.report_html import (
        figures_html,
        markdown_to_html,
        render_page,
        selection_html,
    )
    from songsight.index.store import load_embeddings
    from songsight.taxonomy import load_species_csv

    names = {s.label: s.common_name for s in load_species_csv(world_dir / "taxa.csv")}
    emb_dir = root / "embeddings"
    g_meta, g_vec, _ = load_embeddings(emb_dir / "gallery.parquet")
    # The examples answer as the product does: with the readout the checkpoint's validation chose.
    meta = results.get("provenance", {}).get("distilled", {}).get("meta") or {}
    method = (meta.get("readout") or {}).get("method", "distilled")
    if not (emb_dir / f"queries_{method}.parquet").is_file():
        method = "distilled"
    q_meta, q_vec, _ = load_embeddings(emb_dir / f"queries_{method}.parquet")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(q_meta), size=min(n_examples, len(q_meta)), replace=False)
    cards = []
    for i in sorted(picks):
        scores = g_vec @ q_vec[i]
        top = np.argsort(-scores, kind="stable")[:5]
        label = int(q_meta["label"].iloc[i])
        path = str(q_meta["path"].iloc[i])
        photos = "".join(
            f'<figure class="{"ok" if int(g_meta["label"].iloc[j]) == label else "no"}">'
            f'<img src="{html.escape(Path(g_meta["path"].iloc[j]).relative_to(root).as_posix())}" alt="">'
            f"<figcaption>{html.escape(names.get(int(g_meta['label'].iloc[j]), '?'))}<br>{scores[j]:.3f}</figcaption></figure>"
            for j in top
        )
        cards.append(
            f'<section class="card"><h3>{html.escape(names.get(label, str(label)))}</h3>'
            f'<img class="spec" src="{_spectrogram_png(path)}" alt="spectrogram">'
            f'<audio controls src="{html.escape(Path(path).relative_to(root).as_posix())}"></audio>'
            f'<div class="hits">{photos}</div></section>'
        )
    # The tables from the results themselves (as results.md has them), the figures embedded.
    tables = markdown_to_html(render_markdown(results), heading_offset=1)
    figures = figures_html(
        [root / "results_figures" / n for n in ("map_by_method.png", "per_species_ap.png")]
    )
    body = f"""<h1>songsight demo: hear a bird, see it</h1>
<p>Simulated world in SSW60's layout; tiny stand-ins for BioCLIP-2 (teacher zero-shot
{pretrain.get("teacher_zero_shot", float("nan")):.0%}) and BioLingual (student zero-shot
{pretrain.get("student_zero_shot", float("nan")):.0%}). Green frames: photos of the calling species.</p>
<section id="results">{tables}{selection_html(results)}</section>
<section id="figures"><h2>Figures</h2>{figures}</section>
<section id="examples"><h2>Example test calls (distilled encoder, read out as {html.escape(method)})</h2>{"".join(cards)}</section>"""
    page = render_page("songsight demo", body)
    path = root / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
