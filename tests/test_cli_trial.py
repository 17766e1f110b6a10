"""The command line as a new user meets it: Ctrl-C advice that works, --quiet that is quiet,
and a download failure that does not tell the user to run the download."""

from __future__ import annotations

import re
import shlex

import pytest

from songsight.cli import _COMMANDS, build_parser, main
from tests.helpers import interrupt_after, write_noise_photo

# (argv, the flags the continuing command must hold, those it must not)
INTERRUPTED = [
    (["embed", "images", "p/", "--out", "e.parquet", "--overwrite"], ["--resume"], ["--overwrite"]),
    (["embed", "audio", "r/", "--out", "e.parquet", "--resume"], ["--resume"], []),
    (["index", "build", "p/", "--gallery", "g", "--overwrite"], [], ["--resume", "--overwrite"]),
    (["index", "add", "p/", "--gallery", "g"], [], ["--resume"]),
    (
        ["search", "a b.wav", "--gallery", "g", "--out", "partial.csv", "--format", "csv"],
        [],
        ["--resume"],
    ),  # fmt: skip
    (["distill", "--train", "t.csv", "--species", "s.csv", "--out", "run"], ["--resume"], []),
    (["data", "ssw60", "d"], [], []),
    (["demo", "--quick"], [], []),
]


@pytest.mark.parametrize(("argv", "must", "must_not"), INTERRUPTED, ids=lambda v: str(v)[:30])
def test_interruption_names_what_is_kept_and_a_command_that_parses(
    argv, must, must_not, monkeypatch, capsys
):
    def interrupted(args):
        raise KeyboardInterrupt

    add, _ = _COMMANDS[argv[0]]
    monkeypatch.setitem(_COMMANDS, argv[0], (add, interrupted))
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "interrupted" in err and (
        "kept" in err or "nothing was written" in err or "saved yet" in err
    )
    command = re.search(r"(?:continue with(?: \([^)]*\))?|run it again): (songsight .*)$", err)
    assert command, err
    tokens = shlex.split(command[1])
    assert tokens[0] == "songsight"
    build_parser().parse_args(tokens[1:])  # the advice is a command songsight accepts
    for flag in must:
        assert flag in tokens
    for flag in must_not:
        assert flag not in tokens
    assert [t for t in tokens[1:] if not t.startswith("--")][:2] == [
        t for t in argv if not t.startswith("--")
    ][:2]
    if argv[0] == "search":
        assert "nothing was written" in err and "a b.wav" in tokens


def _photos(folder, n: int):
    for i in range(n):
        write_noise_photo(folder / f"{i}.png", i)


def _advice(err: str) -> list[str]:
    command = re.search(
        r"(?:continue with(?: \([^)]*\))?|run it again): songsight (.*)$", err.strip()
    )
    assert command, err
    return shlex.split(command[1])


@pytest.mark.parametrize("kind", ["index", "embed"])
def test_the_advised_command_really_continues(kind, tiny_models, tmp_path, monkeypatch, capsys):
    """Interrupt a real run, then run exactly what the message says: the job completes."""
    from songsight.index.store import load_embeddings

    _photos(tmp_path / "p", 5)
    common = [
        "--image-model",
        str(tiny_models[1]),
        "--device",
        "cpu",
        "--quiet",
        "--batch-size",
        "1",
    ]
    if kind == "index":
        argv = ["index", "build", str(tmp_path / "p"), "--gallery", str(tmp_path / "g"), "--overwrite", *common]  # fmt: skip
        store = tmp_path / "g" / "gallery.parquet"
    else:
        argv = ["embed", "images", str(tmp_path / "p"), "--out", str(tmp_path / "e.parquet"), *common]  # fmt: skip
        store = tmp_path / "e.parquet"
    # The base class: `embed` runs the ONNX Runtime encoder, `index` the torch one.
    from songsight.encoders.image_batches import BatchedImageEncoder

    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, BatchedImageEncoder, "iter_images", 2)
        assert main(argv) == 130
    advice = _advice(capsys.readouterr().err)
    assert main(advice) == 0, capsys.readouterr().err
    meta, _, _ = load_embeddings(store)
    assert sorted(meta["path"]) == sorted(str(p) for p in (tmp_path / "p").iterdir())


