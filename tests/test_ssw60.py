from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from songsight.data.manifest import load_manifest, save_manifest
from songsight.data.ssw60 import (
    AUDIO_COLUMNS,
    INAT_COLUMNS,
    NABIRDS_COLUMNS,
    SSW60,
    TAXA_COLUMNS,
    find_ssw60_root,
    load_ssw60,
)
from songsight.errors import DataNotFoundError
from tests.ssw60_fixture import make_fake_ssw60


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    """3 species, 2 clips and 2 images per split, short clips; one NABirds JPG not shipped."""
    root = tmp_path_factory.mktemp("ssw")
    make_fake_ssw60(root, clip_s=0.5)
    return root


def _open(root) -> SSW60:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SSW60(root)


def _read_csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_fixture_writes_the_published_columns(fake):
    base = fake / "ssw60"
    for name, cols in [("taxa.csv", TAXA_COLUMNS), ("audio_ml.csv", AUDIO_COLUMNS),
                       ("images_nabirds.csv", NABIRDS_COLUMNS), ("images_inat.csv", INAT_COLUMNS)]:  # fmt: skip
        with (base / name).open() as fh:
            assert tuple(next(csv.reader(fh))) == cols


def test_root_may_be_the_folder_or_its_parent(fake, tmp_path):
    assert find_ssw60_root(fake) == fake / "ssw60"
    assert find_ssw60_root(fake / "ssw60") == fake / "ssw60"
    with pytest.raises(DataNotFoundError, match="no SSW60 dataset.*songsight data ssw60"):
        find_ssw60_root(tmp_path)


def test_species_from_taxa(fake):
    ds = _open(fake)
    assert [s.label for s in ds.species] == [0, 1, 2]
    goose = ds.species[0]
    assert (goose.common_name, goose.scientific_name, goose.code) == (
        "Canada Goose", "Branta canadensis", "cangoo",
    )  # fmt: skip
    assert goose.family == "Anatidae"  # the description in parentheses is dropped
    assert goose.order == "Anseriformes"


def test_audio_manifest_matches_the_csv_and_files(fake):
    ds = _open(fake)
    rows = _read_csv_rows(fake / "ssw60" / "audio_ml.csv")
    audio = ds.audio()
    assert audio["asset_id"].tolist() == [r["asset_id"] for r in rows]
    assert audio["label"].tolist() == [int(r["label"]) for r in rows]
    assert audio["label"].dtype == np.int64
    assert audio["path"].tolist() == [
        str(fake / "ssw60" / "audio_ml" / f"{r['asset_id']}.wav") for r in rows
    ]
    assert set(audio["source"]) == {"audio"}
    assert audio["samplerate"].tolist() == [22050] * len(rows)
    assert audio["duration_seconds"].tolist() == [0.5] * len(rows)
    info = sf.info(audio["path"].iloc[0])
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, 11025)
    assert len(ds.audio("train")) == 6 and set(ds.audio("test")["split"]) == {"test"}
    assert len(ds.audio(["train", "test"])) == 12
    # The columns SSW60 adds: species names for readable results.
    assert audio.loc[audio["label"] == 1, "common_name"].unique().tolist() == ["Wood Duck"]


def test_missing_image_is_warned_listed_and_skipped(fake):
    with pytest.warns(UserWarning, match=r"1 file\(s\) listed in the CSVs are absent"):
        ds = SSW60(fake)
    rows = _read_csv_rows(fake / "ssw60" / "images_nabirds.csv")
    absent = [r["asset_id"] for r in rows
              if not (fake / "ssw60" / "images_nabirds" / f"{r['asset_id']}.jpg").exists()]  # fmt: skip
    assert len(absent) == 1
    assert ds.missing == [f"images_nabirds/{absent[0]}.jpg"]
    nab = ds.images("nabirds")
    assert absent[0] not in set(nab["asset_id"])
    assert len(nab) == len(rows) - 1
    assert all(os.path.isfile(p) for p in nab["path"])
    assert nab["photographer"].str.startswith("Photographer").all()  # extra column kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SSW60(fake, warn_missing=False)


def test_image_sources_and_splits(fake):
    ds = _open(fake)
    nab, inat, both = ds.images("nabirds"), ds.images("inat"), ds.images("all")
    assert len(both) == len(nab) + len(inat)
    assert both["source"].tolist() == ["nabirds"] * len(nab) + ["inat"] * len(inat)
    assert ds.splits("inat") == ["test", "train", "val"]
    assert ds.splits("nabirds") == ["test", "train"]
    assert len(ds.images("inat", "val")) == 6
    assert len(ds.images("all", "val")) == 6  # only iNat has val: fine for "all"
    test = ds.images("all", "test")
    assert len(test) == 5 + 6 and set(test["split"]) == {"test"}
    assert both["height"].dtype == "Int64"  # both sources have it
    assert both["license_id"].isna().sum() == len(nab)  # only iNat has it
    with pytest.raises(DataNotFoundError, match="no split 'val'"):
        ds.images("nabirds", "val")
    with pytest.raises(DataNotFoundError, match="no split 'dev'"):
        ds.audio("dev")
    with pytest.raises(ValueError, match="unknown image source"):
        ds.images("flickr")


