"""Pretrained stand-ins of the simulated world: hold-out, keys, assets, caching, real loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from songsight.errors import DataNotFoundError
from songsight.sim import pretrain as P
from tests.helpers import must_not_run, write_csv

REGENERATE = (
    "rerun `python scripts/pretrain_stand_ins.py assets` and commit src/songsight/sim/assets"
)


# ---- fixtures -------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory) -> Path:
    """The demo's quick world (seed 0), exported once: the one the shipped quick assets fit."""
    from songsight.sim.export import export_world
    from songsight.sim.world import WorldConfig, build_world

    out = tmp_path_factory.mktemp("quick-world")
    export_world(build_world(WorldConfig.quick(seed=0)), out, workers=2)
    return out


def _fake_world(root: Path, config: dict | None = None) -> Path:
    """world.json, taxa.csv and two caption sets of tiny stand-in files (no rendering)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "world.json").write_text(json.dumps({"config": config or {"seed": 0, "n_species": 2}}))
    taxa = [
        {"label": i, "common_name": f"Bird {i}", "scientific_name": f"Genus sp{i}", "family": "Fam", "order": "Ord"}
        for i in range(2)
    ]  # fmt: skip
    write_csv(root / "taxa.csv", taxa)
    for name, ext in (("photos", "jpg"), ("calls", "wav")):
        rows = []
        for label in range(2):
            for i in range(3):
                rel = f"{name}/{label:03d}_{i:04d}.{ext}"
                (root / "pretrain" / name).mkdir(parents=True, exist_ok=True)
                (root / "pretrain" / rel).write_bytes(f"{name}{label}{i}".encode())
                rows.append({"path": rel, "caption": f"Bird {label}", "label": label})
        write_csv(root / "pretrain" / f"{name}.csv", rows)
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---- pure pieces ----------------------------------------------------------------------------


def test_holdout_mask_takes_a_fifth_of_each_species_keeping_one_for_training():
    sizes = {0: 1, 1: 2, 2: 5, 3: 10, 4: 11, 5: 30}
    labels = np.repeat(list(sizes), list(sizes.values()))
    held = P.holdout_mask(labels, 0.2, seed=3)
    # round(0.2 n), at least 1, at most n - 1: a lone item stays in training.
    expected = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 6}
    assert {lab: int(held[labels == lab].sum()) for lab in sizes} == expected
    assert np.array_equal(held, P.holdout_mask(labels, 0.2, seed=3))
    assert not np.array_equal(held, P.holdout_mask(labels, 0.2, seed=4))


def test_key_follows_world_data_recipe_and_seed(tmp_path):
    world = _fake_world(tmp_path / "w")
    quick, default = P.RECIPES["quick"], P.RECIPES["default"]
    base = {role: P.stand_in_key(world, role, quick, 0)["key"] for role in P.ROLES}
    assert base == {role: P.stand_in_key(world, role, quick, 0)["key"] for role in P.ROLES}
    assert base["teacher"] != base["student"]
    assert P.stand_in_key(world, "teacher", quick, 1)["key"] != base["teacher"]
    assert P.stand_in_key(world, "teacher", default, 0)["key"] != base["teacher"]
    # A re-rendered first call changes the student's key, not the teacher's.
    (world / "pretrain" / "calls" / "001_0000.wav").write_bytes(b"other sound")
    assert P.stand_in_key(world, "student", quick, 0)["key"] != base["student"]
    assert P.stand_in_key(world, "teacher", quick, 0)["key"] == base["teacher"]
    other = _fake_world(tmp_path / "w2", config={"seed": 1, "n_species": 2})
    assert P.stand_in_key(other, "teacher", quick, 0)["key"] != base["teacher"]


def test_missing_world_or_caption_set_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="world.json"):
        P.pretrain_stand_ins(tmp_path / "nothing", tmp_path / "models")
    world = _fake_world(tmp_path / "w")
    (world / "pretrain" / "calls.csv").unlink()
    with pytest.raises(DataNotFoundError, match="calls.csv"):
        P.stand_in_key(world, "student", P.RECIPES["quick"], 0)
    with pytest.raises(ValueError, match="role"):
        P.train_stand_in(world, tmp_path / "models", "critic", P.RECIPES["quick"])


def test_pack_is_deterministic_and_unpack_restores_the_folder(tmp_path):
    model = tmp_path / "teacher"
    (model / "sub").mkdir(parents=True)
    (model / P.RECORD).write_text(json.dumps({"role": "teacher", "key": "abc123"}))
    (model / "weights.bin").write_bytes(np.arange(1000, dtype=np.float32).tobytes())
    (model / "sub" / "config.json").write_text("{}")
    first = P.pack_asset(model, tmp_path / "a1")
    second = P.pack_asset(model, tmp_path / "a2")
    assert first.name == "teacher-abc123.zip"
    assert first.read_bytes() == second.read_bytes()
    out = tmp_path / "models" / "teacher"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older stand-in")
    P.unpack_asset(first, out)
    assert _snapshot(out) == _snapshot(model)
    with pytest.raises(DataNotFoundError):
        P.pack_asset(tmp_path / "a1", tmp_path / "a3")


@pytest.mark.slow
def test_teacher_child_process_reports_its_failure(tmp_path):
    """The child that trains the teacher beside the student: a bad photo fails it, loudly."""
    world = _fake_world(tmp_path / "w")  # its "photos" are a few bytes of text
    child, err = P._spawn_teacher(world, tmp_path / "models", P.RECIPES["quick"], seed=0, threads=1)
    assert child.wait(timeout=300) != 0
    err.seek(0)
    assert "000_0000.jpg" in err.read().decode()
    err.close()
    assert not (tmp_path / "models" / "teacher").exists()


def test_shipped_assets_stay_small_and_are_indexed():
    zips = sorted(P.ASSETS_DIR.glob("*.zip"))
    assert zips, f"no stand-in assets shipped: {REGENERATE}"
    assert sum(z.stat().st_size for z in zips) < 5_000_000
    index = json.loads((P.ASSETS_DIR / "index.json").read_text())
    assert sorted(row["file"] for row in index["assets"]) == [z.name for z in zips]
    assert {(row["world"], row["role"]) for row in index["assets"]} == {
        (w, r) for w in ("default", "quick") for r in P.ROLES
    }
    for row in index["assets"]:
        # Held-out pretraining items are few in the quick world (12); the SSW test split has more.
        assert row["zero_shot_acc"] > row["chance"], row
        assert row["ssw_test_zero_shot_acc"] >= 2 * row["chance"], row


# ---- the real thing on the quick world ------------------------------------------------------


def test_quick_world_stand_ins_come_from_assets_load_and_are_cached(
    quick_world, tmp_path, monkeypatch
):
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.taxonomy import load_species_csv

    recipe = P.RECIPES["quick"]
    for role in P.ROLES:
        key = P.stand_in_key(quick_world, role, recipe, 0)["key"]
        assert (P.ASSETS_DIR / f"{role}-{key}.zip").is_file(), (
            f"the shipped {role} asset does not fit the current quick world: {REGENERATE}"
        )
    models = tmp_path / "models"
    first = P.pretrain_stand_ins(quick_world, models, seed=0, quick=True)
    assert first["sources"] == {"teacher": "asset", "student": "asset"}
    for role in P.ROLES:
        assert first[f"{role}_zero_shot"] >= 2 * first[f"{role}_chance"]
    files = {role: _snapshot(models / role) for role in P.ROLES}

    # Through the real loaders: unit vectors, and the recorded held-out accuracy reproduces.
    species = load_species_csv(quick_world / "taxa.csv")
    teacher = BioCLIPEncoder(first["teacher"], device="cpu")
    paths, _, labels = P.read_pairs(quick_world / "pretrain", "photos")
    held = P.holdout_mask(labels, P.VAL_FRACTION, 0)
    img = teacher.embed_images([p for p, h in zip(paths, held, strict=True) if h])
    cls = teacher.embed_species(species, *P.TEACHER_PROMPTS)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    acc = float(np.mean((img @ cls.T).argmax(1) == labels[held]))
    assert acc == pytest.approx(first["teacher_zero_shot"], abs=1.01 / held.sum())

    student = BioLingualEncoder(first["student"], device="cpu")
    paths, _, labels = P.read_pairs(quick_world / "pretrain", "calls")
    held = P.holdout_mask(labels, P.VAL_FRACTION, 0)
    audio = student.embed_audio([p for p, h in zip(paths, held, strict=True) if h])
    fmt, tmpl = P.STUDENT_PROMPTS
    from songsight.prompt_templates import TEMPLATE_SETS

    prompts = [t.format(s.prompt(fmt)) for s in species for t in TEMPLATE_SETS[tmpl]]
    text = student.embed_texts(prompts).reshape(len(species), len(TEMPLATE_SETS[tmpl]), -1)
    text = text.mean(1) / np.linalg.norm(text.mean(1), axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(audio, axis=1), 1.0, atol=1e-5)
    acc = float(np.mean((audio @ text.T).argmax(1) == labels[held]))
    assert acc == pytest.approx(first["student_zero_shot"], abs=1.01 / held.sum())

    # Second call: the cache, the very same files, and no work: nothing unpacked or trained.
    for name in ("unpack_asset", "train_stand_in", "_spawn_teacher"):
        monkeypatch.setattr(P, name, must_not_run(name))
    again = P.pretrain_stand_ins(quick_world, models, seed=0, quick=True)
    assert again["sources"] == {"teacher": "cache", "student": "cache"}
    assert again["key"] == first["key"]
    assert {role: _snapshot(models / role) for role in P.ROLES} == files
    # Another seed is another model: neither cache nor asset fits, so it would train.
    assert (
        P.stand_in_key(quick_world, "student", recipe, 1)["key"]
        != P.read_record(models / "student")["key"]
    )


def test_training_code_paths_write_loadable_models(quick_world, tmp_path):
    """A few steps only (the slow test checks learning): both save what the loaders read."""
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder

    pre = quick_world / "pretrain"
    t = P.pretrain_teacher(
        pre, tmp_path / "teacher", P.TEACHER_SPEC, steps=3, lr=1e-3, batch_size=8
    )
    s = P.pretrain_student(
        pre, tmp_path / "student", P.STUDENT_SPEC, steps=(2, 2), lr=(1e-3, 1e-3), batch_size=8
    )
    from songsight.sim.world import WorldConfig

    cfg = WorldConfig.quick(seed=0)
    per_species = {"teacher": cfg.pretrain_photos, "student": cfg.pretrain_calls}
    for role, r in (("teacher", t), ("student", s)):
        n = per_species[role]
        held = min(n - 1, max(1, round(P.VAL_FRACTION * n)))
        assert r["n_held_out"] == cfg.n_species * held
        assert r["n_train"] == cfg.n_species * (n - held)
        assert r["chance"] == pytest.approx(1 / cfg.n_species)
        assert 0.0 <= r["zero_shot_acc"] <= 1.0
    teacher = BioCLIPEncoder(tmp_path / "teacher", device="cpu")
    assert teacher.dim == P.TEACHER_SPEC.embed_dim
    assert teacher.preprocess_cfg.size == (P.TEACHER_SPEC.image_size, P.TEACHER_SPEC.image_size)
    # Token rows no caption used are zero (small assets); used ones are not.
    emb = teacher._model.token_embedding.weight.detach().numpy()
    used = np.unique(teacher.tokenizer(["Animalia Chordata Aves"]).numpy())
    assert np.abs(emb[used]).sum(axis=1).min() > 0 and (np.abs(emb).sum(axis=1) == 0).mean() > 0.9
    student = BioLingualEncoder(tmp_path / "student", device="cpu")
    assert student.sample_rate_hz == P.STUDENT_SPEC.sample_rate_hz
    assert student.model_window_s == P.STUDENT_SPEC.window_s
    # The tokenizer was trained on the call captions: a species name is a few tokens, not bytes.
    name = P.read_pairs(pre, "calls")[1][1].split(",")[0]
    assert len(student.tokenizer(name)["input_ids"]) < len(name) / 2


@pytest.mark.slow
def test_quick_recipe_learns_both_stand_ins_well_above_chance(tmp_path):
    """Training from scratch (no assets) on a 12-species world with 30 items per species."""
    from songsight.encoders.bioclip import BioCLIPEncoder
    from songsight.encoders.biolingual import BioLingualEncoder
    from songsight.sim.export import export_world
    from songsight.sim.world import WorldConfig, build_world

    cfg = WorldConfig.quick(seed=1)
    world = export_world(build_world(cfg), tmp_path / "w", workers=2)
    per_species = {"teacher": cfg.pretrain_photos, "student": cfg.pretrain_calls}
    out = P.pretrain_stand_ins(world, tmp_path / "models", seed=0, quick=True, use_assets=False)
    assert out["sources"] == {"teacher": "trained", "student": "trained"}
    assert out["teacher_zero_shot"] >= 3 * out["teacher_chance"]
    assert out["student_zero_shot"] >= 2 * out["student_chance"]
    for role in P.ROLES:
        record = P.read_record(out[role])
        n = per_species[role]
        held = min(n - 1, max(1, round(P.VAL_FRACTION * n)))
        assert record["result"]["n_held_out"] == cfg.n_species * held
        assert record["recipe"] == "quick"
        assert record["ssw_test"]["zero_shot_acc"] >= 2 * record["ssw_test"]["chance"]
        assert out[f"{role}_ssw_test"] == record["ssw_test"]["zero_shot_acc"]
    assert BioCLIPEncoder(out["teacher"], device="cpu").embed_texts(["a"]).shape == (
        1,
        P.TEACHER_SPEC.embed_dim,
    )
    assert BioLingualEncoder(out["student"], device="cpu").embed_texts(["a"]).shape == (
        1,
        P.STUDENT_SPEC.projection_dim,
    )
