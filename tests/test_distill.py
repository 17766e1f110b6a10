"""Distillation: the trainer runs end to end, resumes exactly, and matches across 2 gloo ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from songsight.config import DistillConfig
from songsight.data.manifest import save_manifest
from songsight.data.ssw60 import SSW60
from tests.helpers import free_port
from tests.ssw60_fixture import make_fake_ssw60


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_fake_ssw60(
        tmp_path_factory.mktemp("ssw"),
        n_species=3,
        clips_per_split=4,
        images_per_split=2,
        missing_image=False,
        clip_s=3.0,
    )
    ds = SSW60(root)
    save_manifest(ds.audio(), root / "audio.csv")
    save_manifest(ds.images("all", "test"), root / "gallery.csv")
    return root


def _cfg(**kw):
    base = dict(epochs=2, batch_size=4, warmup_steps=2, lr=1e-3, head_lr=1e-2, seed=3)
    return DistillConfig(**{**base, **kw})


def _kept(summary: dict) -> tuple:
    """Which weights a run kept as ``best`` (step, interpolation) and their score (6 places)."""
    best = summary["best"]
    return best["step"], best.get("interpolation"), round(best["value"], 6)


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    w = load_file(str(run / "last" / "clap" / "model.safetensors"))
    w.update({"head." + k: v for k, v in load_file(str(run / "last" / "head.safetensors")).items()})
    return w


def test_distill_end_to_end_and_loads(world, tiny_models, tmp_path):
    from songsight.cli import main
    from songsight.encoders.distilled import DistilledEncoder, read_meta

    audio, image = tiny_models
    rc = main(
        [
            "distill",
            "--train",
            str(world / "audio.csv"),
            "--species",
            str(world / "taxa.csv"),
            "--audio-model",
            str(audio),
            "--image-model",
            str(image),
            "--out",
            str(tmp_path / "run"),
            "--val",
            str(world / "audio.csv"),
            "--val-gallery",
            str(world / "gallery.csv"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--quiet",
            "--device",
            "cpu",
            "--train-mode",
            "top-k-blocks",
            "--head",
            "mlp",
            "--loss",
            "batch",
        ]
    )
    assert rc == 0
    meta = read_meta(tmp_path / "run")
    assert meta["config"]["train"] == "top-k-blocks" and meta["config"]["loss"] == "batch"
    assert meta["audio_model"]["model_id"] == str(Path(audio).resolve())
    assert meta["image_model"]["dim"] == 48 and meta["train_labels"] == [0, 1, 2]
    assert len(meta["train_manifest_sha256"]) == 64
    enc = DistilledEncoder(tmp_path / "run", device="cpu")
    emb = enc.embed_audio([str(p) for p in sorted((world / "audio_ml").glob("*.wav"))[:3]])
    assert emb.shape == (3, 48) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    log = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,total") and any(",0." in line for line in log[1:])
    # The starting point is validated (step 0), and the kept checkpoint says which readout won
    # there, with the figures it was chosen on (here with photos: every readout a candidate).
    import pandas as pd

    from songsight.readout import READOUTS

    rows = pd.read_csv(tmp_path / "run" / "metrics.csv").dropna(subset=["val_score"])
    trained = rows[rows["interpolation"].isna()]  # then the interpolations, validated after
    assert rows["step"].iloc[0] == 0 and len(trained) == 2
    assert rows["interpolation"].dropna().tolist() == [0.25, 0.5, 0.75]
    best = meta["readout"]
    scores = {m: best["validation"][f"val_{m}"] for m in READOUTS}
    assert best["method"] == max(scores, key=scores.get) and best["chosen_on"]
    assert best["validation"]["val_score"] == pytest.approx(rows["val_score"].max())
    assert (
        meta["logit_scale"] > 0
        and meta["head"]["init"] == "random (the probe initialisation needs the linear head)"
    )
    # targets were cached once: a second computation reads the cache
    assert list((tmp_path / "cache").glob("*.npy"))


def test_frozen_parts_do_not_change(world, tiny_models, tmp_path):
    """Head-only training leaves the tower bit-identical; the manifest names its species
    (common name, scientific name, code) instead of giving integer labels."""
    import pandas as pd
    from safetensors.torch import load_file

    from songsight.distill.train import distill
    from songsight.encoders.distilled import read_meta
    from tests.ssw60_fixture import FAKE_TAXA

    audio, image = tiny_models
    named = pd.read_csv(world / "audio.csv")
    forms = [lambda t: t[4], lambda t: t[5], lambda t: t[0]]
    named["label"] = [forms[i % 3](FAKE_TAXA[lab]) for i, lab in enumerate(named["label"])]
    named.to_csv(tmp_path / "named.csv", index=False)
    distill(
        tmp_path / "named.csv",
        world / "taxa.csv",
        audio,
        image,
        tmp_path / "run",
        _cfg(train="head", epochs=1),
        device="cpu",
        progress=False,
        cache_dir=tmp_path / "c",
    )
    before = load_file(str(Path(audio) / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "last" / "clap" / "model.safetensors"))
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert read_meta(tmp_path / "run")["train_labels"] == [0, 1, 2]


def test_early_stopping_waits_for_min_steps(world, tiny_models, tmp_path, monkeypatch):
    """Patience counts validations, but a run never stops before ``min_steps`` steps: with a
    validation that never improves after step 0, the run stops at the first validation past
    ``min_steps``, not after ``patience`` epochs (a few steps on a small manifest)."""
    from songsight.distill.loop import Trainer
    from songsight.distill.train import distill

    real = Trainer._validate

    def flat(self, epoch):  # the real validation, its score pinned: nothing ever improves
        res = real(self, epoch)
        return {**res, "val_score": 0.5} if res else res

    monkeypatch.setattr(Trainer, "_validate", flat)
    audio, image = tiny_models
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "c")
    args = (world / "audio.csv", world / "taxa.csv", audio, image)
    first = distill(*args, tmp_path / "a", _cfg(epochs=4, min_steps=1, patience=1), **kw)
    per_epoch = first["plan"]["steps_per_epoch"]
    assert first["stopped_early"] and first["steps"] == per_epoch  # one stale validation
    assert first["best"]["step"] == 0
    # asked for 6 epochs, at least two and a bit: the first validation past min_steps stops it
    cfg = _cfg(epochs=6, min_steps=2 * per_epoch + 1, patience=1)
    res = distill(*args, tmp_path / "b", cfg, **kw)
    assert res["stopped_early"] and res["steps"] == 3 * per_epoch and res["best"]["step"] == 0
    # sized from the data: planned at min_steps, so the whole plan runs
    sized = distill(*args, tmp_path / "s", replace(cfg, epochs=None), **kw)
    assert sized["plan"]["epochs"] == 3 and sized["steps"] == 3 * per_epoch
    assert sized["stopped_early"] is False


def test_resume_after_kill_matches_uninterrupted(world, tiny_models, tmp_path):
    from songsight.distill.train import distill

    audio, image = tiny_models
    cfg = _cfg(save_every_steps=1, gain_db=6.0, noise_prob=0.5)
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "c")
    full = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "full", cfg, **kw
    )
    per_epoch = full["plan"]["steps_per_epoch"]
    assert per_epoch >= 2 and full["steps"] == 2 * per_epoch and full["val_clips"] > 0
    # "kill" mid-epoch: stop one step into the second epoch, where the last checkpoint is
    partial = distill(
        world / "audio.csv",
        world / "taxa.csv",
        audio,
        image,
        tmp_path / "cut",
        cfg,
        stop_after_steps=per_epoch + 1,
        **kw,
    )
    assert partial["stopped_early"] and partial["steps"] == per_epoch + 1
    resumed = distill(
        world / "audio.csv",
        world / "taxa.csv",
        audio,
        image,
        tmp_path / "cut",
        cfg,
        resume=True,
        **kw,
    )
    assert resumed["steps"] == full["steps"]
    # the same best, interpolation (with the start the first run saved) included
    assert _kept(resumed) == _kept(full)
    weights = {run: _weights(tmp_path / run) for run in ("full", "cut")}
    for k in weights["full"]:
        np.testing.assert_allclose(
            weights["cut"][k].numpy(), weights["full"][k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k
        )
    # metrics.csv as the uninterrupted run's, and a resume of the finished run adds nothing
    # (it validates the interpolations again, in place of their earlier rows)
    log = {
        run: (tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("full", "cut")
    }
    assert len(log["cut"]) == len(log["full"])
    again = distill(world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "cut", cfg, resume=True, **kw)  # fmt: skip
    assert _kept(again) == _kept(full)
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == len(log["full"])


def test_the_cascade_head_starts_as_the_weighted_cascade():
    """Independent reference: the zero-shot cascade in numpy (BioLingual's posterior over
    every species, then the probability-weighted teacher text) equals the head's output."""
    import torch

    from songsight.baselines.cascade import queries_from_probabilities, species_probabilities
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.heads import build_head, init_cascade_head
    from tests.helpers import unit_rows

    rng = np.random.default_rng(0)
    audio_text, targets = unit_rows(7, 16, rng), unit_rows(7, 24, rng)
    base = rng.standard_normal((9, 16)).astype(np.float32) * 3.0  # unnormalised, as the tower gives
    head = init_cascade_head(build_head(16, 24, "cascade", n_species=7), audio_text, targets, 0.05)
    with torch.no_grad():
        got = l2_normalize(head(torch.from_numpy(base)).numpy())
    p = species_probabilities(l2_normalize(base), audio_text, 0.05)
    np.testing.assert_allclose(got, queries_from_probabilities(p, targets, "weighted"), atol=1e-5)
    with pytest.raises(ValueError, match="n_species"):
        build_head(16, 24, "cascade")


