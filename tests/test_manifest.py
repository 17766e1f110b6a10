from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from songsight.data.manifest import (
    check_files,
    load_manifest,
    load_soundscape_manifest,
    manifest_sha256,
    save_manifest,
)
from songsight.errors import DataNotFoundError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    m = _write(sub / "m.csv", "path,label,split\na.wav,0,train\n/abs/b.wav,1,test\n")
    df = load_manifest(m)
    assert df["path"].tolist() == [str(sub / "a.wav"), "/abs/b.wav"]
    assert df["label"].dtype == np.int64
    assert df["label"].tolist() == [0, 1]
    assert df["split"].tolist() == ["train", "test"]


def test_explicit_root_wins_and_dataframe_is_not_modified(tmp_path):
    m = _write(tmp_path / "m.csv", "path,label\nx/a.wav,2\n")
    assert load_manifest(m, root=tmp_path / "data")["path"].tolist() == [
        str(tmp_path / "data" / "x" / "a.wav")
    ]
    src = pd.DataFrame({"path": ["a.wav"], "label": ["3"]})
    kept = src.copy()
    # A DataFrame has no folder: relative paths stay as given unless a root is passed.
    assert load_manifest(src)["path"].tolist() == ["a.wav"]
    assert load_manifest(src, root=tmp_path)["path"].tolist() == [str(tmp_path / "a.wav")]
    pd.testing.assert_frame_equal(src, kept)


def test_missing_columns_are_named_with_the_expected_ones(tmp_path):
    m = _write(tmp_path / "m.csv", "recording,bird\na.wav,0\n")
    with pytest.raises(DataNotFoundError) as err:
        load_manifest(m)
    msg = str(err.value)
    assert "missing column(s) path, label" in msg
    assert "optional: split, start_s, end_s" in msg and "found recording, bird" in msg


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("3", 3), ("3.0", 3), (" 7 ", 7), ("-1", -1)],
)
def test_integer_labels_are_accepted(cell, expected):
    df = load_manifest(pd.DataFrame({"path": ["a.wav"], "label": [cell]}))
    assert df["label"].tolist() == [expected]


@pytest.mark.parametrize("cell", ["cangoo", "", "2.5", "inf", None, float("nan"), True])
def test_non_integer_labels_are_refused(cell):
    df = pd.DataFrame({"path": ["a.wav", "b.wav"], "label": [0, cell]}, dtype=object)
    with pytest.raises(DataNotFoundError, match="integer species labels.*row 1"):
        load_manifest(df)


def test_empty_path_is_refused():
    with pytest.raises(DataNotFoundError, match="'path' has empty cells.*row 1"):
        load_manifest(pd.DataFrame({"path": ["a.wav", " "], "label": [0, 1]}))


def test_extra_columns_are_kept_as_text_from_csv(tmp_path):
    # pandas alone would read these ids as 100000.0 and 123.
    m = _write(tmp_path / "m.csv", "path,label,asset_id,note\na.wav,0,1e5,x\nb.wav,1,0123,\n")
    df = load_manifest(m)
    assert df["asset_id"].tolist() == ["1e5", "0123"]
    assert df["note"].tolist() == ["x", ""]
    assert list(df.columns) == ["path", "label", "asset_id", "note"]


def test_intervals_validated(tmp_path):
    ok = load_manifest(
        pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "start_s": ["0", ""], "end_s": [5, ""]})
    )
    assert ok["start_s"].tolist()[0] == 0.0 and np.isnan(ok["start_s"].tolist()[1])
    with pytest.raises(DataNotFoundError, match=r"start_s must be < end_s; row 1: 5 >= 5"):
        load_manifest(
            pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "start_s": [0, 5], "end_s": [1, 5]})
        )
    with pytest.raises(DataNotFoundError, match="negative start_s"):
        load_manifest(pd.DataFrame({"path": ["a"], "label": [0], "start_s": [-1], "end_s": [1]}))
    with pytest.raises(DataNotFoundError, match="'end_s' must hold a number"):
        load_manifest(pd.DataFrame({"path": ["a"], "label": [0], "end_s": ["soon"]}))


def test_soundscape_manifest_requires_intervals_and_renames_birdset_columns(tmp_path):
    m = _write(
        tmp_path / "ss.csv",
        "filepath,start_time,end_time,label\nrec.flac,0,5,3\nrec.flac,0,5,7\nrec.flac,5,10,3\n",
    )
    df = load_soundscape_manifest(
        m, rename={"filepath": "path", "start_time": "start_s", "end_time": "end_s"}
    )
    assert df["path"].tolist() == [str(tmp_path / "rec.flac")] * 3
    assert df["start_s"].tolist() == [0.0, 0.0, 5.0]
    assert df["end_s"].tolist() == [5.0, 5.0, 10.0]
    assert df["label"].tolist() == [3, 7, 3]
    with pytest.raises(DataNotFoundError, match="missing column"):
        load_soundscape_manifest(pd.DataFrame({"path": ["a"], "label": [0]}))
    blank = pd.DataFrame({"path": ["a"], "label": [0], "start_s": [""], "end_s": [1.0]})
    with pytest.raises(DataNotFoundError, match="on every row"):
        load_soundscape_manifest(blank)
    with pytest.raises(DataNotFoundError, match="start_s must be < end_s"):
        load_soundscape_manifest(
            pd.DataFrame({"path": ["a"], "label": [0], "start_s": [6.0], "end_s": [5.0]})
        )


