"""The CLI's error policy: expected errors are one line and exit 2; anything else is one line
naming the log file that holds the traceback, exit 3, or the traceback itself with --debug."""

from __future__ import annotations

import json

import pytest

from songsight import cli


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("SONGSIGHT_LOG_DIR", str(folder))
    return folder


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "RESULTS.json"
    path.write_text(json.dumps({"format_version": 1}))
    return path


@pytest.fixture
def buggy_report(monkeypatch):
    """``songsight report`` whose library call hits a bug."""

    def merge_reports(paths, names=None):
        return {}["a key that is not there"]

    monkeypatch.setattr("songsight.eval.report.merge_reports", merge_reports)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_a_bug_is_one_line_naming_the_log_exit_3(buggy_report, results_file, log_dir, capsys):
    assert cli.main(["report", str(results_file)]) == 3
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    logs = list(log_dir.glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in err[0]
    assert "internal error (KeyError" in err[0] and "--debug" in err[0]
    log = logs[0].read_text()
    assert "Traceback (most recent call last)" in log and "KeyError" in log
    assert f"command: songsight report {results_file}" in log


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_instead(where, buggy_report, results_file, log_dir, capsys):
    argv = ["report", str(results_file)]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "merge_reports" in err
    assert not log_dir.exists() or not list(log_dir.glob("*.log"))


def test_an_unwritable_log_folder_falls_back_to_tmp(
    buggy_report, results_file, tmp_path, monkeypatch, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SONGSIGHT_LOG_DIR", str(blocker / "logs"))  # cannot be created
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert cli.main(["report", str(results_file)]) == 3
    err = lines(capsys.readouterr().err)
    logs = list((tmp_path / "tmp").glob("crash-*.log"))
    assert len(err) == 1 and len(logs) == 1 and str(logs[0]) in err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Files the system refuses: the path and the reason, not a traceback.
        (["data", "ssw60", "{blocked}/ssw60"], "{blocked}/ssw60: Not a directory"),
        (["report", "{tmp}/list.json"], "is not a RESULTS.json"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--loss", "foo"],
         "loss must be one of ('auto', 'class', 'batch', 'species')"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--val-fraction", "1.5"],
         "val_fraction must be in [0, 1)"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--candidates", "some"],
         "candidates must be 'all' or 'train'"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--min-temperature", "0.5"],
         "need 0 < min_temperature <= init_temperature"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--epochs", "0"],
         "epochs must be >= 1"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--config", "{tmp}/bad.json"],
         "--config"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "o", "--config", "{tmp}/none.json"],
         "none.json: No such file or directory"),
        (["evaluate", "--ssw60", "x", "--audio-templates", "{{commonname}} calling"], "unknown field"),
        (["report", "{tmp}/R.json", "{tmp}/R.json", "--names", "demo"], "--names gives 1 name(s) for 2"),
        # Outputs that cannot be written: said before any work (once after 40-129 s of it).
        (["search", "{tmp}", "--gallery", "g", "--out", "{blocked}/r.csv"], "cannot write --out in {blocked}"),
        (["search", "{tmp}", "--gallery", "g", "--raven", "{blocked}"], "--raven {blocked} is a file"),
        (["evaluate", "--ssw60", "x", "--out", "{blocked}/R.json"], "cannot write --out in {blocked}"),
        (["distill", "--train", "t.csv", "--species", "t.csv", "--out", "{blocked}/run"], "cannot write --out in {blocked}"),
        (["index", "build", "{tmp}", "--gallery", "{blocked}/g"], "cannot write --gallery in {blocked}"),
        (["embed", "audio", "{tmp}", "--out", "{blocked}/e.parquet"], "cannot write --out in {blocked}"),
    ],
)  # fmt: skip
def test_expected_errors_stay_one_line_exit_2(argv, expected, tmp_path, log_dir, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "R.json").write_text(json.dumps({"format_version": 1}))
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    fill = {"tmp": str(tmp_path), "blocked": str(blocked)}
    argv = [a.format(**fill) for a in argv]
    assert cli.main(argv) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and expected.format(**fill) in err[0], err
    assert not log_dir.exists()


def test_a_reader_that_goes_away_ends_the_output_quietly(monkeypatch, log_dir, capsys):
    """`songsight search ... | head`: the pipe closes under us; no internal error, no log."""

    def run(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_run", run)
    monkeypatch.setattr(cli, "_quiet_broken_pipe", lambda: 141)  # pytest owns the real stdout
    assert cli.main(["report", "x.json"]) == 141
    assert capsys.readouterr().err == "" and not log_dir.exists()


def test_a_real_broken_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    results = tmp_path / "R.json"
    results.write_text(json.dumps({"format_version": 1}))
    code = (
        f"from songsight.cli import main; raise SystemExit(main(['report'] + ['{results}'] * 4000))"
    )
    proc = subprocess.run(
        f"{sys.executable} -c \"{code}\" | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True,
        env={"SONGSIGHT_LOG_DIR": str(tmp_path / "logs"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
    assert not (tmp_path / "logs").exists()


def test_songsight_warnings_are_one_line_notes(tmp_path, capsys):
    import warnings

    from songsight.cli import _show_warning

    _show_warning(UserWarning("3 photos are gone"), UserWarning, "/x/songsight/eval/tasks.py", 9)
    assert capsys.readouterr().err == "songsight: 3 photos are gone\n"
    _show_warning(UserWarning("from torch"), UserWarning, "/x/torch/nn.py", 9)
    assert "nn.py:9: UserWarning: from torch" in capsys.readouterr().err
    assert warnings  # the CLI installs it for every command (cli.main)


class _SlowRay:
    """Stands in for the ``ray`` module: its first ``fail`` starts time out, as Ray's do."""

    def __init__(self, fail: int, message: str = "The current node timed out during startup."):
        self.fail, self.message, self.inits, self.shutdowns = fail, message, [], 0

    def init(self, **options):
        self.inits.append(options)
        if len(self.inits) <= self.fail:
            raise Exception(self.message)

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_ray_start_that_times_out_is_tried_again_then_explained():
    from songsight.errors import SongsightError
    from songsight.jobs.ray import start_local_ray

    ray = _SlowRay(fail=2)
    start_local_ray(ray, tries=3, num_cpus=2)
    assert len(ray.inits) == 3 and ray.shutdowns == 2
    assert ray.inits[-1] == {"include_dashboard": False, "log_to_driver": False, "num_cpus": 2}

    with pytest.raises(SongsightError, match=r"did not start \(2 tries.*RAY_ADDRESS"):
        start_local_ray(_SlowRay(fail=5), tries=2)
    # Any other failure is not a slow start: raised as it came, not retried.
    other = _SlowRay(fail=5, message="bad address")
    with pytest.raises(Exception, match="bad address"):
        start_local_ray(other, tries=3)
    assert len(other.inits) == 1