def test_a_clip_is_read_by_the_head_from_its_mean_audio_embedding(world, tiny_models, tmp_path):
    """The distilled clip vector is the head reading the clip's mean audio embedding (as
    BioLingual's own zero-shot does), not the mean of the head's window answers; windows stay
    the head's answers, window by window. Reference: the checkpoint's own tower run as a plain
    BioLingual encoder."""
    import pandas as pd
    import torch

    from songsight.distill.train import distill
    from songsight.encoders.base import l2_normalize
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.encoders.distilled import DistilledEncoder, find_checkpoint

    audio, image = tiny_models
    distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "run",
        _cfg(epochs=1, head="cascade"), device="cpu", progress=False, cache_dir=tmp_path / "c",
    )  # fmt: skip
    path = pd.read_csv(world / "audio.csv")["path"].iloc[0]
    enc = DistilledEncoder(tmp_path / "run", device="cpu", window_s=1.0, hop_s=0.5)
    clip = enc.embed_clips([path])[0]
    tower = BioLingualEncoder(find_checkpoint(tmp_path / "run") / "clap", device="cpu", window_s=1.0, hop_s=0.5)  # fmt: skip
    base = tower.embed_clips([path])[0].windows  # unit window embeddings of the same tower
    assert len(base) == len(clip.windows) > 1
    with torch.no_grad():
        ref_clip = l2_normalize(enc.head(torch.from_numpy(base.mean(0, keepdims=True))).numpy())[0]
        ref_windows = l2_normalize(enc.head(torch.from_numpy(base)).numpy())
    np.testing.assert_allclose(clip.clip, ref_clip, atol=1e-5)
    np.testing.assert_allclose(clip.heard_clip(), ref_clip, atol=1e-5)
    np.testing.assert_allclose(clip.windows, ref_windows, atol=1e-5)