def test_unsupported_suffix_and_absent_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="unsupported manifest format"):
        load_manifest(_write(tmp_path / "m.txt", "path,label\n"))
    with pytest.raises(DataNotFoundError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")


def _sample(rng: np.random.Generator, n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/data/clip_{i}.wav" for i in range(n)],
            "label": rng.integers(0, 60, n),
            "split": rng.choice(["train", "test"], n),
            "start_s": rng.random(n) * 3,
            "end_s": 3 + rng.random(n) * 7,  # full float64 precision must survive CSV
            "asset_id": ["1e5", "0123"] + [f"{i:x}" for i in range(n - 2)],
            "n_samples": rng.integers(0, 10**6, n),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_keeps_content_and_hash(tmp_path, suffix):
    df = load_manifest(_sample(np.random.default_rng(0)))
    back = load_manifest(save_manifest(df, tmp_path / f"sub/m{suffix}"))
    assert back["path"].tolist() == df["path"].tolist()
    assert back["label"].tolist() == df["label"].tolist()
    assert back["end_s"].tolist() == df["end_s"].tolist()  # exact, not approximately
    assert back["asset_id"].tolist() == df["asset_id"].tolist()
    assert manifest_sha256(back) == manifest_sha256(df)


def test_save_with_root_writes_relative_paths(tmp_path):
    df = load_manifest(
        pd.DataFrame({"path": ["a/x.wav", "/elsewhere/y.wav"], "label": [0, 1]}), root=tmp_path
    )
    out = save_manifest(df, tmp_path / "m.csv", root=tmp_path)
    assert pd.read_csv(out, dtype=str)["path"].tolist() == ["a/x.wav", "/elsewhere/y.wav"]
    assert load_manifest(out)["path"].tolist() == df["path"].tolist()


def test_hash_depends_on_content_and_order_only():
    df = load_manifest(_sample(np.random.default_rng(1)))
    h = manifest_sha256(df)
    assert len(h) == 64 and h == manifest_sha256(df.copy())
    assert manifest_sha256(df[df.columns[::-1]]) == h  # column order does not matter
    assert manifest_sha256(df.set_axis(range(100, 120))) == h  # nor the index
    text = df.astype({"label": str, "n_samples": str})
    assert manifest_sha256(text) == h  # nor int vs its text form
    changed = df.copy()
    changed.loc[3, "label"] = (changed.loc[3, "label"] + 1) % 60
    assert manifest_sha256(changed) != h
    assert manifest_sha256(df.iloc[::-1]) != h
    assert manifest_sha256(df.iloc[:-1]) != h
    assert manifest_sha256(df, columns=["label", "split"]) != h
    moved = df.assign(path=df["path"].str.replace("/data/", "/mnt/", regex=False))
    assert manifest_sha256(moved, columns=["label", "split"]) == manifest_sha256(
        df, columns=["label", "split"]
    )
    with pytest.raises(DataNotFoundError, match="not in the manifest"):
        manifest_sha256(df, columns=["nope"])


def test_hash_is_stable_across_versions():
    # Pinned so that a changed canonical form (which would orphan every stored artefact's
    # provenance) fails loudly; the reference is built by hand from the documented form.
    df = pd.DataFrame({"path": ["a.wav", "b.wav"], "label": [1, 2], "start_s": [0.5, np.nan]})
    ref = hashlib.sha256()
    ref.update(b"rows=2\n")
    ref.update(b'["label", ["1", "2"]]\n')
    ref.update(b'["path", ["a.wav", "b.wav"]]\n')
    ref.update(b'["start_s", ["0.5", ""]]\n')
    assert manifest_sha256(df) == ref.hexdigest()


def test_check_files_reports_absent_once(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "dir.wav").mkdir()  # a directory is not a file
    df = pd.DataFrame(
        {
            "path": [
                str(tmp_path / n) for n in ["a.wav", "gone.wav", "a.wav", "gone.wav", "dir.wav"]
            ],
            "label": [0, 1, 2, 3, 4],
        },
        index=[10, 11, 12, 13, 14],
    )
    present, missing = check_files(df)
    assert present["label"].tolist() == [0, 2]
    assert present.index.tolist() == [0, 1]
    assert missing == [str(tmp_path / "gone.wav"), str(tmp_path / "dir.wav")]


def test_species_names_work_as_labels_with_a_species_table(tmp_path):
    from songsight.taxonomy import Species

    taxa = [
        Species(0, "Branta canadensis", "Canada Goose", code="cangoo"),
        Species(4, "Aix sponsa", "Wood Duck", code="wooduc"),
    ]
    m = _write(
        tmp_path / "m.csv",
        "Path,Label\na.wav,Aix sponsa\nb.wav,canada  goose\nc.wav,4\nd.wav,WOODUC\n",
    )
    assert load_manifest(m, species=taxa)["label"].tolist() == [4, 0, 4, 4]
    # A species column (any spelling of it) stands in for the label.
    named = _write(tmp_path / "n.csv", "file,Common Name\na.wav,Wood Duck\n")
    df = load_manifest(named, species=taxa)
    assert df["label"].tolist() == [4] and df["path"].tolist() == [str(tmp_path / "a.wav")]
    with pytest.raises(DataNotFoundError, match=r"not in the species table.*'Mallard'"):
        load_manifest(_write(tmp_path / "x.csv", "path,label\na.wav,Mallard\n"), species=taxa)
    with pytest.raises(DataNotFoundError, match="species names together with a species table"):
        load_manifest(m)


def test_column_typos_are_named_and_paths_normalised(tmp_path):
    with pytest.raises(DataNotFoundError, match="'lable'.*did you mean 'label'"):
        load_manifest(_write(tmp_path / "t.csv", "path,lable\na.wav,0\n"))
    sub = tmp_path / "lists"
    sub.mkdir()
    m = _write(sub / "m.csv", "PATH,Label,Split\nx/../a.wav,0,train\n")
    df = load_manifest(m)
    assert df["path"].tolist() == [str(sub / "a.wav")] and df["split"].tolist() == ["train"]


# --- the one table reader: separators, BOM, line ends, ragged rows ---------------------------


@pytest.mark.parametrize("sep", [";", "\t"])
def test_semicolon_and_tab_manifests_are_read(tmp_path, sep):
    # A BOM, CRLF line ends, and a comma inside a cell.
    rows = [
        ["path", "label", "Common Name", "start_s"],
        ["a.wav", "0", "Canada Goose", "0.5"],
        ["b.wav", "1", "Goose, Canada", "2"],
    ]
    text = "\r\n".join(sep.join(r) for r in rows) + "\r\n"
    m = tmp_path / "m.csv"
    m.write_bytes(("\ufeff" + text).encode("utf-8"))
    df = load_manifest(m)
    assert df["path"].tolist() == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert df["label"].tolist() == [0, 1]
    assert df["common_name"].tolist() == ["Canada Goose", "Goose, Canada"]
    assert df["start_s"].tolist() == [0.5, 2.0]


def test_semicolon_manifest_labels_and_species_names(tmp_path):
    from songsight.taxonomy import Species

    taxa = [Species(0, "Branta canadensis", "Canada Goose"), Species(4, "Aix sponsa", "Wood Duck")]
    m = _write(tmp_path / "m.csv", "file;common_name\na.wav;Wood Duck\nb.wav;Canada Goose\n")
    assert load_manifest(m, species=taxa)["label"].tolist() == [4, 0]
    m = _write(tmp_path / "n.csv", "path;label;split\na.wav;3;train\nb.wav;1\n")
    assert load_manifest(m)["split"].tolist() == ["train", ""]  # a short row, as with commas


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # One header column holding ';', rows that split by it into more fields than the header.
        ("path;label\na.wav;0;x\nb.wav;1;y\n", r"holding ';'.*do not split by ';'"),
        # ';' and tab split the header and every row alike: no way to choose.
        ("path;label\tsplit\na.wav;0\ttrain\n", r"holding ';' and tab.*';' and tab each split"),
    ],
)
def test_an_ambiguous_separator_is_named(tmp_path, text, named):
    with pytest.raises(DataNotFoundError, match=f"cannot tell the separator.*{named}"):
        load_manifest(_write(tmp_path / "m.csv", text))


