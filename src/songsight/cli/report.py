"""``songsight report``: several RESULTS.json merged into one Markdown (or HTML) table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge several RESULTS.json into one Markdown table")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--names", help="comma list of run names")
    p.add_argument(
        "--out", help="write the Markdown here instead of printing it (HTML tables: FILE.html)"
    )


def run_report(args: argparse.Namespace) -> int:
    from songsight.eval.report import merge_reports
    from songsight.eval.report_html import merge_reports_html
    from songsight.outputs import claim, write_text_atomically

    names = [x.strip() for x in args.names.split(",")] if args.names else None
    html = bool(args.out) and Path(args.out).suffix.lower() in (".html", ".htm")
    if not args.out:
        print(merge_reports(args.results, names))
        return 0
    with claim(args.out, what="--out"):
        text = (merge_reports_html if html else merge_reports)(args.results, names)
        write_text_atomically(args.out, text)
    return 0
