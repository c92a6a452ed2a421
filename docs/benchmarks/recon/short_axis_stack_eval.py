"""Predict-mode networks on held-out synthetic images, dense and seen through a cine short-axis stack.

For each predictor given, the held-out MM-WHS label map ct_train_1012 is synthesised into images
with the evaluation seeds (:func:`cardiocore.recon.predict_eval.evaluate_on_synthetic`), once as
dense volumes (the default options, the figures of the model card) and once seen through a random
short-axis stack (``SynthOptions.short_axis_stack_prob = 1``: thick slices 8-20 mm apart across
the LV axis, as a cine study resampled onto the network grid); each in random and in bright-blood
MR-like contrast. Median Dice per structure, Chamfer and worst-rule VR over the images (resolved
meshes, no refinement). Known truth: the label map itself. About 1 minute per predictor and
setting on 2 CPU cores:

    .venv/bin/python docs/benchmarks/recon/short_axis_stack_eval.py [--images N] [MODEL ...]

Default: the bundled predictor only. Output kept: ``short-axis-stack-eval.txt`` beside this file.
"""

from __future__ import annotations

import argparse

import torch

from cardiocore.recon.predict import load_predictor
from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
from cardiocore.recon.synth import SynthOptions, load_cases

parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="*", help="predictor files (default: the bundled one)")
parser.add_argument("--images", type=int, default=6, help="images per setting (default 6)")
parser.add_argument("--labels", default="../shared/data/mmwhs_ct_labels/ct_train_1012_label.nii.gz")
args = parser.parse_args()

torch.set_num_threads(2)
case = load_cases([args.labels], "mmwhs")[0]
settings = {f"{view}, {contrast}": SynthOptions(contrast=contrast, short_axis_stack_prob=stack)
            for view, stack in (("dense", 0.0), ("short-axis stack", 1.0)) for contrast in ("random", "mr")}
for model in args.models or [None]:
    predictor = load_predictor(model, device="cpu")
    print(f"predictor {model or 'bundled'} ({predictor.card.get('date', '?')})")
    for name, options in settings.items():
        rows = evaluate_on_synthetic(predictor, [case], images_per_case=args.images, options=options)
        summary = summarise(rows, predictor.names)
        dice = ", ".join(f"{n} {summary[f'median_dice_{n}']:.3f}" for n in predictor.names)
        print(f"  {name:28s} Dice {dice}; Chamfer {summary['median_chamfer_mm']:.2f} mm; "
              f"max VR {summary['median_max_vr_percent']:.2f} %", flush=True)
