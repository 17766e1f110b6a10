"""The evaluation protocol: retrieval, probes and zero-shot alignment, end to end on tiny models.

Two real runs on a fake SSW60 (tiny CLAP, tiny open_clip, a fake distilled checkpoint with one
species held out) are shared by the end-to-end tests; the pure scoring functions are checked
on constructed arrays against sklearn and brute-force loops.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.metrics import average_precision_score

from songsight.baselines.cascade import cascade_queries
from songsight.baselines.text_mapping import fit_ridge
from songsight.encoders.base import l2_normalize
from songsight.errors import DataNotFoundError, ProvenanceMismatchError, SongsightError
from songsight.eval.alignment import window_targets, zero_shot
from songsight.eval.audio_to_image import (
    RETRIEVAL_METHODS,
    TABLE_METRICS,
    build_queries,
    chance_queries,
    fit_mappings,
    mapping_pairs,
    score_retrieval,
)
from songsight.eval.config import EvalConfig, check_teacher, train_labels_of
from songsight.eval.inputs import limit_rows
from songsight.eval.report import format_summary, merge_reports
from songsight.eval.report_tables import LABELS, RETRIEVAL_ROWS
from songsight.eval.tasks import run_evaluation
from songsight.index.store import load_embeddings
from songsight.taxonomy import Species
from tests.ssw60_fixture import make_fake_ssw60

N_SPECIES = 4
TRAIN_LABELS = [0, 1, 2]  # species 3 is held out of the fake distillation
SOUNDSCAPE_S = 6.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_checkpoint(out: Path, tiny_models, train_labels: list[int]) -> Path:
    import torch
    from transformers import ClapFeatureExtractor

    from songsight.encoders.biolingual import load_clap
    from songsight.encoders.distilled import save_checkpoint
    from songsight.encoders.heads import build_head
    from songsight.encoders.loading import resolve_model

    audio_dir, image_dir = tiny_models
    clap, _, tokenizer, resolved = load_clap(audio_dir)
    extractor = ClapFeatureExtractor.from_pretrained(audio_dir)
    torch.manual_seed(0)
    head = build_head(32, 48)
    meta = {
        "head": {"in_dim": 32, "out_dim": 48, "kind": "linear"},
        "image_model": resolve_model(str(image_dir), "image").provenance(),
        "audio_model": resolved.provenance(),
        "train_labels": train_labels,
        "logit_scale": 20.0,
        "readout": {"method": "fused", "fusion_weight": 0.5},
    }
    return save_checkpoint(out, clap, extractor, tokenizer, head, meta)


def _write_soundscape(folder: Path) -> Path:
    """One 6 s recording: species 0 calls over 0-2 s, species 1 over 3-5 s."""
    rate = 16_000
    t = np.arange(int(SOUNDSCAPE_S * rate)) / rate
    wave = 0.01 * np.random.default_rng(1).standard_normal(t.size)
    wave[t < 2] += 0.3 * np.sin(2 * np.pi * 800 * t[t < 2])
    late = (t >= 3) & (t < 5)
    wave[late] += 0.3 * np.sin(2 * np.pi * 1200 * t[late])
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "scape.wav", wave.astype(np.float32), rate, subtype="PCM_16")
    manifest = folder / "soundscapes.csv"
    pd.DataFrame(
        {
            "path": ["scape.wav", "scape.wav"],
            "start_s": [0.0, 3.0],
            "end_s": [2.0, 5.0],
            "label": [0, 1],
        }
    ).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("eval")
    ssw = make_fake_ssw60(
        root / "data", n_species=N_SPECIES, clips_per_split=2, images_per_split=2, clip_s=2.0,
        sample_rate_hz=16_000,
    )  # fmt: skip
    corrupt = ssw / "images_inat" / "73562.jpg"  # the fixture's first iNat test image (species 0)
    assert corrupt.is_file()
    corrupt.write_bytes(b"not a jpeg at all")
    return SimpleNamespace(
        root=root, ssw=ssw, corrupt=corrupt, audio=str(tiny_models[0]), image=str(tiny_models[1]),
        ckpt=_fake_checkpoint(root / "ckpt", tiny_models, TRAIN_LABELS),
        soundscapes=_write_soundscape(root / "scapes"),
    )  # fmt: skip


FAST = dict(device="cpu", batch_size=8, mlp_hidden=16, mlp_epochs=5, progress=False)


@pytest.fixture(scope="module")
def full(world):
    out = world.root / "full" / "RESULTS.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_evaluation(
            world.ssw, out, audio_model=world.audio, image_model=world.image, distilled=str(world.ckpt),
            soundscapes=str(world.soundscapes), save_embeddings=str(world.root / "full" / "emb"),
            bootstrap=50, n_examples=2, **FAST,
        )  # fmt: skip
    return SimpleNamespace(
        res=res, out=out, emb=world.root / "full" / "emb", warnings=[str(w.message) for w in caught]
    )


@pytest.fixture(scope="module")
def small(world):
    """No distilled model, two asked methods, focal clips from a manifest, no CIs, no figures."""
    from songsight.data.ssw60 import SSW60

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = SSW60(world.ssw).audio("train")[["path", "label"]]
    focal = world.root / "focal.csv"
    train.to_csv(focal, index=False)
    out = world.root / "small" / "RESULTS.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_evaluation(
            world.ssw, out, audio_model=world.audio, image_model=world.image,
            methods=["cascade_top1", "map_ridge"], tasks=["retrieval", "alignment"], focal=str(focal),
            bootstrap=0, figures=False, limit_queries=4, **FAST,
        )  # fmt: skip
    return SimpleNamespace(res=res, out=out, n_focal=min(4, len(train)))


def _with_prompts(ckpt: Path, prompts: dict) -> Path:
    """``ckpt`` with a prompt record in its meta, as the trainer writes one."""
    from songsight.encoders.loading import DISTILLED_MARKER

    meta_path = ckpt / DISTILLED_MARKER
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "prompts": prompts}))
    return ckpt


CANDIDATES = ("sound", "the sound of {article} {common_lower}")


@pytest.fixture(scope="module")
def chosen(world, tiny_models):
    """``songsight evaluate --audio-templates`` with three candidates (a set, a template string,
    a file) and a checkpoint distilled on templates from a file that is gone since."""
    from songsight.cli import main

    captions = world.root / "captions.txt"
    captions.write_text("# my model's caption style\n{common} singing\nbirdsong of {scientific}\n")
    ckpt = _with_prompts(
        _fake_checkpoint(world.root / "ckpt-templates", tiny_models, TRAIN_LABELS),
        {"prompt_format": "com", "templates": str(world.root / "gone.txt"),
         "template_strings": ["a photo of {article} {common_lower}"]},
    )  # fmt: skip
    out = world.root / "chosen" / "RESULTS.json"
    args = ["evaluate", "--ssw60", str(world.ssw), "--audio-model", world.audio, "--image-model",
            world.image, "--distilled", str(ckpt), "--tasks", "alignment", "--methods", "distilled",
            "--audio-templates", *CANDIDATES, str(captions), "--out", str(out), "--bootstrap", "0",
            "--no-figures", "--quiet", "--device", "cpu"]  # fmt: skip
    import contextlib
    import io

    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")
        assert main(args) == 0
    return SimpleNamespace(res=json.loads(out.read_text()), printed=printed.getvalue(),
                           candidates=[*CANDIDATES, str(captions)])  # fmt: skip


def test_audio_template_candidates_are_scored_on_the_train_split(chosen, world):
    """Each candidate's zero-shot top-1, recomputed from BioLingual's own embeddings of the
    train clips and of the prompts written out by hand; the best is used and recorded."""
    from songsight.data.ssw60 import SSW60
    from songsight.encoders.biolingual import BioLingualEncoder

    sel = chosen.res["template_selection"]
    assert [c["spec"] for c in sel["candidates"]] == chosen.candidates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = SSW60(world.ssw)
    train = data.audio("train")
    enc = BioLingualEncoder(world.audio, device="cpu")
    audio = enc.embed_audio(train["path"].tolist())
    hand = {
        "sound": lambda s: [s.common_name, f"the sound of {s.common_name}",
                            f"a recording of {s.common_name} singing", f"{s.common_name} calling"],
        CANDIDATES[1]: lambda s: [
            f"the sound of {'an' if s.common_name.lower()[0] in 'aeiou' else 'a'} {s.common_name.lower()}"
        ],
        chosen.candidates[2]: lambda s: [f"{s.common_name} singing", f"birdsong of {s.scientific_name}"],
    }  # fmt: skip
    labels = [s.label for s in data.species]
    truth = np.array([labels.index(lab) for lab in train["label"]])
    expected = []
    for spec in chosen.candidates:
        text = np.stack([enc.embed_texts(hand[spec](s)).mean(axis=0) for s in data.species])
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        expected.append(float(np.mean(np.argmax(audio @ text.T, axis=1) == truth)))
    assert [c["top1"] for c in sel["candidates"]] == pytest.approx(expected, abs=1e-6)
    assert sel["n"] == len(train)
    best = chosen.candidates[int(np.argmax(expected))]
    assert sel["chosen"] == best and chosen.res["provenance"]["config"]["audio_templates"] == best
    # The user sees every candidate's score, the chosen one starred.
    for spec, top1 in zip(chosen.candidates, expected, strict=True):
        line = next(
            ln
            for ln in chosen.printed.splitlines()
            if ln.rstrip().endswith(f"{spec}  ({len(hand[spec](data.species[0]))} template(s))")
        )
        assert f"{100 * top1:.1f}" in line and line.lstrip().startswith("*") == (spec == best)


def test_checkpoint_templates_are_used_when_their_file_is_gone(chosen):
    prompts = chosen.res["provenance"]["prompts"]
    assert prompts["image_model"] == {
        "prompt_format": "com",
        "spec": "1 template(s)",
        "templates": ["a photo of {article} {common_lower}"],
    }
    assert prompts["audio_model"]["spec"] == chosen.res["template_selection"]["chosen"]


# --- end to end ------------------------------------------------------------------------------


def test_results_json_has_every_method_and_metric(full):
    res = full.res
    assert json.loads(full.out.read_text()) == res  # strict JSON on disk, same as returned
    ret = res["retrieval"]
    for section in ("audio_to_image", "image_to_audio"):
        assert set(ret[section]) == set(RETRIEVAL_METHODS)
        for method in RETRIEVAL_METHODS:
            assert set(TABLE_METRICS) <= set(ret[section][method])
            assert all(0.0 <= v <= 1.0 for v in ret[section][method].values())
            ci = ret[section + "_ci"][method]["map"]
            assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    assert "original" not in ret["audio_to_image"] and "original" in ret["not_applicable"]
    assert set(ret["audio_to_image_by_gallery"]) == {"nabirds", "inat", "all"}
    assert ret["audio_to_image_by_gallery"]["all"] == ret["audio_to_image"]
    assert set(ret["audio_to_image_per_species"]["oracle"]) == {str(i) for i in range(N_SPECIES)}
    assert set(res["discriminability"]) == {"chance", "original", "distilled"}
    for scores in res["discriminability"].values():
        assert set(scores) == {"probe_accuracy", "probe_macro_f1", "knn_accuracy"}
    models = {"chance", "original", "map_ridge", "map_procrustes", "map_mlp", "distilled"}
    readouts = {"distilled_proto", "fused"}  # the product's answers, as posteriors
    assert set(res["alignment"]["focal"]) == models | readouts
    assert set(res["alignment"]["soundscape"]) == models | readouts
    # Paired differences with the cascade, query by query: the same queries for both, so the
    # mean difference is the difference of the means; the interval brackets it.
    versus = ret["audio_to_image_vs_cascade"]
    assert set(versus) == set(ret["audio_to_image"]) - {"cascade_top1"}
    for method, d in versus.items():
        expected = (
            ret["audio_to_image"][method]["map"] - ret["audio_to_image"]["cascade_top1"]["map"]
        )
        assert d["diff"] == pytest.approx(expected, abs=1e-9)
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert ret["recorded_readout"]["method"] in ("distilled", "distilled_proto", "fused")
    prov = res["provenance"]
    assert prov["distilled"]["meta"]["train_labels"] == TRAIN_LABELS
    assert prov["image_model"]["model_id"] and prov["audio_model"]["revision"]
    assert {"audio_test", "audio_train", "gallery", "soundscapes"} <= set(
        prov["dataset"]["manifest_sha256"]
    )
    assert (
        prov["config"]["cascade_temperature"] > 0 and prov["config"]["prompt_format"] == "taxon_com"
    )
    assert prov["songsight_version"]


def test_markdown_has_every_row_and_figures_exist(full):
    from PIL import Image

    md = full.out.with_suffix(".md").read_text()
    for method in RETRIEVAL_ROWS:
        assert f"| {LABELS[method]} |" in md
    assert "| BioLingual (original) | n/a |" in md
    summary = format_summary(full.res)
    assert "Distilled" in summary and "1 unreadable file(s) skipped" in summary
    for title in ("Audio discriminability", "focal recordings", "soundscapes", "Seen vs held-out"):
        assert title in md
    for name in ("map_by_method.png", "per_species_ap.png", "example_queries.png"):
        with Image.open(full.out.with_name("RESULTS_figures") / name) as img:
            assert img.format == "PNG" and img.width > 100


def test_readouts_answer_as_their_definitions_say(full):
    """distilled_proto queries with the teacher text of the species nearest the distilled
    embedding; fused answers exactly as the cascade wherever the cascade's answer is a species
    the checkpoint was not distilled on (checked from the saved query embeddings)."""
    oracle_meta, oracle, _ = load_embeddings(full.emb / "queries_oracle.parquet")
    text = {int(lab): vec for lab, vec in zip(oracle_meta["label"], oracle, strict=True)}
    labels = np.array(sorted(text))
    species = np.stack([text[lab] for lab in labels])
    _, distilled, _ = load_embeddings(full.emb / "queries_distilled.parquet")
    _, proto, _ = load_embeddings(full.emb / "queries_distilled_proto.parquet")
    _, cascade, _ = load_embeddings(full.emb / "queries_cascade_top1.parquet")
    _, fused, _ = load_embeddings(full.emb / "queries_fused.parquet")
    np.testing.assert_allclose(proto, species[(distilled @ species.T).argmax(1)], atol=1e-6)
    answered = labels[(cascade @ species.T).argmax(1)]
    unseen = ~np.isin(answered, TRAIN_LABELS)
    np.testing.assert_allclose(fused[unseen], cascade[unseen], atol=1e-6)  # may be no row here
    assert np.isin(labels[(fused[~unseen] @ species.T).argmax(1)], TRAIN_LABELS).all()


def test_html_report_has_the_tables_and_every_figure_inside(full):
    """RESULTS.html: every Markdown table as an HTML table with the same cells, and the three
    figures embedded byte for byte (parsed with the standard library's HTML parser)."""
    import base64
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.images, self.cell, self.pre = [], [], None, 0

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""
            elif tag == "img":
                self.images.append(dict(attrs)["src"])
            self.pre += tag == "pre"

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

    page = Page()
    page.feed(full.out.with_suffix(".html").read_text(encoding="utf-8"))
    md = full.out.with_suffix(".md").read_text()
    md_tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                md_tables.append(current)
            if not set(line) <= set("|-: "):
                current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    assert page.pre == 0 and page.tables == md_tables and len(md_tables) >= 5
    folder = full.out.with_name("RESULTS_figures")
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images]
    wanted = ("map_by_method.png", "per_species_ap.png", "example_queries.png")
    assert embedded == [(folder / name).read_bytes() for name in wanted]


