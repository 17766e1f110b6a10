"""``songsight serve``: the web page and its HTTP API over a gallery."""

from __future__ import annotations

import argparse

from songsight.cli.common import (
    add_cascade_prompts,
    add_device,
    add_method,
    add_precision_runtime,
    add_query_models,
    add_species_list,
    cascade_prompts,
    port,
    positive,
)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web page: upload or record a bird, see photos of its species"
    )
    p.add_argument("--gallery", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    p.add_argument("--port", type=port, default=8000)
    add_query_models(p)
    add_method(p)
    add_cascade_prompts(p)
    add_species_list(p)
    add_device(p)
    p.add_argument(
        "--max-upload-mb", type=positive(float), default=20.0, help="largest upload (default 20)"
    )
    p.add_argument(
        "--timeout-s", type=positive(float), default=120.0, help="per search (default 120)"
    )
    add_precision_runtime(p)
    p.add_argument(
        "--workers", type=positive(int), default=1, help="batches searched at once (default 1)"
    )
    p.add_argument(
        "--queue", type=positive(int), default=64,
        help="searches admitted at once, waiting or running; one more gets 503 (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=positive(int), default=8,
        help="most searches sharing one forward pass (default 8; 1: one at a time)",
    )  # fmt: skip
    p.add_argument(
        "--batch-wait-ms", type=positive(float), default=5.0,
        help="how long a short batch waits for more searches (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--max-duration-s",
        type=positive(float),
        default=600.0,
        help="longest recording accepted (default 600)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from songsight.serve import serve

    serve(args.gallery, args.host, args.port, model=args.model, audio_model=args.audio_model,
          image_model=args.image_model, device=args.device, max_upload_mb=args.max_upload_mb,
          request_timeout_s=args.timeout_s, max_concurrency=args.workers,
          max_duration_s=args.max_duration_s, species_list=args.species_list,
          method=args.method, max_queue=args.queue, max_batch=args.batch,
          batch_wait_ms=args.batch_wait_ms, precision=args.precision, runtime=args.runtime,
          **cascade_prompts(args))  # fmt: skip
    return 0
