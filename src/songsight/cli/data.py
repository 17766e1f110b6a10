"""``songsight data ssw60``: download, extract and verify a dataset."""

from __future__ import annotations

import argparse


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: download and verify")
    dsub = p.add_subparsers(dest="dataset", metavar="{ssw60}", required=True)
    q = dsub.add_parser(
        "ssw60", help="download (resumable, md5-checked) and extract SSW60, or verify it"
    )
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--url", default=None, help="archive URL (default: the official one)")
    q.add_argument("--quiet", action="store_true")


def run_data(args: argparse.Namespace) -> int:
    from songsight.data.download import DEFAULT_URL, fetch_ssw60, format_ssw60_report

    report = fetch_ssw60(args.dir, url=args.url or DEFAULT_URL, progress=not args.quiet)
    print(format_ssw60_report(report))
    return 0