def test_metrics_recomputed_from_saved_embeddings(full):
    ret = full.res["retrieval"]
    gallery, g_emb, _ = load_embeddings(full.emb / "gallery.parquet")
    g_labels = gallery["label"].to_numpy()
    heldout = ~np.isin(np.arange(N_SPECIES), TRAIN_LABELS)
    for method in RETRIEVAL_METHODS:
        queries, q_emb, _ = load_embeddings(full.emb / f"queries_{method}.parquet")
        q_labels = queries["label"].to_numpy()
        sim = q_emb @ g_emb.T
        ap = np.array(
            [
                average_precision_score(g_labels == lab, s)
                for lab, s in zip(q_labels, sim, strict=True)
            ]
        )
        assert ap.mean() == pytest.approx(ret["audio_to_image"][method]["map"], abs=1e-6)
        top1 = g_labels[np.argmax(sim, axis=1)] == q_labels
        assert top1.mean() == pytest.approx(ret["audio_to_image"][method]["recall@1"], abs=1e-6)
        held = heldout[q_labels]
        assert ap[held].mean() == pytest.approx(
            ret["audio_to_image_by_subset"]["heldout"][method]["map"], abs=1e-6
        )
        nab = (gallery["source"] == "nabirds").to_numpy()
        ap_nab = [
            average_precision_score(g_labels[nab] == lab, s[nab])
            for lab, s in zip(q_labels, sim, strict=True)
        ]
        assert np.mean(ap_nab) == pytest.approx(
            ret["audio_to_image_by_gallery"]["nabirds"][method]["map"], abs=1e-6
        )
        reverse = [
            average_precision_score(q_labels == lab, s)
            for lab, s in zip(g_labels, sim.T, strict=True)
        ]
        assert np.mean(reverse) == pytest.approx(ret["image_to_audio"][method]["map"], abs=1e-6)
    # Zero-shot: each model's audio against its own text space.
    focal = full.res["alignment"]["focal"]
    for model, text_file in (("original", "audio_model"), ("distilled", "image_model")):
        queries, q_emb, _ = load_embeddings(full.emb / f"queries_{model}.parquet")
        names, text, _ = load_embeddings(full.emb / f"species_text_{text_file}.parquet")
        pred = names["label"].to_numpy()[np.argmax(q_emb @ text.T, axis=1)]
        assert np.mean(pred == queries["label"].to_numpy()) == pytest.approx(
            focal[model]["top1"], abs=1e-6
        )


