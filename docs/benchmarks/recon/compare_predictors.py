"""Score Predict networks side by side on the same held-out synthetic images.

Each model file is scored on 8 synthetic images (seed 1, i.e. other images than the 4 of
``cardio bench recon --held-out``) of MM-WHS ct_train_1012, resolved as Predict mode does; the
script prints the medians over images and the self-intersecting face pairs left per image.

    .venv/bin/python docs/benchmarks/recon/compare_predictors.py MODEL.pt [MODEL.pt ...]

``bundled`` stands for the bundled predictor. Output of the 1.1.0 / 1.2.0 comparison:
``compare-1.1.0-1.2.0.txt`` (1.1.0: ``git show f1127ef:Resources/Models/cardiorecon-whs-1.1.0.pt``).
"""

from __future__ import annotations

import sys

import torch

from cardiocore.recon.predict import MeshPredictor
from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
from cardiocore.recon.synth import load_cases

torch.set_num_threads(2)
cases = load_cases(["../shared/data/mmwhs_ct_labels/ct_train_1012_label.nii.gz"], "mmwhs")
for path in sys.argv[1:]:
    predictor = MeshPredictor.from_bundled(device="cpu") if path == "bundled" else MeshPredictor.load(path)
    rows = evaluate_on_synthetic(predictor, cases, images_per_case=8, seed=1)
    medians = {k.removeprefix("median_"): round(v, 3) for k, v in summarise(rows, predictor.names).items()}
    print(path, medians, "self-intersecting face pairs per image", [r["self_intersections"] for r in rows], flush=True)
