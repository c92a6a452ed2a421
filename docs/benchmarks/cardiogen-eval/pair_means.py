"""Clinical means and SD ratios of many CardioGen virtual subjects against the training and test splits.

Volumes only, batched, with the definitions of `cardio gen eval` (cavity enclosed by the
endocardium with its base closed, myocardial mass from the epicardium's volume minus the cavity at
1.05 g/ml, EF from each pair), leaving out the per-mesh wall thickness that makes the evaluation
slow. Run from the repository root:

    .venv/bin/python docs/benchmarks/cardiogen-eval/pair_means.py MODEL [N] [SAMPLER] [STEPS]

MODEL is a model.pt, a manifest name or NAME@VERSION ("bundled": the bundled default; the lines of
pair_means.txt marked "bundled" were 1.0.0, now ``cardiogen-cap@1.0.0``). Output of 2026-12-06:
pair_means.txt beside this file, stratified-retrain/pair_means.txt, cap-1.1.0/pair_means.txt.
"""

import sys

import numpy as np
import torch

from cardiocore.gen.data import load_cap_atlas
from cardiocore.gen.cli import load_model
from cardiocore.gen.training import split_as_recorded

torch.set_num_threads(2)
name = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 6000
sampler = sys.argv[3] if len(sys.argv) > 3 else "plms"
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
model = load_model(None if name == "bundled" else name, "cpu")
model.eval()
cohort = load_cap_atlas("../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz")
train, _, test = split_as_recorded(cohort, model.card["split"])

with torch.no_grad():
    generated = model.pair_volume_indices(*model.sample_pairs(n, seed=11, steps=steps, sampler=sampler))
for part_name, part in (("train", train), ("test", test)):
    real = model.pair_volume_indices(part.phase("ED").verts, part.phase("ES").verts)
    print(f"{name} {sampler}-{steps}, {n} subjects vs the {part_name} split ({len(real['EDV'])}): " + "  ".join(
        f"{key} {np.mean(generated[key]) / np.mean(real[key]) * 100 - 100:+.2f} % (SD ratio "
        f"{np.std(generated[key], ddof=1) / np.std(real[key], ddof=1):.2f})" for key in generated
    ))