def test_heldout_species_reported_separately(full):
    res = full.res
    by_subset = res["retrieval"]["audio_to_image_by_subset_ci"]
    assert set(by_subset) == {"seen", "heldout"}
    n_seen, n_held = (
        by_subset["seen"]["oracle"]["map"]["n"],
        by_subset["heldout"]["oracle"]["map"]["n"],
    )
    assert n_held == 2 and n_seen + n_held == res["data"]["counts"]["queries"]
    assert set(res["alignment"]["focal_by_subset"]) == {"seen", "heldout"}
    assert res["alignment"]["focal_by_subset"]["heldout"]["distilled"]["n"] == 2
    assert [s["seen"] for s in res["species"]] == [True, True, True, False]


def test_missing_and_corrupt_images_are_skipped_with_a_warning(full, world):
    data = full.res["data"]
    assert len(data["missing"]) == 1 and data["missing"][0].startswith("images_nabirds/")
    assert any("absent and skipped" in w for w in full.warnings)
    assert [s["path"] for s in data["skipped"]] == [str(world.corrupt)]
    assert data["skipped"][0]["set"] == "images test"
    assert any("could not be used and were skipped" in w for w in full.warnings)
    n_listed = N_SPECIES * 2 * 2  # species x (NABirds, iNat) x test images each
    assert data["counts"]["gallery"]["all"] == n_listed - 2
    gallery, _, _ = load_embeddings(full.emb / "gallery.parquet")
    assert len(gallery) == n_listed - 2 and str(world.corrupt) not in set(gallery["path"])