def test_quiet_means_no_cpu_notice(tiny_models, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the notice is about machines without CUDA")
    _photos(tmp_path / "p", 1)
    base = ["embed", "images", str(tmp_path / "p"), "--image-model", str(tiny_models[1])]
    assert main([*base, "--out", str(tmp_path / "a.parquet"), "--quiet"]) == 0
    assert "no CUDA" not in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.parquet")]) == 0
    assert "no CUDA device found" in capsys.readouterr().err  # still said without --quiet


def test_download_failure_does_not_advise_running_download(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from songsight.encoders.loading import download_models
    from songsight.errors import ModelNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelNotFoundError) as err:
        download_models()
    message = str(err.value)
    assert "songsight download" not in message
    assert "not reachable" in message and "connection" in message and "--audio-model" in message


def test_search_refuses_distilled_model_with_cascade_models(tmp_path, capsys):
    """--model with --audio-model is refused before anything loads (it used to be ignored)."""
    from songsight.gallery.format import FORMAT, FORMAT_VERSION, write_meta

    g = tmp_path / "g"
    g.mkdir()
    (g / "gallery.parquet").write_bytes(b"")
    write_meta(g, {"format": FORMAT, "format_version": FORMAT_VERSION})
    code = main(["search", "x.wav", "--gallery", str(g), "--model", "m", "--audio-model", "a", "--method", "distilled"])  # fmt: skip
    assert code == 2
    assert "cascade" in capsys.readouterr().err


def test_search_of_nothing_is_an_error_as_index_build_is(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    assert main(["search", str(tmp_path / "empty"), "--gallery", str(tmp_path / "g")]) == 2
    assert "no recordings found" in capsys.readouterr().err


def test_search_says_when_the_photos_it_answers_with_are_gone(tiny_models, tmp_path, capsys):
    """Photos moved after the gallery was built: the answers' paths lead nowhere, and the
    search says so (count and `index check`) instead of a silent exit 0."""
    import soundfile as sf

    from songsight.taxonomy import Species, write_species_csv
    from tests.helpers import warble

    taxa = [Species(0, "Branta canadensis", "Canada Goose"), Species(1, "Aix sponsa", "Wood Duck")]
    write_species_csv(taxa, tmp_path / "taxa.csv")
    photos = [write_noise_photo(tmp_path / "p" / f"{i}.png", 70 + i, (18, 18)) for i in range(4)]
    (tmp_path / "m.csv").write_text(
        "path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(photos))
    )
    g, audio, image = str(tmp_path / "g"), str(tiny_models[0]), str(tiny_models[1])
    assert main(["index", "build", "--manifest", str(tmp_path / "m.csv"), "--species", str(tmp_path / "taxa.csv"), "--gallery", g, "--image-model", image, "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    sf.write(tmp_path / "call.wav", warble(2000, 2.0), 16_000)
    search = ["search", str(tmp_path / "call.wav"), "--gallery", g, "--audio-model", audio, "--k", "4", "--device", "cpu", "--quiet", "--format", "json"]  # fmt: skip
    assert main(search) == 0
    assert "no longer on disk" not in capsys.readouterr().err
    (tmp_path / "p").rename(tmp_path / "elsewhere")
    assert main(search) == 0
    err = capsys.readouterr().err
    assert "4 of 4 photos in these answers" in err and "index check" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--templates", "a photo of {common}"],
        ["--audio-templates", "sound"],
        ["--prompt-format", "sci", "--audio-prompt-format", "com"],
        ["--cascade", "weighted"],
    ],
)
def test_cascade_settings_beside_a_distilled_model_are_refused(extra, tmp_path, capsys):
    """`--templates "a photo of {common}"` with --model once changed nothing, silently: the
    checkpoint answers with the prompts it was distilled with."""
    argv = ["search", str(tmp_path / "x.wav"), "--gallery", str(tmp_path / "g"), "--model", "m"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert "would change nothing" in err and "drop --model" in err
    assert extra[0] in err


def test_embed_interrupted_names_only_what_exists(tmp_path):
    """Ctrl-C advice once named `emb/audio.parquet.parts` before it existed."""
    import argparse

    from songsight.cli.interrupt import interrupted_message

    out = tmp_path / "emb" / "audio.parquet"
    args = argparse.Namespace(command="embed", out=str(out))
    argv = ["embed", "audio", "r/", "--out", str(out)]
    assert "no file was embedded and saved yet" in interrupted_message(args, argv)
    assert ".parts" not in interrupted_message(args, argv)
    (tmp_path / "emb" / "audio.parquet.parts").mkdir(parents=True)
    (tmp_path / "emb" / "audio.parquet.parts" / "part-00000.parquet").write_bytes(b"x")
    assert f"kept in {out}.parts" in interrupted_message(args, argv)