def test_a_row_longer_than_the_header_is_refused_with_its_line(tmp_path):
    # pandas would silently make the first column an index and shift every other one.
    m = _write(tmp_path / "m.csv", "path,label\na.wav,0\nb.wav,1,extra\n")
    with pytest.raises(
        DataNotFoundError, match=r"m.csv, line 3: 3 fields where the header names 2"
    ):
        load_manifest(m)


def test_one_alias_table_serves_manifests_and_species_tables():
    from songsight.data.manifest import COLUMN_ALIASES, normalise_columns
    from songsight.taxonomy import COLUMN_ALIASES as SAME
    from songsight.taxonomy import SPECIES_OPTIONAL, SPECIES_REQUIRED

    assert COLUMN_ALIASES is SAME
    df = pd.DataFrame(columns=["Class", "Species", "start"])
    manifest, _ = normalise_columns(df, "m", ("path", "label", "species", "start_s"))
    assert list(manifest.columns) == ["label", "species", "start_s"]
    # A name the table reads itself is never taken for an alias; an alias to a column the
    # table does not read is just an unknown column, not a near miss.
    species, unknown = normalise_columns(df, "t", (*SPECIES_REQUIRED, *SPECIES_OPTIONAL))
    assert list(species.columns) == ["class", "scientific_name", "start"] and unknown == ["start"]