def test_soundscape_windows_and_targets(full):
    scores = full.res["alignment"]["soundscape"]
    # 6 s at a 2 s window and 1 s hop: windows start at 0..4 s.
    assert full.res["data"]["counts"]["soundscape_windows"] == 5
    for s in scores.values():
        assert s["n_windows"] == 5 and s["n_classes_scored"] == 2
        assert 0.0 <= s["map"] <= 1.0 and 0.0 <= s["auroc"] <= 1.0
    # Each method against BioLingual, species by species: the same species for both, so the
    # mean difference is the difference of the class-wise mAPs; the interval brackets it.
    versus = full.res["alignment"]["soundscape_vs_original"]
    assert set(versus) == set(scores) - {"original"}
    for method, d in versus.items():
        assert d["n"] == 2
        assert d["diff"] == pytest.approx(scores[method]["map"] - scores["original"]["map"], abs=1e-9)  # fmt: skip
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    md = full.out.with_suffix(".md").read_text()
    fused = versus["fused"]
    assert f"{100 * fused['diff']:+.1f} [{100 * fused['ci_low']:+.1f}, {100 * fused['ci_high']:+.1f}]" in md  # fmt: skip


def test_run_without_distilled_and_with_a_focal_manifest(small):
    res = small.res
    assert res["retrieval"]["methods"] == ["chance", "cascade_top1", "map_ridge", "oracle"]
    assert "audio_to_image_by_subset" not in res["retrieval"]
    assert res["retrieval"]["audio_to_image_ci"]["oracle"]["map"]["ci_low"] is None  # bootstrap 0
    assert res["data"]["counts"]["queries"] == 4
    assert res["alignment"]["focal"]["original"]["n"] == small.n_focal
    assert "discriminability" not in res and "soundscape" not in res["alignment"]
    assert not small.out.with_name("RESULTS_figures").exists()


