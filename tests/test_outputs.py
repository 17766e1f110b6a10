"""One writer per output: claims are taken before any work, refuse a second job by name, die with
their process, and results are replaced whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from songsight.errors import SongsightError
from songsight.outputs import OutputBusyError, claim, lock_path_for, replace_atomically


def _holder(path: Path, folder: bool) -> subprocess.Popen:
    """Another process holding a claim on ``path`` until it is killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from songsight.outputs import claim
        c = claim({str(path)!r}, folder={folder})
        print("held", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--out", "the-other-job"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("folder", [False, True])
def test_a_second_writer_is_refused_by_name_and_a_dead_one_leaves_no_lock(tmp_path, folder):
    target = tmp_path / ("run" if folder else "out.csv")
    proc = _holder(target, folder)
    try:
        with pytest.raises(OutputBusyError, match=rf"pid {proc.pid}.*the-other-job"):
            claim(target, folder=folder)
    finally:
        proc.send_signal(signal.SIGKILL)  # killed as a job would be: no clean-up ran
        proc.wait()
    with claim(target, folder=folder) as held:  # the kernel dropped the dead job's lock
        assert held.lock == lock_path_for(os.path.abspath(target), folder)


def test_claims_are_reentrant_in_one_process_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "new" / "deeper" / "gallery"
    with claim(target, folder=True) as outer:
        with claim(target, folder=True) as inner:  # a job's nested step (build -> update)
            assert inner is outer
        assert outer.lock.exists()
    assert not target.exists()  # made for the claim, left empty: removed
    (tmp_path / "kept").mkdir()
    with claim(tmp_path / "kept", folder=True):
        (tmp_path / "kept" / "result.txt").write_text("x")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["result.txt"]


def test_existing_outputs_and_wrong_kinds_are_refused_with_the_jobs_advice(tmp_path):
    out = tmp_path / "results.csv"
    out.write_text("old")
    with pytest.raises(SongsightError, match="already exists; pass --overwrite"):
        claim(out, exists="pass --overwrite to replace it")
    with pytest.raises(SongsightError, match="is a file, not a folder"):
        claim(out, folder=True)
    with pytest.raises(SongsightError, match="is a folder"):
        claim(tmp_path)
    with pytest.raises(SongsightError, match="cannot write"):
        claim(out / "below-a-file.csv")  # its folder cannot be made
    assert out.read_text() == "old"
    assert list(tmp_path.iterdir()) == [out]  # no lock left by any refusal


def test_a_failed_write_keeps_the_old_file_whole(tmp_path):
    out = tmp_path / "results.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), replace_atomically(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert out.read_text() == "old" and list(tmp_path.iterdir()) == [out]
    with replace_atomically(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    "argv, held, folder",
    [
        (["search", "a.wav", "--gallery", "g", "--out", "same.csv"], "same.csv", False),
        (["search", "a.wav", "--gallery", "g", "--raven", "tables"], "tables", True),
        (["index", "build", "photos", "--gallery", "g"], "g", True),
        (["index", "add", "photos", "--gallery", "g"], "g", True),
        (["index", "remove", "x.png", "--gallery", "g"], "g", True),
        (["index", "check", "--gallery", "g", "--prune"], "g", True),
        (["embed", "images", "photos", "--out", "e.parquet"], "e.parquet", False),
        (["distill", "--train", "t.csv", "--species", "s.csv", "--out", "run"], "run", True),
    ],
    ids=lambda v: v[0] + "-" + v[1] if isinstance(v, list) else None,
)
def test_every_writing_command_refuses_a_second_writer_before_any_work(
    tmp_path, monkeypatch, capsys, argv, held, folder
):
    """Two jobs on one output: the second says who holds it, exit 2, before loading anything
    (two searches once left 24 of 42 recordings in one CSV; two builds, a crashed one)."""
    from songsight.cli import main
    from tests.helpers import write_noise_photo

    monkeypatch.chdir(tmp_path)
    write_noise_photo(tmp_path / "photos" / "p.png", 1, (16, 16))
    (tmp_path / "a.wav").write_bytes(b"")
    _gallery_stub(tmp_path / "g")
    proc = _holder(tmp_path / held, folder)
    try:
        t0 = time.perf_counter()
        code = main(argv)
        err = capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert code == 2, err
    assert "being written by another songsight job" in err and f"pid {proc.pid}" in err
    assert time.perf_counter() - t0 < 5  # refused up front, not after the work


def _gallery_stub(g: Path) -> None:
    """A gallery folder with one photo row, enough to be found (never embedded here)."""
    import numpy as np

    from songsight.gallery.format import FORMAT, FORMAT_VERSION
    from songsight.index.store import EmbeddingWriter
    from songsight.outputs import write_text_atomically

    g.mkdir()
    w = EmbeddingWriter(g / "gallery.parquet", {"dim": 4})
    w.add([{"path": str(g / "x.png"), "sha256": "0" * 64, "embedding": np.ones(4, np.float32)}])
    w.close()
    write_text_atomically(
        g / "gallery.json",
        f'{{"format": "{FORMAT}", "format_version": {FORMAT_VERSION}, "index": {{}}}}',
    )
