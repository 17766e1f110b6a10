"""``songsight demo``: the whole job offline, in a simulated world."""

from __future__ import annotations

import argparse


def add_demo(sub: argparse._SubParsersAction) -> None:
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


def run_demo(args: argparse.Namespace) -> int:
    from songsight.sim.demo import run_demo as run_sim_demo

    run_sim_demo(args.out, seed=args.seed, species=args.species, quick=args.quick)
    return 0