def test_merge_reports_merges_two_runs(full, small):
    md = merge_reports([full.out, small.out])
    assert "| Method | Run |" in md
    # Retrieval: main, against the cascade, by gallery, seen/held-out, image-to-audio; probes;
    # focal, its subsets, soundscapes.
    assert md.count("| Distilled | full |") == 9
    assert "## Against the cascade, query by query" in md
    assert md.count("| Oracle (ceiling) | small |") == 4  # no held-out split in the small run
    assert "| Cascade, top-1 | full |" in md and "| Cascade, top-1 | small |" in md
    assert "| Mapping, MLP | small |" not in md
    assert "**full**" in md and "**small**" in md
    named = merge_reports([full.out, small.out], names=["A", "B"])
    assert "| Oracle (ceiling) | B |" in named
    assert "did not use the same image gallery" not in md
    with pytest.raises(DataNotFoundError):
        merge_reports([full.out, full.out.with_name("nope.json")])
    with pytest.raises(SongsightError, match="names"):
        merge_reports([full.out, small.out], names=["only one"])


def test_merge_reports_flags_runs_on_different_galleries(full, tmp_path):
    other = json.loads(full.out.read_text())
    other["provenance"]["dataset"]["manifest_sha256"]["gallery"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    md = merge_reports([full.out, tmp_path / "other.json"])
    assert "did not use the same image gallery" in md
    assert "| Distilled | RESULTS |" in md and "| Distilled | other |" in md


# --- pure functions --------------------------------------------------------------------------


def _clustered(n_per: int, labels: int, dim: int, centres: np.ndarray, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(labels), n_per)
    return l2_normalize(centres[y] + noise * rng.standard_normal((y.size, dim))), y


def test_oracle_is_best_when_images_cluster_on_their_species_text():
    dim, n_species = 32, 6
    text = chance_queries(n_species, dim, seed=1)
    gallery, g_labels = _clustered(5, n_species, dim, text, 0.1, seed=2)
    q_labels = np.repeat(np.arange(n_species), 4)
    noisy = l2_normalize(
        text[q_labels] + 0.8 * np.random.default_rng(3).standard_normal((q_labels.size, dim))
    )
    queries = {
        "chance": chance_queries(q_labels.size, dim, 0),
        "noisy": noisy,
        "oracle": text[q_labels],
    }
    res = score_retrieval(queries, q_labels, gallery, g_labels, n_boot=0)
    oracle = res["audio_to_image"]["oracle"]
    assert oracle["map"] == pytest.approx(1.0) and oracle["recall@1"] == 1.0
    for m in ("chance", "noisy"):
        for metric in TABLE_METRICS:
            assert oracle[metric] >= res["audio_to_image"][m][metric]


def test_chance_sits_at_the_base_rate_with_many_queries():
    dim, n_species = 16, 10
    gallery, g_labels = _clustered(
        20, n_species, dim, chance_queries(n_species, dim, 5), 0.3, seed=6
    )
    q_labels = np.random.default_rng(7).integers(0, n_species, 3000)
    res = score_retrieval(
        {"chance": chance_queries(3000, dim, 8)}, q_labels, gallery, g_labels, n_boot=100
    )
    scores = res["audio_to_image"]["chance"]
    # A random ranking: R@1 is the share of relevant images (0.1); AP sits a little above it.
    assert 0.08 <= scores["recall@1"] <= 0.12
    assert 0.09 <= scores["map"] <= 0.2
    ci = res["audio_to_image_ci"]["chance"]["map"]
    assert ci["ci_low"] < scores["map"] < ci["ci_high"] and ci["n"] == 3000


def test_gallery_parts_and_subsets_equal_scoring_them_alone():
    rng = np.random.default_rng(0)
    q, g = l2_normalize(rng.standard_normal((12, 8))), l2_normalize(rng.standard_normal((20, 8)))
    q_labels, g_labels = rng.integers(0, 3, 12), rng.integers(0, 3, 20)
    part = np.arange(20) % 2 == 0
    seen = q_labels != 2
    res = score_retrieval(
        {"m": q}, q_labels, g, g_labels, n_boot=0, galleries={"even": part}, subsets={"seen": seen}
    )
    alone = score_retrieval({"m": q}, q_labels, g[part], g_labels[part], n_boot=0)
    assert res["audio_to_image_by_gallery"]["even"]["m"] == alone["audio_to_image"]["m"]
    only_seen = score_retrieval({"m": q[seen]}, q_labels[seen], g, g_labels, n_boot=0)
    assert res["audio_to_image_by_subset"]["seen"]["m"] == pytest.approx(
        only_seen["audio_to_image"]["m"]
    )


def test_build_queries_uses_the_baselines():
    rng = np.random.default_rng(0)
    audio, audio_text, teacher = (
        l2_normalize(rng.standard_normal(s)) for s in ((7, 8), (3, 8), (3, 12))
    )
    labels, species = np.array([10, 11, 12, 10, 11, 12, 12]), np.array([10, 11, 12])
    mapping = fit_ridge(audio_text, teacher)
    out = build_queries(
        ["chance", "cascade_top1", "cascade_weighted", "map_ridge", "distilled", "oracle"], labels=labels,
        species_labels=species, teacher_species_emb=teacher, audio_emb=audio, audio_species_emb=audio_text,
        cascade_temperature=0.1, mappings={"map_ridge": mapping}, distilled_emb=None, seed=3,
    )  # fmt: skip
    assert "distilled" not in out  # no distilled embeddings given
    np.testing.assert_array_equal(out["oracle"], teacher[labels - 10])
    np.testing.assert_allclose(
        out["cascade_weighted"], cascade_queries(audio, audio_text, teacher, 0.1, "weighted")
    )
    np.testing.assert_allclose(out["map_ridge"], mapping.apply(audio))
    np.testing.assert_allclose(np.linalg.norm(out["chance"], axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out["chance"], chance_queries(7, 12, 3))
    with pytest.raises(ValueError, match="unknown retrieval method"):
        build_queries(["nope"], labels=labels, species_labels=species, teacher_species_emb=teacher)


def test_mapping_pairs_use_only_training_species():
    variants = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    targets = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    x, y = mapping_pairs(variants, targets, np.array([True, False, True]))
    np.testing.assert_array_equal(x, np.concatenate([variants[0], variants[2]]))
    np.testing.assert_array_equal(y, targets[[0, 0, 2, 2]])


def test_procrustes_is_skipped_when_it_cannot_be_fitted():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 6)), rng.standard_normal((10, 4))
    with pytest.warns(UserWarning, match="map_procrustes skipped"):
        maps = fit_mappings(x, y, ["map_ridge", "map_procrustes"])
    assert set(maps) == {"map_ridge"}


