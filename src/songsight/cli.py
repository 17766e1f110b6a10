"""songsight command line: parse, then call one library function per subcommand.

Heavy imports (torch, transformers, open_clip) happen after parsing so ``--help`` is instant.
Deliberate errors print one line and exit 2 (nothing could run) or 1 (some inputs failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

AUDIO_DEFAULT = "davidrrobinson/BioLingual"
IMAGE_DEFAULT = "hf-hub:imageomics/bioclip-2"


def _positive(kind):
    """An argparse type that accepts only numbers above zero (a clean exit 2 otherwise)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number above zero, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="cuda, cuda:N, cpu or auto (default: CUDA when present)"
    )


def _add_audio_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio-model",
        default=AUDIO_DEFAULT,
        metavar="ID_OR_DIR",
        help=f"BioLingual-style CLAP model: Hub id or local folder (default {AUDIO_DEFAULT})",
    )


def _add_image_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-model",
        default=IMAGE_DEFAULT,
        metavar="ID_OR_DIR",
        help=f"BioCLIP-2-style open_clip model: Hub id or local folder (default {IMAGE_DEFAULT})",
    )


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: Ray Data model workers over many files/machines (pip install 'songsight[scale]')",
    )
    p.add_argument(
        "--workers", type=_positive(int), default=2, help="model workers for --engine ray"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="songsight",
        description="Hear a bird, see it: retrieve photos of the species singing in a recording.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "download", help="fetch BioLingual and BioCLIP-2 into the Hub cache for offline use"
    )
    p.add_argument("--audio-model", default=AUDIO_DEFAULT, metavar="ID")
    p.add_argument("--image-model", default=IMAGE_DEFAULT, metavar="ID")
    p.add_argument("--revision", default=None, help="pin a Hub revision (branch, tag or commit)")
    p.add_argument("--cache-dir", default=None)

    p = sub.add_parser("embed", help="embed recordings or photos into a Parquet file")
    esub = p.add_subparsers(dest="modality", metavar="{audio,images}", required=True)
    for name in ("audio", "images"):
        q = esub.add_parser(name, help=f"embed {name} files (folders are walked recursively)")
        q.add_argument("paths", nargs="+", metavar="PATHS")
        q.add_argument("--out", required=True, metavar="FILE.parquet")
        q.add_argument(
            "--resume", action="store_true", help="skip files already in --out (by content hash)"
        )
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        q.add_argument("--batch-size", type=_positive(int), default=None)
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_device(q)
        _add_engine(q)
        q.add_argument(
            "--precision",
            choices=("auto", "fp32", "bf16"),
            default="auto",
            help="auto: bf16 on CUDA, fp32 on CPU; bf16 also speeds up CPUs with AMX",
        )
        if name == "audio":
            _add_audio_model(q)
            q.add_argument(
                "--window-s",
                type=_positive(float),
                default=None,
                help="analysis window (default: the model's, 10 s)",
            )
            q.add_argument(
                "--hop-s",
                type=_positive(float),
                default=None,
                help="hop between windows (default: half a window)",
            )
        else:
            _add_image_model(q)
            q.add_argument(
                "--preprocess",
                choices=("model", "squash"),
                default="model",
                help="model: the checkpoint's own resize+centre-crop (default); squash: resize without crop",
            )

    p = sub.add_parser(
        "demo",
        help="the whole job offline in a simulated world (build, pretrain, distil, evaluate)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a 12-species world, for tests and smoke runs (< 1 min)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--species", type=int, default=None, help="number of species (default 60, quick 12)"
    )
    p.add_argument("--out", default="songsight-demo", metavar="DIR")

    from songsight.taxonomy import PROMPT_FORMATS, TEMPLATE_SETS

    p = sub.add_parser(
        "evaluate", help="SSW60 evaluation: retrieval, probes, zero-shot alignment, baselines"
    )
    p.add_argument(
        "--ssw60", required=True, metavar="ROOT", help="extracted SSW60 folder (or its parent)"
    )
    _add_audio_model(p)
    _add_image_model(p)
    p.add_argument(
        "--distilled", metavar="DIR", help="a distilled checkpoint (songsight distill --out)"
    )
    p.add_argument(
        "--methods", metavar="LIST", help="comma list; chance and oracle are always added"
    )
    p.add_argument(
        "--tasks", metavar="LIST", help="comma list of retrieval,discriminability,alignment"
    )
    p.add_argument("--out", default="RESULTS.json", metavar="RESULTS.json")
    p.add_argument(
        "--save-embeddings", metavar="DIR", help="write gallery and query embeddings as Parquet"
    )
    p.add_argument(
        "--soundscapes", metavar="MANIFEST", help="path,start_s,end_s,label rows (BirdSet style)"
    )
    p.add_argument(
        "--focal", metavar="MANIFEST", help="focal clips for zero-shot (default SSW60 test audio)"
    )
    p.add_argument("--gallery", choices=("all", "nabirds", "inat"), default="all")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=None)
    p.add_argument("--templates", choices=list(TEMPLATE_SETS), default=None)
    p.add_argument("--audio-prompt-format", choices=PROMPT_FORMATS, default="com")
    p.add_argument("--audio-templates", choices=list(TEMPLATE_SETS), default="sound")
    p.add_argument("--cascade-temperature", type=_positive(float), default=None)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)
    p.add_argument("--batch-size", type=_positive(int), default=16)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--limit-queries", type=_positive(int))
    p.add_argument("--limit-train", type=_positive(int))
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help="merge several RESULTS.json into one Markdown table")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--names", help="comma list of run names")
    p.add_argument("--out", help="write the Markdown here instead of printing it")

    p = sub.add_parser(
        "serve", help="the web page: upload or record a bird, see photos of its species"
    )
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    p.add_argument("--port", type=_positive(int), default=8000)
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="distilled checkpoint (default: zero-shot cascade)",
    )
    _add_audio_model(p)
    p.add_argument(
        "--image-model", default=None, metavar="ID_OR_DIR", help="default: the gallery's own"
    )
    _add_device(p)
    p.add_argument("--max-upload-mb", type=_positive(float), default=20.0)
    p.add_argument("--timeout-s", type=_positive(float), default=120.0)
    p.add_argument(
        "--workers", type=_positive(int), default=1, help="searches at once; more get 503"
    )
    p.add_argument("--max-duration-s", type=_positive(float), default=600.0)

    p = sub.add_parser("index", help="build or extend a photo gallery to search with recordings")
    isub = p.add_subparsers(dest="index_command", metavar="{build,add}", required=True)
    for name in ("build", "add"):
        build = name == "build"
        q = isub.add_parser(
            name,
            help="create (or resume) a gallery" if build else "add new photos (by content hash)",
        )
        q.add_argument(
            "paths", nargs="*", metavar="PATHS", help="photo files or folders (walked recursively)"
        )
        q.add_argument("--gallery", required=True, metavar="DIR")
        q.add_argument(
            "--manifest",
            metavar="CSV",
            help="path and optional label, species (or scientific_name), common_name, genus, family, order",
        )
        q.add_argument(
            "--species", metavar="TAXA_CSV", help="species table naming a manifest's label column"
        )
        q.add_argument(
            "--image-model",
            default=IMAGE_DEFAULT if build else None,
            metavar="ID_OR_DIR",
            help=f"open_clip model (default {IMAGE_DEFAULT})"
            if build
            else "default: the gallery's own; another model is refused",
        )
        q.add_argument(
            "--ann",
            action="store_true",
            help="build an HNSW index now (default: exact, HNSW past 200,000 photos; re-ranked exactly)",
        )
        if build:
            q.add_argument("--vector-dtype", choices=("float32", "float16"), default="float32")
            q.add_argument("--preprocess", choices=("model", "squash"), default="model")
            q.add_argument("--overwrite", action="store_true", help="start the gallery again")
        _add_engine(q)
        q.add_argument("--batch-size", type=_positive(int), default=32)
        q.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        _add_device(q)

    p = sub.add_parser("search", help="find the photos (and species) of the birds in recordings")
    p.add_argument("recordings", nargs="+", metavar="RECORDINGS", help="audio files or folders")
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument(
        "--model",
        metavar="DISTILLED_DIR",
        help="distilled checkpoint; without it the zero-shot cascade answers",
    )
    _add_audio_model(p)
    p.add_argument(
        "--image-model",
        default=None,
        metavar="ID_OR_DIR",
        help="cascade only (default: the gallery's own)",
    )
    p.add_argument("--cascade", choices=("top1", "weighted"), default="top1")
    p.add_argument("--k", type=_positive(int), default=10)
    p.add_argument("--window-s", type=_positive(float), default=None)
    p.add_argument("--hop-s", type=_positive(float), default=None)
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", metavar="FILE", help="default stdout; parquet needs it")
    p.add_argument(
        "--raven", metavar="DIR", help="also write one Raven selection table per recording"
    )
    p.add_argument("--batch-size", type=_positive(int), default=16)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--quiet", action="store_true")
    _add_device(p)

    p = sub.add_parser("data", help="datasets: download and verify")
    dsub = p.add_subparsers(dest="dataset", metavar="{ssw60}", required=True)
    q = dsub.add_parser(
        "ssw60", help="download (resumable, md5-checked) and extract SSW60, or verify it"
    )
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--url", default=None, help="archive URL (default: the official one)")
    q.add_argument("--quiet", action="store_true")

    p = sub.add_parser(
        "distill", help="distil BioCLIP-2 species text embeddings into BioLingual's audio encoder"
    )
    p.add_argument(
        "--train",
        required=True,
        metavar="MANIFEST",
        help="CSV/Parquet with path, label (and split)",
    )
    p.add_argument(
        "--species",
        required=True,
        metavar="TAXA_CSV",
        help="species table with SSW60's taxa.csv columns",
    )
    _add_audio_model(p)
    _add_image_model(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--val", metavar="MANIFEST", help="validation audio (zero-shot species accuracy each epoch)"
    )
    p.add_argument(
        "--val-gallery",
        metavar="MANIFEST",
        help="validation images (path, label) for audio-to-image mAP",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/last exactly (optimizer, schedule, RNG)",
    )
    p.add_argument(
        "--config", metavar="JSON", help="a DistillConfig as JSON; flags below override it"
    )
    p.add_argument(
        "--cache-dir", help="where teacher targets are cached (default ~/.cache/songsight/targets)"
    )
    p.add_argument("--quiet", action="store_true")
    _add_device(p)
    from songsight.config import DistillConfig, distill_flags

    distill_flags(p, DistillConfig())
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "download":
        from songsight.encoders.loading import download_models

        for m in download_models(args.audio_model, args.image_model, args.revision, args.cache_dir):
            print(f"{m.model_id}: revision {m.revision} at {m.path}")
        return 0

    if args.command == "embed" and args.engine == "ray":
        from songsight import scale

        common = dict(resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                      concurrency=args.workers, device=args.device, precision=args.precision)  # fmt: skip
        if args.modality == "audio":
            report = scale.embed_audio_files_ray(args.paths, args.out, args.audio_model, window_s=args.window_s,
                                                 hop_s=args.hop_s, batch_size=args.batch_size or 16, **common)  # fmt: skip
        else:
            report = scale.embed_image_files_ray(args.paths, args.out, args.image_model, preprocess=args.preprocess,
                                                 batch_size=args.batch_size or 32, **common)  # fmt: skip
        print(report.summary())
        return report.exit_code

    if args.command == "embed":
        from songsight import embed

        if args.modality == "audio":
            from songsight.encoders.biolingual import BioLingualEncoder

            try:
                enc = BioLingualEncoder(
                    args.audio_model,
                    device=args.device,
                    batch_size=args.batch_size or 16,
                    window_s=args.window_s,
                    hop_s=args.hop_s,
                    precision=args.precision,
                )
            except ValueError as exc:  # e.g. a --window-s longer than the model's: a bad argument
                from songsight.errors import SongsightError

                raise SongsightError(str(exc)) from None
            report = embed.embed_audio_files(
                args.paths,
                args.out,
                enc,
                args.window_s,
                args.hop_s,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        else:
            from songsight.encoders.bioclip import BioCLIPEncoder

            enc = BioCLIPEncoder(
                args.image_model,
                device=args.device,
                batch_size=args.batch_size or 32,
                preprocess=args.preprocess,
                precision=args.precision,
            )
            report = embed.embed_image_files(
                args.paths,
                args.out,
                enc,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        print(report.summary())
        return report.exit_code

    if args.command == "demo":
        from songsight.sim.demo import run_demo

        run_demo(args.out, seed=args.seed, species=args.species, quick=args.quick)
        return 0

    if args.command == "evaluate":
        from songsight.eval.report import format_summary
        from songsight.eval.tasks import run_evaluation

        def split(v):
            return [x.strip() for x in v.split(",") if x.strip()] if v else None

        res = run_evaluation(
            args.ssw60, args.out, audio_model=args.audio_model, image_model=args.image_model,
            distilled=args.distilled, methods=split(args.methods), tasks=split(args.tasks),
            save_embeddings=args.save_embeddings, soundscapes=args.soundscapes, focal=args.focal,
            gallery=args.gallery, prompt_format=args.prompt_format, templates=args.templates,
            audio_prompt_format=args.audio_prompt_format, audio_templates=args.audio_templates,
            cascade_temperature=args.cascade_temperature, bootstrap=args.bootstrap, seed=args.seed,
            device=args.device, batch_size=args.batch_size, precision=args.precision,
            limit_queries=args.limit_queries, limit_train=args.limit_train,
            figures=not args.no_figures, progress=not args.quiet,
        )  # fmt: skip
        print(format_summary(res))
        return 0

    if args.command == "report":
        from songsight.eval.report import merge_reports

        names = [x.strip() for x in args.names.split(",")] if args.names else None
        text = merge_reports(args.results, names)
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text)
        return 0

    if args.command == "serve":
        from songsight.serve import serve

        serve(args.gallery, args.host, args.port, model=args.model, audio_model=args.audio_model,
              image_model=args.image_model, device=args.device, max_upload_mb=args.max_upload_mb,
              request_timeout_s=args.timeout_s, max_concurrency=args.workers,
              max_duration_s=args.max_duration_s)  # fmt: skip
        return 0

    if args.command == "index":
        from songsight.index.gallery import add_to_gallery, build_gallery

        common = dict(manifest=args.manifest, species_csv=args.species, image_model=args.image_model,
                      ann=args.ann or None, device=args.device, batch_size=args.batch_size,
                      precision=args.precision, engine=args.engine, workers=args.workers,
                      progress=not args.quiet)  # fmt: skip
        if args.index_command == "build":
            report = build_gallery(args.paths, args.gallery, vector_dtype=args.vector_dtype,
                                   preprocess=args.preprocess, overwrite=args.overwrite, **common)  # fmt: skip
        else:
            report = add_to_gallery(args.paths, args.gallery, **common)
        print(report.summary())
        return report.exit_code

    if args.command == "search":
        from songsight.retrieval import run_search

        return run_search(args.recordings, args.gallery, model=args.model, audio_model=args.audio_model,
                          image_model=args.image_model, k=args.k, window_s=args.window_s, hop_s=args.hop_s,
                          fmt=args.format, out=args.out, raven=args.raven, device=args.device,
                          cascade_mode=args.cascade, batch_size=args.batch_size, precision=args.precision,
                          progress=not args.quiet)  # fmt: skip

    if args.command == "data":
        from songsight.data.download import DEFAULT_URL, fetch_ssw60, format_ssw60_report

        report = fetch_ssw60(args.dir, url=args.url or DEFAULT_URL, progress=not args.quiet)
        print(format_ssw60_report(report))
        return 0

    if args.command == "distill":
        import json

        from songsight.config import DistillConfig, config_from_flags
        from songsight.distill.train import distill

        base = (
            DistillConfig.from_dict(json.loads(open(args.config).read()))
            if args.config
            else DistillConfig()
        )
        summary = distill(
            args.train,
            args.species,
            args.audio_model,
            args.image_model,
            args.out,
            config_from_flags(base, args),
            val_manifest=args.val,
            val_gallery=args.val_gallery,
            resume=args.resume,
            device=args.device,
            progress=not args.quiet,
            cache_dir=args.cache_dir,
        )
        print(json.dumps(summary, indent=1))
        return 0

    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from songsight.provenance import package_version

        print(f"songsight {package_version()}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from songsight.errors import SongsightError

    try:
        return _run(args)
    except SongsightError as exc:
        print(f"songsight: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "songsight: interrupted; what was finished is kept (rerun with --resume to continue)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
