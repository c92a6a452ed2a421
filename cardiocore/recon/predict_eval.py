"""Held-out evaluation of a Predict-mode network on synthetic images of label maps.

For each label map and image: a synthetic image with a random pose and contrast
(:func:`cardiocore.recon.synth.synthesize_sample`, seeds disjoint from training's), the
network's meshes mapped to RAS and finished as Predict mode does
(:func:`cardiocore.recon.predict.finish_meshes`: refined against the network's segmentation
when ``refine_steps`` > 0, resolved unless ``resolve=False``), and
:func:`cardiocore.recon.evaluate.evaluate_meshes` against the label map (Dice, HD95, Chamfer, VR
per rule, self-intersections). The figures are therefore on
images the network never saw; they are held out by label map only when the label maps are.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cardiocore.recon.evaluate import evaluate_meshes
from cardiocore.recon.predict import MeshPredictor, finish_meshes, run_network
from cardiocore.recon.refine import DECODER_VOTE
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import LabelCase, SynthOptions, synthesize_sample

EVAL_SEED_OFFSET = 104_729
"""Added to the evaluation seed so its images differ from the training and validation ones."""


def evaluate_on_synthetic(
    predictor: MeshPredictor,
    cases: Sequence[LabelCase],
    images_per_case: int = 4,
    seed: int = 0,
    options: SynthOptions | None = None,
    vr_points: int = 20_000,
    resolve: bool = True,
    refine_steps: int = 0,
    decoder_vote: float = DECODER_VOTE,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per image: ``case``, ``image``, ``dice_<structure>``, ``hd95_mm_<structure>``,
    ``chamfer_mm`` (mean over structures), ``max_vr_percent``, ``self_intersections`` (sum),
    ``seconds`` (network, refinement and resolution time). ``refine_steps`` and ``decoder_vote``:
    :func:`cardiocore.recon.predict.finish_meshes`."""
    spec = predictor.spec
    rules = RuleSet.default().subset(predictor.names)
    label_of = {name: s + 1 for s, name in enumerate(predictor.names)}
    rows = []
    for c, case in enumerate(cases):
        for k in range(images_per_case):
            generator = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed * 10_007 + c * 101 + k)
            sample = synthesize_sample(case, spec.grid_size, spec.spacing_mm, generator, options or SynthOptions())
            start = time.perf_counter()
            output = run_network(predictor, sample.image, sample.frame_to_ras)
            present = [n for n in predictor.names if case.surfaces[label_of[n] - 1].shape[0] > 0]
            meshes = finish_meshes(predictor, output, present, refine_steps=refine_steps, decoder_vote=decoder_vote,
                                   resolve=resolve).meshes
            seconds = time.perf_counter() - start
            metrics = evaluate_meshes(dict(zip(present, meshes, strict=True)), case.index, case.ijk_to_ras, label_of,
                                      rules, vr_points=vr_points)
            row: dict[str, Any] = {"case": case.name, "image": k}
            for name, values in metrics.structures.items():
                row[f"dice_{name}"] = values.dice
                row[f"hd95_mm_{name}"] = values.hd95_mm
            row["chamfer_mm"] = statistics.fmean(v.chamfer_mm for v in metrics.structures.values())
            row["max_vr_percent"] = 100 * max((r.vr for r in metrics.rules), default=0.0)
            row["self_intersections"] = sum(v.self_intersections for v in metrics.structures.values())
            row["seconds"] = seconds
            rows.append(row)
            if progress:
                dice = ", ".join(f"{n} {row[f'dice_{n}']:.3f}" for n in metrics.structures)
                progress(f"{case.name} image {k}: Dice {dice}")
    return rows


def summarise(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """Medians over images of every per-structure Dice and the mean Chamfer, max VR and time."""
    summary: dict[str, float] = {}
    for key in [f"dice_{n}" for n in names] + ["chamfer_mm", "max_vr_percent", "seconds"]:
        values = [r[key] for r in rows if key in r]
        if values:
            summary[f"median_{key}"] = float(statistics.median(values))
    return summary