def test_zero_shot_matches_a_loop():
    rng = np.random.default_rng(1)
    audio, text = (
        l2_normalize(rng.standard_normal((30, 6))),
        l2_normalize(rng.standard_normal((7, 6))),
    )
    species = np.arange(100, 107)
    labels = rng.choice(species, 30)
    mask = labels != 100
    got = zero_shot(audio, labels, text, species, mask)
    hits1 = hits5 = 0
    for a, lab in zip(audio[mask], labels[mask], strict=True):
        order = [int(species[i]) for i in np.argsort(-(text @ a))]
        hits1 += order[0] == lab
        hits5 += lab in order[:5]
    assert got == {
        "top1": pytest.approx(hits1 / mask.sum()),
        "top5": pytest.approx(hits5 / mask.sum()),
        "n": int(mask.sum()),
    }


def test_window_targets_match_a_loop():
    starts, ends = np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0, 5.0])
    intervals = [(0.5, 1.0, 7), (2.0, 3.0, 9), (4.9, 6.0, 7), (1.0, 2.0, 42)]  # 42 is no species
    got = window_targets(starts, ends, intervals, [7, 9])
    want = np.zeros((4, 2), bool)
    for w in range(4):
        for a, b, lab in intervals:
            if (
                lab in (7, 9) and min(ends[w], b) - max(starts[w], a) > 0
            ):  # touching edges do not count
                want[w, [7, 9].index(lab)] = True
    np.testing.assert_array_equal(got, want)
    assert got[:, 1].tolist() == [False, True, True, False]


