"""``cardio``: the CardioShape command line (headless, on the same logic the Slicer modules use).

Subcommands:
    cardio info                 versions, compute device, CUDA, bundled models
    cardio demo --out DIR       every module that exists, on the embedded defaults -> DIR/scene.mrb,
                                PNG renderings, DIR/report.json and DIR/report.md
    cardio bench core           geometry/metric benchmarks, each beside its target and a peer
    cardio gen train|sample|eval|interpolate
                                CardioGen: train on a cohort, generate LV meshes, evaluate, interpolate
    cardio bench gen            CardioGen sampling speed, fast samplers vs 1000-step DDPM
    cardio recon fit|eval       CardioReconstruct: template fit to a label map, quality metrics
    cardio bench recon          CardioReconstruct ablation: MIE vs surface-only vs occupancy-only vs marching cubes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from cardiocore import __version__
from cardiocore.errors import CardioInputError
from cardiocore.gen.cli import add_gen_bench, add_gen_commands
from cardiocore.recon.cli import add_recon_bench, add_recon_commands


def _cmd_info(args: argparse.Namespace) -> int:
    from cardiocore.info import environment_info, format_info

    info = environment_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cardiocore.mrml.demo import run_demo

    report = run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite, progress=print)
    print(f"demo written to {Path(args.out).resolve()} ({len(report['nodes'])} nodes in scene.mrb)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from cardiocore.bench.core import format_rows, run_core_benchmarks

    rows = run_core_benchmarks(device=args.device, quick=args.quick, progress=print)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cardio", description="CardioShape: cardiac-shape AI, headless.")
    parser.add_argument("--version", action="version", version=f"cardiocore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, device, CUDA, bundled models")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_cmd_info)

    demo = commands.add_parser("demo", help="run every module on the embedded defaults")
    demo.add_argument("--out", required=True, help="output folder (scene.mrb, PNGs, report.json/.md)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic anatomy (default 0)")
    demo.add_argument("--overwrite", action="store_true", help="replace demo files already in --out")
    demo.set_defaults(handler=_cmd_demo)

    bench = commands.add_parser("bench", help="benchmarks with their targets")
    suites = bench.add_subparsers(dest="suite", required=True)
    core = suites.add_parser("core", help="winding-number occupancy, Chamfer, pairwise Chamfer matrix")
    core.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    core.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not the figures")
    core.add_argument("--json", help="also write the rows to this JSON file")
    core.set_defaults(handler=_cmd_bench)
    add_gen_bench(suites)
    add_recon_bench(suites)
    add_gen_commands(commands)
    add_recon_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CardioInputError as error:
        print(f"cardio: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
