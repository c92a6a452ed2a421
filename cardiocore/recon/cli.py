"""``cardio recon fit | predict | train | eval`` and ``cardio bench recon``.

Label maps (``--labels``) are NIfTI files (``.nii``/``.nii.gz``, read with ``nibabel``) or
``.npz`` files holding ``labels`` and ``ijk_to_ras``; ``--structures`` names their label coding:
``default`` (phantom labels 1..7), ``mmwhs`` (205, 420, 500, 550, 600, 820, 850),
``mmwhs-reindexed`` or a rule-set JSON file (:mod:`cardiocore.recon.rules`). Mesh folders hold
one ``<structure>.vtk`` per structure in RAS mm (Slicer's file conventions on disk).

``cardio recon train`` takes several label maps, each ``FILE`` in the ``--structures`` coding or
``FILE@CODING`` with its own; ``--eval-labels`` are held out and scored on synthetic images at the
end. ``cardio recon predict`` runs a trained network (default: the bundled one) on an image.
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
    if metrics.get("thick_slice_axis") is not None:
        print(f"thick slices (voxel axis {metrics['thick_slice_axis']}): fitted on the slice planes; the surface "
              "between them follows the template")
    if metrics.get("missing"):
        print(f"not fitted (no or too few voxels): {', '.join(metrics['missing'])}")
    seconds = metrics.get("seconds", {}).get("total")
    print(f"meshes, meshes.seg.nrrd and metrics.json written to {out}"
          + (f" in {seconds:.1f} s" if seconds is not None else ""))


def _report(fraction: float, message: str) -> None:
    """Progress of a fit or prediction on stdout."""
    print(f"{100 * fraction:5.1f} % {message}", flush=True)


def _cmd_fit(args: argparse.Namespace) -> int:
    from cardiocore.mrml.recon import fit_label_file

    metrics = fit_label_file(args.labels, args.out, structures=args.structures, steps=args.steps,
                             device=args.device, overwrite=args.overwrite, progress=_report, view_paths=args.views,
                             view_structures=_view_structures(args.view_structures, len(args.views)))
    for warning in metrics["warnings"]:
        print(f"warning: {warning}")
    _print_fit_summary(metrics, Path(args.out))
    return 0


def _view_structures(specs: list[str], n_views: int) -> list[list[str] | None]:
    """``--view-structures`` entries (``all`` or comma-separated names), one per ``--views`` file."""
    if specs and len(specs) != n_views:
        raise CardioInputError("--view-structures", f"has {len(specs)} entries for {n_views} --views files",
                               "give one entry per view, 'all' for a view that annotates every structure")
    return [None if spec == "all" else [name.strip() for name in spec.split(",") if name.strip()] for spec in specs]


def _cmd_predict(args: argparse.Namespace) -> int:
    from cardiocore.mrml.recon import predict_image_file

    metrics = predict_image_file(args.image, args.out, model=args.model, structures=args.structures,
                                 labels_path=args.labels, device=args.device, overwrite=args.overwrite,
                                 centre_ras=args.centre, refine_steps=args.refine_steps, progress=_report)
    for warning in metrics["warnings"]:
        print(f"warning: {warning}")
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
    from cardiocore.geometry.grid import checked_label_values
    from cardiocore.recon.evaluate import ROW_COLUMNS, evaluate_meshes
    from cardiocore.recon.rules import resolve_rule_set
    from cardiocore.mrml.storage import read_node
    from cardiocore.mrml.volumes import volume_to_array
    from cardiocore.train.atomic import write_json

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CardioInputError(str(out), "already exists", "pass --overwrite or choose another file")
    rules = resolve_rule_set(args.structures)
    labels, ijk_to_ras = volume_to_array(read_node(args.labels, kind="labelmap"))  # the reader `recon fit` uses
    checked_label_values(labels, str(args.labels))
    meshes = _read_structure_meshes(Path(args.meshes), rules.names)
    label_of = {s.name: s.label for s in rules.structures}
    metrics = evaluate_meshes(meshes, labels, ijk_to_ras, label_of, rules)
    print(format_table(metrics.rows(), ROW_COLUMNS))
    if metrics.missing:
        print(f"no mesh for: {', '.join(metrics.missing)}")
    report = {"labels": str(args.labels), "meshes": str(args.meshes)} | metrics.to_dict()
    write_json(out, report)
    print(f"metrics written to {out}")
    return 0


def _split_coding(item: str, default: str) -> tuple[str, str]:
    """``FILE@CODING`` -> (FILE, CODING); a bare FILE gets ``default``."""
    path, _, coding = item.rpartition("@") if "@" in item else (item, "", default)
    return path, coding or default


def _load_cases(items: list[str], default: str, spacing_mm: float) -> list[Any]:
    from cardiocore.recon.synth import load_cases

    cases = []
    for item in items:
        path, coding = _split_coding(item, default)
        cases.extend(load_cases([path], coding, spacing_mm=spacing_mm))
    return cases


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
    from cardiocore.recon.predict_net import PredictNetSpec
    from cardiocore.recon.predict_train import (
        DEFAULT_DILATE,
        DEFAULT_DILATE_RANGE,
        PredictTrainingSpec,
        train_predictor,
    )
    from cardiocore.recon.template import load_template
    from cardiocore.train.atomic import write_json

    if not 0.0 <= args.short_axis_stacks <= 1.0:
        raise CardioInputError("--short-axis-stacks", f"is a probability in [0, 1], got {args.short_axis_stacks:g}")
    net = PredictNetSpec(grid_size=args.grid_size, spacing_mm=args.spacing_mm)
    spec = PredictTrainingSpec(net=net, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                               init=args.init or "", init_template=not (args.init and args.template),
                               device=args.device)
    if args.elastic_mm is not None:
        spec.options = dataclasses.replace(spec.options, elastic_mm=args.elastic_mm)
    if args.no_mie:
        spec.weights = dataclasses.replace(spec.weights, mie=0.0)
    cases = _load_cases(args.labels, args.structures, args.case_spacing_mm)
    held_out = _load_cases(args.eval_labels or [], args.structures, args.case_spacing_mm)
    dilate = (tuple(args.dilate) if args.dilate is not None
              else tuple(n for n in DEFAULT_DILATE if all(n in case.names for case in cases)))
    spec.options = dataclasses.replace(spec.options, dilate=dilate,
                                       dilate_range=tuple(args.dilate_range or DEFAULT_DILATE_RANGE),
                                       short_axis_stack_prob=args.short_axis_stacks)
    print(f"training on {len(cases)} label maps: {', '.join(c.name for c in cases)}", flush=True)

    def report(step: int, total: int, metrics: dict[str, float]) -> None:
        if step % max(1, total // 100) == 0 or step == total:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(metrics.items()))
            print(f"step {step}/{total}: {shown}", flush=True)

    trained = train_predictor(cases, load_template(args.template), args.out, spec, name=args.name,
                              data_description=args.data_description or "", data_license=args.data_license or "",
                              resume=args.resume, overwrite=args.overwrite, progress=report)
    print(f"model written to {trained.model_path} after {trained.result.step} steps")
    if held_out:
        rows = evaluate_on_synthetic(trained.predictor, held_out, images_per_case=args.eval_images, seed=args.seed,
                                     progress=print)
        summary = summarise(rows, trained.predictor.names)
        trained.predictor.card["held_out"] = {"cases": [c.name for c in held_out], "images_per_case": args.eval_images,
                                              **summary}
        trained.predictor.save(trained.model_path, overwrite=True)
        write_json(Path(args.out) / "held_out.json", {"rows": rows, "summary": summary})
        print(json.dumps(summary, indent=2))
    return 0


def _bench_predict(args: argparse.Namespace) -> dict[str, Any]:
    """The Predict-mode part of ``cardio bench recon``: speed/memory rows, held-out accuracy."""
    from cardiocore.bench.recon import format_table
    from cardiocore.bench.recon_predict import predict_accuracy_rows, predict_speed_rows
    from cardiocore.recon.predict import load_predictor
    from cardiocore.recon.synth import CONTRASTS

    if args.contrast not in CONTRASTS:
        raise CardioInputError("--contrast", f"unknown intensity model {args.contrast!r}",
                               f"choose one of {', '.join(CONTRASTS)}")
    predictor = load_predictor(args.model, args.device)
    print(f"Predict mode: model {args.model or 'bundled'} on {next(predictor.net.parameters()).device}")
    variants = [0] + ([args.refine_steps] if args.refine_steps > 0 else [])
    speed = [row for steps in variants
             for row in predict_speed_rows(predictor, large=not args.quick, refine_steps=steps)]
    print(format_table(speed, ("input", "refine_steps", "device", "threads", "median_s", "target_s", "meets",
                               "input_mb", "peak_rss_growth_mb", "resample_s", "network_s", "refine_s", "resolve_s")))
    report: dict[str, Any] = {"predict_speed": speed}
    if args.held_out:
        cases = _load_cases(args.held_out, "default", args.case_spacing_mm)
        for steps in variants:
            rows, summary = predict_accuracy_rows(predictor, cases, images_per_case=args.eval_images,
                                                  refine_steps=steps, contrast=args.contrast)
            dice_columns = [f"dice_{n}" for n in predictor.names]
            print(format_table(rows, ("case", "image", *dice_columns, "chamfer_mm", "max_vr_percent", "seconds")))
            print(format_table([summary], ("case", "contrast", "refine_steps", "worst_chamber_dice", "dice_target", "meets",
                                           "median_dice_lv_myocardium", "median_chamfer_mm", "median_max_vr_percent")))
            report["predict_held_out_refined" if steps else "predict_held_out"] = {"rows": rows, "summary": summary}
    return report


def _cmd_bench_recon(args: argparse.Namespace) -> int:
    from cardiocore.bench.recon import (
        MMWHS_SPACING_MM,
        format_recon_rows,
        mmwhs_cases,
        phantom_cases,
        run_recon_benchmarks,
    )
    from cardiocore.train.atomic import write_json

    report: dict[str, Any] = {}
    if not args.predict_only:
        if args.quick:
            cases = []
        elif args.data:
            cases = mmwhs_cases(args.data, spacing_mm=args.spacing_mm or MMWHS_SPACING_MM, n=args.cases)
        else:
            cases = phantom_cases(args.cases or 3)
        rows = run_recon_benchmarks(cases, steps=args.steps, device=args.device, quick=args.quick, progress=print)
        print(format_recon_rows(rows))
        report["ablation"] = rows
    if args.predict or args.predict_only:
        report |= _bench_predict(args)
    if args.json:
        write_json(args.json, report)
    return 0


def add_recon_commands(commands: Any) -> None:
    """Register ``cardio recon fit | predict | train | eval`` on the top-level subparsers."""
    recon = commands.add_parser("recon", help="CardioReconstruct: multi-chamber heart meshes from a label map or an image")
    verbs = recon.add_subparsers(dest="verb", required=True)

    fit = verbs.add_parser("fit", help="deform the bundled template to a label map (no training)")
    fit.add_argument("--labels", required=True, help="label map (.nii, .nii.gz, or .npz with labels, ijk_to_ras)")
    fit.add_argument("--views", nargs="+", default=[], metavar="FILE",
                     help="more label maps of the same heart on their own grids, coded like --labels "
                          "(e.g. long-axis slices next to a short-axis stack)")
    fit.add_argument("--view-structures", nargs="+", default=[], metavar="NAMES",
                     help="per --views file, the structures it annotates: 'all' (the default) or comma-separated "
                          "names (e.g. rv for an RVOT view whose LV was not outlined); one not annotated is "
                          "unknown on that view's planes instead of background")
    fit.add_argument("--structures", default="default", help=STRUCTURES_HELP)
    fit.add_argument("--steps", type=int, default=150, help="optimisation steps (default 150)")
    fit.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    fit.add_argument("--out", required=True, help="output folder (<structure>.vtk, meshes.seg.nrrd, metrics.json)")
    fit.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    fit.set_defaults(handler=_cmd_fit)

    predict = verbs.add_parser("predict", help="predict the meshes from a CT or MR image with a trained network")
    predict.add_argument("--image", required=True, help="CT or MR image (.nrrd, .nii, .nii.gz)")
    predict.add_argument("--out", required=True, help="output folder (<structure>.vtk, meshes.seg.nrrd, metrics.json)")
    predict.add_argument("--model", help="predictor file from cardio recon train (default: the bundled model)")
    predict.add_argument("--labels", help="optional reference label map: Dice, HD95 and Chamfer against it")
    predict.add_argument("--structures", default="default", help=STRUCTURES_HELP + "; the coding of --labels")
    predict.add_argument("--centre", nargs=3, type=float, metavar=("R", "A", "S"),
                         help="RAS mm centre of the network's field of view (default: the image centre)")
    predict.add_argument("--refine-steps", type=int, default=0, metavar="N",
                         help="refine the meshes against the network's own segmentation for N fit steps "
                              "(default 0: off; 60 takes about 8 s on 2 CPU cores)")
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    predict.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    predict.set_defaults(handler=_cmd_predict)

    evaluate = verbs.add_parser("eval", help="Dice, HD95, Chamfer, VR/SVR per rule, LSE, watertightness")
    evaluate.add_argument("--meshes", required=True, help="folder with one <structure>.vtk per structure")
    evaluate.add_argument("--labels", required=True, help="label map (.nii, .nii.gz, or .npz with labels, ijk_to_ras)")
    evaluate.add_argument("--structures", default="default", help=STRUCTURES_HELP)
    evaluate.add_argument("--out", required=True, help="JSON file for the figures")
    evaluate.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    evaluate.set_defaults(handler=_cmd_eval)

    train = verbs.add_parser("train", help="train the Predict-mode network on synthetic images of label maps")
    train.add_argument("--labels", nargs="+", required=True,
                       help="training label maps: FILE (coded as --structures) or FILE@CODING")
    train.add_argument("--structures", default="default", help=STRUCTURES_HELP)
    train.add_argument("--eval-labels", nargs="*", help="held-out label maps scored on synthetic images at the end")
    train.add_argument("--eval-images", type=int, default=4, help="synthetic images per held-out label map (default 4)")
    train.add_argument("--out", required=True, help="output folder (model.pt, checkpoints/, held_out.json)")
    train.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    train.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--grid-size", type=int, default=64, help="network grid, voxels per side (default 64)")
    train.add_argument("--spacing-mm", type=float, default=3.0, help="network grid spacing, mm (default 3)")
    train.add_argument("--case-spacing-mm", type=float, default=1.0,
                       help="label maps are subsampled to this spacing for synthesis, mm (default 1)")
    train.add_argument("--template", help="template .npz (default: the bundled one; with --init, the initial "
                                          "network's own template unless this is given)")
    train.add_argument("--no-mie", action="store_true", help="train without the MIE term (ablation)")
    train.add_argument("--elastic-mm", type=float,
                       help="SD of the random smooth shape deformation of the label maps, mm (default 4; 0: none)")
    train.add_argument("--dilate", nargs="*", metavar="STRUCTURE",
                       help="structures scaled about their centroids by random factors (dilated or contracted "
                            "chambers); default: lv_cavity and rv where the rule set has them; "
                            "--dilate with no names: no scaling")
    train.add_argument("--dilate-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                       help="range of those scale factors (radius; log-uniform; default 0.85 1.65)")
    train.add_argument("--short-axis-stacks", type=float, default=0.0, metavar="P",
                       help="share of the training images shown only as a cine short-axis stack would show "
                            "them (thick slices 8-20 mm apart across the LV axis; default 0)")
    train.add_argument("--init", help="start from a trained predictor: 'bundled' or a model file (fine-tuning); "
                                      "default: seeded random weights")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--name", default="user", help="model name for the model card")
    train.add_argument("--data-description", help="training data, for the model card")
    train.add_argument("--data-license", help="licence of the training data, for the model card")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace a model or checkpoints in --out")
    train.set_defaults(handler=_cmd_train)


def add_recon_bench(suites: Any) -> None:
    """Register ``cardio bench recon``."""
    bench = suites.add_parser("recon", help="fit ablation (MIE, surface only, occupancy only) vs the Slicer baseline")
    bench.add_argument("--data", help="folder of MM-WHS label maps (*.nii.gz); default: seeded phantoms")
    bench.add_argument("--cases", type=int, help="number of cases (default: 3 phantoms, or every file in --data)")
    bench.add_argument("--steps", type=int, help="fit steps (default 150)")
    bench.add_argument("--spacing-mm", type=float,
                       help="voxel size, mm, the --data label maps are subsampled to (default 2)")
    bench.add_argument("--quick", action="store_true", help="one small phantom, short fits: a smoke test, not the figures")
    bench.add_argument("--predict", action="store_true", help="also time Predict mode (128^3 and 512x512x300 inputs)")
    bench.add_argument("--predict-only", action="store_true", help="only the Predict-mode figures, no ablation")
    bench.add_argument("--model", help="Predict model file (default: the bundled one)")
    bench.add_argument("--held-out", nargs="*",
                       help="held-out label maps (FILE@CODING) scored on synthetic images by the Predict model")
    bench.add_argument("--eval-images", type=int, default=4, help="synthetic images per held-out label map (default 4)")
    bench.add_argument("--refine-steps", type=int, default=0, metavar="N",
                       help="also measure Predict refined against the network's segmentation for N steps "
                            "(default 0: not)")
    bench.add_argument("--contrast", default="random",
                       help="intensity model of the held-out synthetic images: random per label (default), "
                            "contrast CT-like or bright-blood MR-like")
    bench.add_argument("--case-spacing-mm", type=float, default=1.0, help="held-out label maps are subsampled to this, mm")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    bench.set_defaults(handler=_cmd_bench_recon)
