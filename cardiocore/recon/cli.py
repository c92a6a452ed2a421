"""``cardio recon fit | eval`` and ``cardio bench recon``.

Label maps (``--labels``) are NIfTI files (``.nii``/``.nii.gz``, read with ``nibabel``) or
``.npz`` files holding ``labels`` and ``ijk_to_ras``; ``--structures`` names their label coding:
``default`` (phantom labels 1..7), ``mmwhs`` (205, 420, 500, 550, 600, 820, 850),
``mmwhs-reindexed`` or a rule-set JSON file (:mod:`cardiocore.recon.rules`). Mesh folders hold
one ``<structure>.vtk`` per structure in RAS mm (Slicer's file conventions on disk).

Predict mode (``cardio recon predict``/``train``) is not offered: there are no trained weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cardiocore.errors import CardioInputError

STRUCTURES_HELP = "label coding: default, mmwhs, mmwhs-reindexed or a rule-set JSON file (default: default)"


def _print_fit_summary(metrics: dict[str, Any], out: Path) -> None:
    """The figures of a fit (:meth:`ReconMetrics.to_dict` form, as in ``metrics.json``)."""
    from cardiocore.bench.recon import format_table

    structures = [{"structure": name} | values for name, values in metrics["structures"].items()]
    print(format_table(structures, ("structure", "dice", "hd95_mm", "chamfer_mm", "lse_mm2", "volume_ml",
                                    "label_volume_ml", "watertight", "self_intersections")))
    rules = [{"rule": f"{r['a']} {r['kind']} {r['b']}", "VR (%)": 100 * r["vr"], "SVR (%)": 100 * r["svr"],
              "voxel VR (%)": 100 * r["voxel_vr"]} for r in metrics["rules"]]
    if rules:
        print(format_table(rules, ("rule", "VR (%)", "SVR (%)", "voxel VR (%)")))
    if metrics.get("missing"):
        print(f"not fitted (no or too few voxels): {', '.join(metrics['missing'])}")
    seconds = metrics.get("seconds", {}).get("total")
    print(f"meshes, meshes.seg.nrrd and metrics.json written to {out}"
          + (f" in {seconds:.1f} s" if seconds is not None else ""))


def _cmd_fit(args: argparse.Namespace) -> int:
    from cardiocore.mrml.recon import fit_label_file

    def report(fraction: float, message: str) -> None:
        print(f"{100 * fraction:5.1f} % {message}", flush=True)

    metrics = fit_label_file(args.labels, args.out, structures=args.structures, steps=args.steps,
                             device=args.device, overwrite=args.overwrite, progress=report)
    _print_fit_summary(metrics, Path(args.out))
    return 0


def _read_structure_meshes(folder: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """``folder/<name>.vtk`` for each structure name that has one (RAS mm)."""
    from cardiocore.mrml.mesh_folders import read_mesh_file

    if not folder.is_dir():
        raise CardioInputError(str(folder), "is not an existing folder", "give the folder written by cardio recon fit")
    meshes = {name: read_mesh_file(folder / f"{name}.vtk") for name in names if (folder / f"{name}.vtk").is_file()}
    if not meshes:
        raise CardioInputError(str(folder), f"holds no <structure>.vtk mesh (looked for {', '.join(names)})",
                               "check --structures: the file names are the structure names")
    return meshes


def _cmd_eval(args: argparse.Namespace) -> int:
    from cardiocore.bench.recon import format_table
    from cardiocore.recon.evaluate import ROW_COLUMNS, evaluate_meshes
    from cardiocore.recon.rules import resolve_rule_set
    from cardiocore.mrml.storage import read_node
    from cardiocore.mrml.volumes import volume_to_array
    from cardiocore.train.atomic import atomic_write

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CardioInputError(str(out), "already exists", "pass --overwrite or choose another file")
    rules = resolve_rule_set(args.structures)
    labels, ijk_to_ras = volume_to_array(read_node(args.labels, kind="labelmap"))  # the reader `recon fit` uses
    meshes = _read_structure_meshes(Path(args.meshes), rules.names)
    label_of = {s.name: s.label for s in rules.structures}
    metrics = evaluate_meshes(meshes, labels, ijk_to_ras, label_of, rules)
    print(format_table(metrics.rows(), ROW_COLUMNS))
    if metrics.missing:
        print(f"no mesh for: {', '.join(metrics.missing)}")
    report = {"labels": str(args.labels), "meshes": str(args.meshes)} | metrics.to_dict()
    with atomic_write(out) as stream:
        stream.write(json.dumps(report, indent=2).encode())
    print(f"metrics written to {out}")
    return 0


def _cmd_bench_recon(args: argparse.Namespace) -> int:
    from cardiocore.bench.recon import (
        MMWHS_SPACING_MM,
        format_recon_rows,
        mmwhs_cases,
        phantom_cases,
        run_recon_benchmarks,
    )
    from cardiocore.train.atomic import atomic_write

    if args.quick:
        cases = []
    elif args.data:
        cases = mmwhs_cases(args.data, spacing_mm=args.spacing_mm or MMWHS_SPACING_MM, n=args.cases)
    else:
        cases = phantom_cases(args.cases or 3)
    rows = run_recon_benchmarks(cases, steps=args.steps, device=args.device, quick=args.quick, progress=print)
    print(format_recon_rows(rows))
    if args.json:
        with atomic_write(args.json) as stream:
            stream.write(json.dumps(rows, indent=2).encode())
    return 0


def add_recon_commands(commands: Any) -> None:
    """Register ``cardio recon fit`` and ``cardio recon eval`` on the top-level subparsers."""
    recon = commands.add_parser("recon", help="CardioReconstruct: multi-chamber heart meshes from a label map")
    verbs = recon.add_subparsers(dest="verb", required=True)

    fit = verbs.add_parser("fit", help="deform the bundled template to a label map (no training)")
    fit.add_argument("--labels", required=True, help="label map (.nii, .nii.gz, or .npz with labels, ijk_to_ras)")
    fit.add_argument("--structures", default="default", help=STRUCTURES_HELP)
    fit.add_argument("--steps", type=int, default=150, help="optimisation steps (default 150)")
    fit.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    fit.add_argument("--out", required=True, help="output folder (<structure>.vtk, meshes.seg.nrrd, metrics.json)")
    fit.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    fit.set_defaults(handler=_cmd_fit)

    evaluate = verbs.add_parser("eval", help="Dice, HD95, Chamfer, VR/SVR per rule, LSE, watertightness")
    evaluate.add_argument("--meshes", required=True, help="folder with one <structure>.vtk per structure")
    evaluate.add_argument("--labels", required=True, help="label map (.nii, .nii.gz, or .npz with labels, ijk_to_ras)")
    evaluate.add_argument("--structures", default="default", help=STRUCTURES_HELP)
    evaluate.add_argument("--out", required=True, help="JSON file for the figures")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    evaluate.set_defaults(handler=_cmd_eval)


def add_recon_bench(suites: Any) -> None:
    """Register ``cardio bench recon``."""
    bench = suites.add_parser("recon", help="fit ablation (MIE, surface only, occupancy only) vs the Slicer baseline")
    bench.add_argument("--data", help="folder of MM-WHS label maps (*.nii.gz); default: seeded phantoms")
    bench.add_argument("--cases", type=int, help="number of cases (default: 3 phantoms, or every file in --data)")
    bench.add_argument("--steps", type=int, help="fit steps (default 150)")
    bench.add_argument("--spacing-mm", type=float,
                       help="voxel size, mm, the --data label maps are subsampled to (default 2)")
    bench.add_argument("--quick", action="store_true", help="one small phantom, short fits: a smoke test, not the figures")
    bench.add_argument("--json", help="also write the rows to this JSON file")
    bench.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    bench.set_defaults(handler=_cmd_bench_recon)