def test_auto_head_tries_each_start_on_validation_and_the_checkpoint_reloads(world, tiny_models, tmp_path):  # fmt: skip
    from songsight.distill.train import distill
    from songsight.encoders.distilled import DistilledEncoder, read_meta

    audio, image = tiny_models
    distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "run",
        _cfg(epochs=1), device="cpu", progress=False, cache_dir=tmp_path / "c",
    )  # fmt: skip
    meta = read_meta(tmp_path / "run")
    init = meta["head"]["init"]
    assert set(init["candidates"]) == {"probe", "cascade", "cascade_fit"}
    assert init["candidates"][init["start"]] == max(init["candidates"].values())
    assert meta["head"]["kind"] == ("linear" if init["start"] == "probe" else "cascade")
    for kind in ("cascade", "linear"):  # each kind saves, reloads and embeds
        run = tmp_path / kind
        distill(
            world / "audio.csv", world / "taxa.csv", audio, image, run,
            _cfg(epochs=1, head=kind), device="cpu", progress=False, cache_dir=tmp_path / "c",
        )  # fmt: skip
        assert read_meta(run)["head"]["kind"] == kind
        enc = DistilledEncoder(run, device="cpu")
        import pandas as pd

        clip = enc.embed_clips([pd.read_csv(world / "audio.csv")["path"].iloc[0]])[0]
        assert clip.windows.shape[-1] == meta["head"]["out_dim"]