def test_summary_counts_against_a_directory_walk(fake):
    ds = _open(fake)
    s = ds.summary()
    base = fake / "ssw60"
    on_disk = {
        "audio": len(os.listdir(base / "audio_ml")),
        "nabirds": len(os.listdir(base / "images_nabirds")),
        "inat": len(os.listdir(base / "images_inat")),
    }
    for name, n in on_disk.items():
        assert s[name]["present"]["all"] == n
    assert s["species"] == 3
    assert s["nabirds"]["listed"] == {"test": 6, "train": 6, "all": 12}
    assert s["nabirds"]["present"] == {"test": 5, "train": 6, "all": 11}
    assert s["nabirds"]["missing"] == 1
    assert s["inat"]["listed"] == {"test": 6, "train": 6, "val": 6, "all": 18}


def test_manifests_pass_manifest_validation(fake, tmp_path):
    ds = _open(fake)
    for df in (ds.audio(), ds.images("all")):
        back = load_manifest(save_manifest(df, tmp_path / "m.csv"))
        assert back["path"].tolist() == df["path"].tolist()
        assert back["asset_id"].tolist() == df["asset_id"].tolist()


def _rewrite(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def test_numeric_looking_hex_ids_stay_strings(tmp_path):
    base = make_fake_ssw60(
        tmp_path, n_species=1, images_per_split=2, missing_image=False, clip_s=0.1
    )
    csv_path = base / "images_nabirds.csv"
    ids = ["1e5", "0123", "12e3", "00000000000000000000000000000001"]
    old = pd.read_csv(csv_path, dtype=str)["asset_id"].tolist()
    for a, b in zip(old, ids, strict=True):
        os.rename(base / "images_nabirds" / f"{a}.jpg", base / "images_nabirds" / f"{b}.jpg")
    # Every id in the column parses as a number: exactly the case pandas would turn into floats.
    _rewrite(csv_path, lambda df: df.assign(asset_id=ids))
    assert pd.read_csv(csv_path)["asset_id"].dtype.kind == "f"
    nab = load_ssw60(tmp_path).images("nabirds")
    assert nab["asset_id"].tolist() == ids
    assert all(os.path.isfile(p) for p in nab["path"])


def test_missing_required_column_is_a_clear_error(tmp_path):
    base = make_fake_ssw60(tmp_path, n_species=1, clip_s=0.1, missing_image=False)
    _rewrite(base / "audio_ml.csv", lambda df: df.drop(columns=["split"]))
    with pytest.raises(DataNotFoundError, match=r"audio_ml.csv: missing column\(s\) split"):
        SSW60(tmp_path)


def test_missing_taxa_column_is_a_clear_error(tmp_path):
    base = make_fake_ssw60(tmp_path, n_species=1, clip_s=0.1, missing_image=False)
    _rewrite(base / "taxa.csv", lambda df: df.drop(columns=["scientific_name"]))
    with pytest.raises(DataNotFoundError, match=r"missing column\(s\) scientific_name"):
        SSW60(tmp_path)


def test_label_outside_taxa_is_refused(tmp_path):
    base = make_fake_ssw60(tmp_path, n_species=2, clip_s=0.1, missing_image=False)
    _rewrite(base / "images_inat.csv", lambda df: df.assign(label=["7"] + df["label"].tolist()[1:]))
    with pytest.raises(DataNotFoundError, match=r"label\(s\) \[7\] are not in taxa.csv"):
        SSW60(tmp_path)


def test_absent_csv_or_folder(tmp_path):
    base = make_fake_ssw60(tmp_path, n_species=1, clip_s=0.1, missing_image=False)
    (base / "images_inat.csv").unlink()
    for p in (base / "audio_ml").iterdir():
        p.unlink()
    (base / "audio_ml").rmdir()
    with pytest.warns(UserWarning, match=r"4 file\(s\).*audio_ml/: 4"):
        ds = SSW60(tmp_path)
    assert ds.audio().empty and len(ds.missing) == 4
    assert ds.summary()["inat"] is None
    with pytest.raises(DataNotFoundError, match="has no images_inat.csv"):
        ds.images("inat")
    with pytest.raises(DataNotFoundError, match="has no images_inat.csv"):
        ds.images("all")
    assert len(ds.images("nabirds")) == 4


def test_unreadable_csv_is_a_clear_error(tmp_path):
    base = make_fake_ssw60(tmp_path, n_species=1, clip_s=0.1, missing_image=False)
    (base / "audio_ml.csv").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match="audio_ml.csv: not a readable CSV"):
        SSW60(tmp_path)
