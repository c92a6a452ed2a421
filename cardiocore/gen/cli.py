"""``cardio gen train | sample | eval | interpolate`` and ``cardio bench gen``.

Models are named by a file (``model.pt`` from ``cardio gen train``) or a manifest name (bundled or
registered by the user); without ``--model`` the bundled default (``cardiogen-cap``) is used.
Cohorts (``--data``) are the CAP atlas file (``.npz``) or a folder of meshes in correspondence
whose file names carry the phase (``case01_ED.vtk``, ``case01_ES.vtk``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cardiocore.errors import CardioInputError
from cardiocore.gen.samplers import DEFAULT_FAST_STEPS, DEFAULT_SAMPLER, SAMPLERS

MESH_FORMATS = ("vtk", "vtp", "ply", "stl", "obj")


def load_model(name_or_path: str | None, device: str = "auto") -> Any:
    """A CardioGenModel from a file path, a manifest name (``NAME`` for its highest version,
    ``NAME@VERSION`` for one version, e.g. ``cardiogen-cap@1.0.0``), or (None) the bundled default."""
    from cardiocore.gen.model import BUNDLED_MODEL, CardioGenModel
    from cardiocore.train.device import select_device

    if name_or_path and Path(name_or_path).suffix == ".pt":
        return CardioGenModel.load(name_or_path, select_device(device))
    name, _, version = (name_or_path or BUNDLED_MODEL).partition("@")
    return CardioGenModel.from_bundled(name, version or None, device=device)


def load_cohort(data: str) -> Any:
    """A ShapeCohort from the CAP atlas file or a folder of meshes (phase in the file names)."""
    path = Path(data)
    if path.suffix == ".npz":
        from cardiocore.gen.data import load_cap_atlas

        return load_cap_atlas(path)
    if path.is_dir():
        from cardiocore.mrml.mesh_folders import cohort_from_folder

        return cohort_from_folder(path)
    raise CardioInputError(str(path), "is neither a CAP atlas .npz file nor a folder of meshes")


def _progress_printer(mode: str) -> Any:
    if mode != "json":
        return None

    def report(stage: str, step: int, total: int, metrics: Mapping[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        print(json.dumps({"stage": stage, "step": step, "total": total, "metrics": values}), flush=True)

    return report


def _cmd_train(args: argparse.Namespace) -> int:
    from cardiocore.gen.training import GenTrainingSpec, train_cardiogen

    cohort = load_cohort(args.data)
    spec = GenTrainingSpec.tiny() if args.tiny else GenTrainingSpec()
    spec = spec.scaled(args.steps_scale) if args.steps_scale != 1.0 else spec
    spec.device = args.device
    spec.seed = args.seed
    spec.align = args.align
    if args.models:
        spec.models = tuple(args.models)
    result = train_cardiogen(
        cohort, args.out, spec, name=args.name, data_description=args.data_description or str(args.data),
        data_license=args.data_license, resume=args.resume, overwrite=args.overwrite,
        progress=_progress_printer(args.progress),
        vae_from=load_model(args.vae_from, "cpu") if args.vae_from else None,
    )
    if result.stopped:
        print(f"training stopped; resume with the same command and --resume (checkpoints in {args.out})")
        return 130
    print(f"model written to {result.model_path}")
    print(json.dumps(result.metrics, indent=2))
    if args.register:
        from cardiocore.weights import register_user_model

        entry = register_user_model(
            result.model_path, name=args.name, version=args.version, task="generation",
            training_data=result.model.card["training_data"], data_license=args.data_license or "unknown",
            metrics=result.metrics,
        )
        print(f"registered as {entry['name']} {entry['version']}")
    return 0


def write_clinical_csv(path: Path, names: list[str], columns: Mapping[str, Any]) -> None:
    """One row per mesh: its file name and every clinical column (units in the column names), atomically."""
    from cardiocore.train.atomic import atomic_write

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", *columns])
    for row, name in enumerate(names):
        writer.writerow([name, *(f"{float(values[row]):.4f}" for values in columns.values())])
    with atomic_write(path) as stream:
        stream.write(text.getvalue().encode())


def _write_meshes(model: Any, meshes: Any, out: Path, stem: str, fmt: str, overwrite: bool) -> list[str]:
    """Meshes as ``out/<stem>_<i>.<fmt>`` with the region array, then ``out/clinical.csv``;
    nothing is written when any target exists and ``overwrite`` is off."""
    from cardiocore.mrml.mesh_folders import region_labels, write_mesh_folder

    if (out / "clinical.csv").exists() and not overwrite:
        raise CardioInputError(str(out / "clinical.csv"), "already exists", "pass --overwrite or choose another folder")

    width = max(4, len(str(len(meshes))))
    names = [f"{stem}_{i:0{width}d}" for i in range(len(meshes))]
    faces = model.faces.numpy()
    point_data = {"region": region_labels(model.regions, model.n_vertices)}
    paths = write_mesh_folder(
        out, [(n, m.numpy(), faces) for n, m in zip(names, meshes)], fmt=fmt, overwrite=overwrite,
        point_data=point_data,
    )
    files = [p.name for p in paths]
    write_clinical_csv(out / "clinical.csv", files, model.clinical(meshes))
    return files


def _cmd_sample(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.device)
    conditions = {k: v for k, v in (("EDV_ml", args.edv), ("EF_percent", args.ef)) if v is not None}
    meshes = model.sample(
        args.n, args.phase, seed=args.seed, steps=args.steps, sampler=args.sampler,
        conditions=conditions or None, guidance_scale=args.guidance,
    )
    out = Path(args.out)
    files = _write_meshes(model, meshes, out, f"lv_{args.phase}", args.format, args.overwrite)
    print(f"{len(files)} meshes and clinical.csv written to {out}")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from cardiocore.mrml.mesh_folders import read_mesh_file

    model = load_model(args.model, args.device)
    ends = [model.template_vertices(*read_mesh_file(path), name=path) for path in (args.start, args.end)]
    meshes = model.interpolate(ends[0], ends[1], args.n, names=(args.start, args.end))
    out = Path(args.out)
    files = _write_meshes(model, meshes, out, "frame", args.format, args.overwrite)
    print(f"{len(files)} interpolated meshes written to {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cardiocore.train.atomic import write_json

    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise CardioInputError(str(out / "metrics.json"), "already exists", "pass --overwrite or choose another folder")
    if args.generated:
        from cardiocore.gen.evaluate import format_report
        from cardiocore.mrml.gen import evaluate_folder_meshes

        if not args.reference:
            raise CardioInputError("--reference", "is needed with --generated (a folder of real meshes)")
        if args.real_baseline:
            raise CardioInputError("--real-baseline", "needs a model and --data (its training split), not --generated")
        result = evaluate_folder_meshes(args.generated, args.reference)
    else:
        from cardiocore.gen.evaluate import evaluate_model, format_report

        if not args.data:
            raise CardioInputError("--data", "is needed to evaluate a model (the cohort it was trained on)")
        model = load_model(args.model, args.device)
        parts = model.splits_of(load_cohort(args.data))
        held_out = parts[-1] if args.split == "test" else parts[1]
        if len(held_out) == 0:
            raise CardioInputError("--split", f"the model's {args.split} split of {args.data} is empty")
        result = evaluate_model(
            model, held_out, training_cohort=parts[0], n_generated=args.n, seed=args.seed, steps=args.steps,
            sampler=args.sampler, plots_dir=out, overwrite=args.overwrite, progress=print,
            real_baseline=args.real_baseline,
        )
        result["settings"]["split"] = args.split
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    print(format_report(result))
    print(f"metrics written to {out / 'metrics.json'}")
    return 0


def held_out_references(model: Any, data: str, count: int = 0) -> Any:
    """ED shapes (R, V, 3) mm of the model's held-out test split of ``data``: all of them
    (``count`` 0) or a seeded choice of ``count``, kept in split order."""
    from cardiocore.gen.evaluate import equal_size

    if count < 0:
        raise CardioInputError("--references", f"must be 0 (all) or a positive count, got {count}")
    test_ed = model.splits_of(load_cohort(data))[-1].phase("ED").verts
    return equal_size(test_ed, test_ed[:count])[0] if count else test_ed  # equal_size: seeded, order kept


def _cmd_bench_gen(args: argparse.Namespace) -> int:
    from cardiocore.bench.gen import format_gen_rows, run_gen_benchmarks

    model = load_model(args.model, args.device)
    reference = held_out_references(model, args.data, args.references) if args.data else None
    rows = run_gen_benchmarks(model, reference, n=args.n, device=args.device, quick=args.quick,
                              nna_sets=args.nna_sets)
    print(format_gen_rows(rows))
    if args.json:
        from cardiocore.train.atomic import write_json

        write_json(args.json, rows)
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model.pt file, manifest name or NAME@VERSION (default: the bundled "
                                         "cardiogen-cap, highest version)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, mps")


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=DEFAULT_FAST_STEPS,
                        help=f"sampling steps (default {DEFAULT_FAST_STEPS}; ddpm uses all)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help=f"default {DEFAULT_SAMPLER}")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=MESH_FORMATS, default="vtk", help="mesh file format (default vtk)")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in --out")


def add_gen_commands(commands: Any) -> None:
    """Register ``cardio gen ...`` on the top-level subparsers."""
    gen = commands.add_parser("gen", help="CardioGen: LV meshes at ED/ES from latent diffusion")
    verbs = gen.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train the VAE and the latent diffusion models on a cohort")
    train.add_argument("--data", required=True, help="CAP atlas .npz or folder of meshes (*_ED.vtk, *_ES.vtk)")
    train.add_argument("--out", required=True, help="folder for checkpoints and model.pt")
    train.add_argument("--name", default="cardiogen-user", help="model name (card, manifest)")
    train.add_argument("--version", default="1.0.0", help="version recorded with --register")
    train.add_argument("--models", nargs="+", choices=("ED", "ES", "conditional"), help="default: all three")
    train.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (e.g. 0.1 to try)")
    train.add_argument("--tiny", action="store_true", help="a seconds-long run with a small network (smoke test)")
    train.add_argument(
        "--seed", type=int, default=0,
        help="seed of weight initialisation and batch order (default 0); the split keeps its own seed, so runs "
        "with different seeds hold out the same subjects",
    )
    train.add_argument(
        "--align", action="store_true",
        help="move every subject rigidly (ED and ES together) onto the Procrustes mean of the training subjects "
        "first: for meshes that lie in their own frames, e.g. each patient's scanner frame (training warns when "
        "they seem to); generated meshes then come out in the first training subject's frame",
    )
    train.add_argument("--data-description", default="", help="training data, for the model card")
    train.add_argument("--data-license", default="", help="license of the training data, for the model card")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    train.add_argument("--register", action="store_true", help="add the model to the user's model list")
    train.add_argument(
        "--vae-from", metavar="MODEL",
        help="keep this model's VAE (model.pt or a model name, e.g. cardiogen-cap) and train only the diffusion "
        "models, on the cohort and split it was trained on",
    )
    train.add_argument("--progress", choices=("bar", "json"), default="bar", help="json: one line per step")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, mps")
    train.set_defaults(handler=_cmd_train)

    sample = verbs.add_parser("sample", help="generate meshes and their clinical indices")
    _model_options(sample)
    sample.add_argument("--phase", choices=("ED", "ES"), default="ED", help="cardiac phase (default ED)")
    sample.add_argument("--n", type=int, default=10, help="number of meshes (default 10)")
    sample.add_argument("--edv", type=float, help="target end-diastolic volume, ml (conditional model)")
    sample.add_argument("--ef", type=float, help="target ejection fraction, %% (conditional model)")
    sample.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    _sampling_options(sample)
    _output_options(sample)
    sample.set_defaults(handler=_cmd_sample)

    interpolate = verbs.add_parser(
        "interpolate", help="latent interpolation between two meshes of the template's topology, in mm, "
                            "wherever they lie (the frames move rigidly from the first's place to the second's)")
    _model_options(interpolate)
    interpolate.add_argument("--from", dest="start", required=True, help="first mesh file (template topology)")
    interpolate.add_argument("--to", dest="end", required=True, help="last mesh file")
    interpolate.add_argument("--n", type=int, default=10, help="number of frames, ends included (default 10)")
    _output_options(interpolate)
    interpolate.set_defaults(handler=_cmd_interpolate)

    evaluate = verbs.add_parser("eval", help="1-NNA, COV, MMD, reconstruction and clinical distributions")
    _model_options(evaluate)
    evaluate.add_argument("--data", help="cohort the model was trained on (its held-out test split is used)")
    evaluate.add_argument("--generated", help="folder of generated meshes (instead of a model)")
    evaluate.add_argument("--reference", help="folder of real meshes to compare --generated with")
    evaluate.add_argument("--n", type=int, help="generated meshes per phase (default: the test set size); "
                                                "on a CPU each mesh costs ~0.1 s of clinical indices")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="held-out split of --data to evaluate on (default test; val: the validation "
                               "subjects, e.g. to choose between runs without looking at the test split)")
    evaluate.add_argument("--real-baseline", action="store_true",
                          help="also score as many real training shapes against the test shapes: the 1-NNA, COV "
                               "and MMD of a perfect generator at this set size (diagnostic; ~1.7x the 1-NNA time)")
    evaluate.add_argument("--out", required=True, help="folder for metrics.json and the PNG plots")
    evaluate.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    _sampling_options(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)


def add_gen_bench(suites: Any) -> None:
    """Register ``cardio bench gen``."""
    bench = suites.add_parser("gen", help="sampling 1,000 meshes: fast samplers vs 1000-step DDPM, with 1-NNA")
    _model_options(bench)
    bench.add_argument("--data", help="cohort for the 1-NNA reference (its held-out ED split)")
    bench.add_argument("--n", type=int, default=1000, help="meshes per timing (default 1000)")
    bench.add_argument("--references", type=int, default=150,
                       help="test ED shapes in the 1-NNA reference, a seeded choice (default 150, so 1,000 meshes "
                            "hold 6 sets; 0: all)")
    bench.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not the figures")
    bench.add_argument("--nna-sets", type=int, default=None,
                       help="at most this many disjoint sets of generated meshes whose 1-NNA is averaged "
                            "(default: every set the --n meshes hold, 6 of 150 at 1,000)")
    bench.add_argument("--json", help="also write the rows to this JSON file")
    bench.set_defaults(handler=_cmd_bench_gen)