def test_resume_before_any_checkpoint_is_a_fresh_run(world, tiny_models, tmp_path, capsys):
    """Interrupted before a checkpoint was saved, `--resume` starts exactly as a fresh run:
    the same probe-fitted head, so the same weights and validation (it once began from a
    random head and validated at top-1 0.0 against 1.0)."""
    from songsight.distill.train import distill
    from songsight.encoders.distilled import read_meta

    audio, image = tiny_models
    cfg = _cfg()
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "c")
    fresh = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "fresh", cfg, **kw
    )
    cut = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "cut", cfg,
        stop_after_steps=1, **kw,
    )  # fmt: skip
    assert cut["steps"] == 1 and not (tmp_path / "cut" / "last").exists()
    capsys.readouterr()
    resumed = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "cut", cfg,
        resume=True, **kw,
    )  # fmt: skip
    assert "nothing to resume" in capsys.readouterr().err
    assert resumed["steps"] == fresh["steps"]
    assert resumed["best"]["value"] == pytest.approx(fresh["best"]["value"], abs=1e-6)
    began = read_meta(tmp_path / "cut" / "last")["head"]["init"]
    assert began == read_meta(tmp_path / "fresh" / "last")["head"]["init"]  # the same start
    assert began["start"] in ("probe", "cascade", "cascade_fit") and "candidates" in began
    a, b = _weights(tmp_path / "fresh"), _weights(tmp_path / "cut")
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_run_folder_is_judged_before_any_model_loads(world, tiny_models, tmp_path, monkeypatch):
    """An --out that holds a run, or cannot be written, is refused in the first second."""
    from songsight.distill import setup
    from songsight.distill.train import distill
    from songsight.errors import SongsightError
    from tests.helpers import must_not_run

    audio, image = tiny_models
    (tmp_path / "run" / "last").mkdir(parents=True)
    monkeypatch.setattr(setup, "load_teacher", must_not_run("load_teacher"))
    monkeypatch.setattr(setup, "load_student", must_not_run("load_student"))
    args = (world / "audio.csv", world / "taxa.csv", audio, image)
    with pytest.raises(SongsightError, match="already holds a run"):
        distill(*args, tmp_path / "run", _cfg(), device="cpu", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SongsightError, match="not a folder"):
        distill(*args, blocker, _cfg(), device="cpu", progress=False)


def test_resume_with_other_settings_is_refused(world, tiny_models, tmp_path):
    from songsight.distill.train import distill
    from songsight.errors import ProvenanceMismatchError, SongsightError

    audio, image = tiny_models
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "c")
    distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "r", _cfg(epochs=1), **kw
    )
    with pytest.raises(ProvenanceMismatchError, match=r"lr: 0\.001 then, 0\.0005 now"):
        distill(
            world / "audio.csv",
            world / "taxa.csv",
            audio,
            image,
            tmp_path / "r",
            _cfg(epochs=1, lr=5e-4),
            resume=True,
            **kw,
        )
    with pytest.raises(SongsightError, match="--resume"):
        distill(
            world / "audio.csv",
            world / "taxa.csv",
            audio,
            image,
            tmp_path / "r",
            _cfg(epochs=1),
            **kw,
        )


def test_fewer_clips_than_a_batch_train_and_say_so(world, tiny_models, tmp_path, capsys):
    from songsight.distill.train import distill

    audio, image = tiny_models
    summary = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "run",
        DistillConfig(epochs=1, batch_size=32), device="cpu", progress=False,
        cache_dir=tmp_path / "c",
    )  # fmt: skip
    clips = summary["clips"]
    assert clips < 32 and summary["plan"]["batch_size"] == clips and summary["steps"] == 1
    err = capsys.readouterr().err
    assert f"{clips} training clips are fewer than a batch of 32" in err and "--batch-size" in err
    # Validation carved from the manifest: 1 of 4 recordings per species, too few to choose a
    # readout on (4 clips once chose one worse than the cascade): the stated default, and why.
    from songsight.distill.checkpoint import default_readout
    from songsight.distill.plan import MIN_READOUT_CLIPS_PER_SPECIES
    from songsight.encoders.distilled import read_meta

    meta = read_meta(tmp_path / "run")
    assert summary["val_clips"] == 3 and meta["validation"]["source"] == "carved"
    default = default_readout()
    assert meta["readout"]["method"] == default["method"]
    assert meta["readout"]["fusion_weight"] == default["fusion_weight"]
    assert meta["readout"]["validation_counts"] == {"clips": 3, "species": 3, "min_clips_per_species": 1}  # fmt: skip
    assert "too small" in meta["readout"]["chosen_on"]
    assert f"readouts are chosen with at least {MIN_READOUT_CLIPS_PER_SPECIES} of each" in err