def test_limit_rows_takes_species_in_turn_and_keeps_order():
    df = pd.DataFrame({"path": [f"f{i}" for i in range(12)], "label": [0] * 8 + [1] * 2 + [2] * 2})
    got = limit_rows(df, 6, seed=0)
    assert len(got) == 6 and sorted(got["label"].value_counts().tolist()) == [2, 2, 2]
    assert got["path"].tolist() == sorted(got["path"].tolist(), key=lambda p: int(p[1:]))
    assert got.equals(limit_rows(df, 6, seed=0))
    assert limit_rows(df, None, 0).equals(df)


def test_check_teacher_refuses_another_image_model():
    meta = {"image_model": {"model_id": "a", "revision": "local-aaa"}, "head": {"out_dim": 768}}
    check_teacher(
        meta, {"model_id": "moved/a", "revision": "local-aaa", "dim": 768}
    )  # same content, moved
    with pytest.warns(UserWarning, match="cannot verify"):  # hub vs folder: incomparable
        check_teacher(meta, {"model_id": "hub", "revision": "0123abcd", "dim": 768})
    with pytest.raises(ProvenanceMismatchError, match="revision"):
        check_teacher(meta, {"model_id": "a", "revision": "local-bbb", "dim": 768})
    with pytest.raises(ProvenanceMismatchError, match="768-d"):
        check_teacher(meta, {"model_id": "a", "revision": "local-aaa", "dim": 512})


def test_train_labels_accept_names_and_default_to_all():
    species = [
        Species(0, "Branta canadensis", "Canada Goose"),
        Species(1, "Aix sponsa", "Wood Duck"),
    ]
    assert train_labels_of(None, species) == [0, 1]
    assert train_labels_of({"train_labels": ["wood duck", "0"]}, species) == [0, 1]
    with pytest.warns(UserWarning, match="not in the species list"):
        assert train_labels_of({"train_labels": [1, "Dodo"]}, species) == [1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": ["distilled"]}, "needs a checkpoint"),
        ({"methods": ["telepathy"]}, "unknown method"),
        ({"tasks": ["dance"]}, "unknown task"),
        ({"gallery": "flickr"}, "gallery must be"),
        ({"templates": "poems"}, "unknown template set"),
        ({"limit_queries": 0}, "limit_queries"),
        ({"audio": "a.csv", "photos": "p.csv"}, "two ways to give the data"),
    ],
)
def test_config_refuses_bad_options(options, message):
    with pytest.raises(SongsightError, match=message):
        EvalConfig(ssw60="x", **options)