def test_readout_is_chosen_on_a_large_enough_validation(world, tiny_models, tmp_path, capsys):
    """With enough clips of each species, the readout (and fusion weight) is validation's
    choice; with no photos only the posterior readouts are candidates. The set-up says what
    it does before the progress bar (it once showed nothing for a minute)."""
    import pandas as pd

    from songsight.distill.plan import MIN_READOUT_CLIPS_PER_SPECIES
    from songsight.distill.train import distill
    from songsight.encoders.distilled import read_meta

    audio, image = tiny_models
    rows = pd.read_csv(world / "audio.csv")
    test = rows[rows["split"] == "test"]
    val = pd.concat([test] * -(-MIN_READOUT_CLIPS_PER_SPECIES // 4))  # each clip listed twice
    val.to_csv(tmp_path / "val.csv", index=False)
    distill(
        world / "audio.csv", world / "taxa.csv", audio, image, tmp_path / "run",
        DistillConfig(epochs=1, batch_size=32), val_manifest=tmp_path / "val.csv",
        device="cpu", progress=True, cache_dir=tmp_path / "c",
    )  # fmt: skip
    err = capsys.readouterr().err
    said = ["teacher", "student", "decoding training audio", f"embedding {len(val)} validation clips", "fitting the head's starting point", "distilling"]  # fmt: skip
    at = [err.find(s) for s in said]
    assert all(i >= 0 for i in at) and at == sorted(at), err
    meta = read_meta(tmp_path / "run")
    assert meta["readout"]["chosen_on"].startswith("validation split")
    figures = meta["readout"]["validation"]
    posterior = {m: figures[f"val_{m}"] for m in ("distilled_proto", "fused")}
    assert meta["readout"]["method"] == max(posterior, key=posterior.get)


DDP_SCRIPT = """
import json, sys
from songsight.config import DistillConfig
from songsight.distill.train import distill
a = json.loads(sys.argv[1])
cfg = DistillConfig(epochs=1, batch_size=4, warmup_steps=1, seed=3, loss=a["loss"], save_every_steps=1)
distill(a["train"], a["taxa"], a["audio"], a["image"], a["out"], cfg, device="cpu", progress=False,
        cache_dir=a["cache"], stop_after_steps=1)
"""


@pytest.mark.parametrize("loss", ["batch", "class"])
def test_two_gloo_ranks_match_single_process(world, tiny_models, tmp_path, loss):
    import csv
    import json

    from songsight.sim.tiny_models import TinyClapSpec, build_tiny_clap

    # Dropout off: ranks draw other masks than one process would, which is not what is tested here.
    audio, image = build_tiny_clap(tmp_path / "audio", TinyClapSpec(dropout=0.0)), tiny_models[1]
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    args = {
        "train": str(world / "audio.csv"),
        "taxa": str(world / "taxa.csv"),
        "audio": str(audio),
        "image": str(image),
        "cache": str(tmp_path / "c"),
        "loss": loss,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = {**args, "out": str(tmp_path / "single")}
    subprocess.run(
        [sys.executable, str(script), json.dumps(single)], check=True, env=env, timeout=300
    )
    ddp = {**args, "out": str(tmp_path / "ddp")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            str(script),
            json.dumps(ddp),
        ],
        check=True,
        env=env,
        timeout=300,
    )

    def first_loss(run):
        with open(tmp_path / run / "metrics.csv") as fh:
            # the first optimiser step's row (the step-0 validation row has no loss)
            return float(next(r for r in csv.DictReader(fh) if r["total"])["total"])

    if loss == "batch":  # every rank computes the global loss over the gathered batch
        assert first_loss("ddp") == pytest.approx(first_loss("single"), rel=1e-4)
    else:  # rank 0 logs its local half; the step's weights must still match
        assert np.isfinite(first_loss("ddp"))
    s, d = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for k in s:
        np.testing.assert_allclose(d[k].numpy(), s[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


def test_validation_metrics_match_the_saved_model_scored_independently(
    world, tiny_models, tmp_path
):
    """metrics.csv's validation row equals zero-shot top-1 and audio-to-image mAP recomputed
    from the saved checkpoint through the public encoders, with sklearn's average precision."""
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from songsight.distill.train import distill
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.distilled import DistilledEncoder

    audio, image = tiny_models
    clips = pd.read_csv(world / "audio.csv")
    train = clips[clips["label"] != 2]  # species 2 is held out of distillation
    train_csv = tmp_path / "train.csv"
    train.to_csv(train_csv, index=False)
    out = tmp_path / "run"
    distill(
        train_csv, world / "taxa.csv", audio, image, out, _cfg(epochs=1),
        val_manifest=world / "audio.csv", val_gallery=world / "gallery.csv",
        device="cpu", progress=False, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    rows = pd.read_csv(out / "metrics.csv")
    logged = rows[rows["interpolation"].isna()].dropna(subset=["val_zero_shot_top1"]).iloc[-1]

    enc = DistilledEncoder(out / "last", device="cpu")
    emb = enc.embed_audio(list(clips["path"]))
    labels, targets = enc.species_embeddings()
    predicted = np.asarray(labels)[(emb @ targets.T).argmax(1)]
    truth = clips["label"].to_numpy()
    assert logged["val_zero_shot_top1"] == pytest.approx(np.mean(predicted == truth), abs=1e-6)
    held = truth == 2
    assert logged["val_zero_shot_top1_heldout"] == pytest.approx(
        np.mean(predicted[held] == truth[held]), abs=1e-6
    )
    assert logged["val_zero_shot_top1_seen"] == pytest.approx(
        np.mean(predicted[~held] == truth[~held]), abs=1e-6
    )
    gallery = pd.read_csv(world / "gallery.csv")
    gal = BioCLIPEncoder(image, device="cpu").embed_images(list(gallery["path"]))
    scores = emb @ gal.T
    ap = [
        average_precision_score(gallery["label"].to_numpy() == lab, s)
        for lab, s in zip(truth, scores, strict=True)
    ]
    assert logged["val_map"] == pytest.approx(np.mean(ap), abs=1e-4)


def test_targets_from_a_templates_file_record_the_strings(world, tiny_image_encoder, tmp_path):
    """The distillation targets take the user's templates; the checkpoint's prompt record keeps
    the strings, so evaluation rebuilds the same targets after the file is gone."""
    from songsight.distill.targets import teacher_targets
    from songsight.eval.config import checkpoint_prompts
    from songsight.taxonomy import load_species_csv

    species = load_species_csv(world / "taxa.csv")
    path = tmp_path / "teacher.txt"
    path.write_text(
        "a photo of {article} {common_lower}\n{scientific}, {family}\n", encoding="utf-8"
    )
    emb, info = teacher_targets(tiny_image_encoder, species, "com", str(path), tmp_path / "cache")
    assert info["templates"] == str(path)
    assert info["template_strings"] == [
        "a photo of {article} {common_lower}",
        "{scientific}, {family}",
    ]
    # Independently: the filled strings written out by hand, embedded, averaged, renormalised.
    for sp, row in zip(species, emb, strict=True):
        texts = [f"a photo of a {sp.common_name.lower()}", f"{sp.scientific_name}, {sp.family}"]
        if sp.common_name.lower()[0] in "aeiou":
            texts[0] = f"a photo of an {sp.common_name.lower()}"
        mean = tiny_image_encoder.embed_texts(texts).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-5)
    path.unlink()
    assert checkpoint_prompts({"prompts": info}) == ("com", info["template_strings"])
    # A built-in set comes back by name.
    _, named = teacher_targets(tiny_image_encoder, species, "taxon_com", "none", tmp_path / "cache")
    assert checkpoint_prompts({"prompts": named}) == ("taxon_com", "none")


def test_hooks_report_every_phase_step_validation_and_checkpoint(world, tiny_models, tmp_path):
    """The hooks see what the run writes (metrics rows, checkpoints) and leave it unchanged."""
    import pandas as pd

    from songsight.distill.hooks import SETUP_PHASES, DistillHooks
    from songsight.distill.train import distill

    class Recorder(DistillHooks):
        def __init__(self):
            self.events = []

        def on_phase(self, name, seconds):
            self.events.append(("phase", name, seconds))

        def on_loop_start(self, step):
            self.events.append(("loop_start", step))

        def on_step(self, step, epoch, row):
            self.events.append(("step", step, epoch, row["total"]))

        def on_validate(self, epoch, step, figures):
            self.events.append(("validate", epoch, step, figures["val_score"]))

        def on_checkpoint(self, name, epoch, step, seconds):
            self.events.append(("checkpoint", name, epoch, step))

        def on_epoch_end(self, epoch, step):
            self.events.append(("epoch_end", epoch, step))

    audio, image = tiny_models
    kw = dict(device="cpu", progress=False, cache_dir=tmp_path / "c")
    args = (world / "audio.csv", world / "taxa.csv", audio, image)
    rec = Recorder()
    summary = distill(*args, tmp_path / "hooked", _cfg(), hooks=rec, **kw)
    distill(*args, tmp_path / "plain", _cfg(), **kw)

    kinds = [e[0] for e in rec.events]
    phases = [e[1] for e in rec.events if e[0] == "phase"]
    assert phases == list(SETUP_PHASES) and all(e[2] >= 0 for e in rec.events if e[0] == "phase")
    assert kinds.index("loop_start") > kinds.index("validate")  # the starting point first
    rows = pd.read_csv(tmp_path / "hooked" / "metrics.csv")
    train_rows = rows.dropna(subset=["total"])
    steps = [e for e in rec.events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, summary["steps"] + 1))
    assert [e[1:3] for e in steps] == list(
        zip(train_rows["step"].tolist(), train_rows["epoch"].tolist(), strict=True)
    )
    np.testing.assert_allclose(
        [e[3] for e in steps], train_rows["total"], rtol=5e-6
    )  # the CSV keeps 6 digits
    val_rows = rows.dropna(subset=["val_score"])
    validations = [e for e in rec.events if e[0] == "validate"]
    assert [e[1:3] for e in validations] == list(
        zip(val_rows["epoch"].tolist(), val_rows["step"].tolist(), strict=True)
    )
    np.testing.assert_allclose([e[3] for e in validations], val_rows["val_score"], rtol=1e-6)
    saved = {e[1] for e in rec.events if e[0] == "checkpoint"}
    assert saved == {"best", "last"} and all((tmp_path / "hooked" / n).is_dir() for n in saved)
    ends = [e[1] for e in rec.events if e[0] == "epoch_end"]
    assert ends == list(range(_cfg().epochs))
    # Watching changes nothing: the same weights as the run without hooks.
    hooked, plain = _weights(tmp_path / "hooked"), _weights(tmp_path / "plain")
    assert all(np.array_equal(hooked[k].numpy(), plain[k].numpy()) for k in plain)


def test_weights_between_start_and_end_are_kept_where_validation_prefers_them(
    world, tiny_models, tmp_path, monkeypatch
):
    """After the last step the run validates weights between its starting point and its end
    (WiSE-FT); one that validates best is ``best``, exactly ``(1 - a) * start + a * end``, with
    its fraction recorded, and ``last`` keeps the trained weights. The real validation runs,
    its score pinned so that only the middle interpolation wins."""
    import torch
    from safetensors.torch import load_file

    from songsight.distill.interpolation import START_FILE
    from songsight.distill.loop import Trainer
    from songsight.distill.train import distill
    from songsight.encoders.distilled import read_meta

    real, calls = Trainer._validate, []

    def pinned(self, epoch):  # calls: step 0, two epochs, then alpha 0.25, 0.5, 0.75
        res = real(self, epoch)
        calls.append(epoch)
        return {**res, "val_score": 0.9 if len(calls) == 5 else 0.5}

    monkeypatch.setattr(Trainer, "_validate", pinned)
    audio, image = tiny_models
    out = tmp_path / "run"
    res = distill(
        world / "audio.csv", world / "taxa.csv", audio, image, out, _cfg(),
        device="cpu", progress=False, cache_dir=tmp_path / "c",
    )  # fmt: skip
    assert len(calls) == 6 and res["best"]["interpolation"] == 0.5
    assert read_meta(out / "best")["best"]["interpolation"] == 0.5
    start = torch.load(out / START_FILE, weights_only=True)
    for part, prefix in (("head.safetensors", "student.head."), ("clap/model.safetensors", "student.")):  # fmt: skip
        best, last = load_file(str(out / "best" / part)), load_file(str(out / "last" / part))
        moved = 0
        for name, w in last.items():
            key = prefix + name
            if key not in start:  # frozen: the same everywhere
                torch.testing.assert_close(best[name], w)
                continue
            moved += int(not torch.equal(start[key], w))
            torch.testing.assert_close(best[name], (start[key] + w) / 2, rtol=1e-5, atol=1e-6)
        assert moved > 0, part  # the run trained this part, so the middle is a third point
