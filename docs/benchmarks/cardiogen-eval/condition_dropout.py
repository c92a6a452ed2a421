"""How the conditional model's condition dropout sets the spread of ES given EDV (the EF SD ratio).

Retrains only the conditional diffusion model on a trained model's VAE (its cohort and split) with
the given condition dropout, puts it into a copy of that model and measures 6,000 virtual
subjects (PLMS-20, seed 11) against the training and test splits as ``pair_means.py`` does, plus
the residual SD of ESV about the real ESV-on-EDV regression line. Run from the repository root:

    .venv/bin/python docs/benchmarks/cardiogen-eval/condition_dropout.py MODEL DROPOUT OUTDIR

MODEL is a model.pt or "bundled". Output of 2026-12-06 (condition_dropout.txt): MODEL was the three
diffusion models retrained with the moving average on cardiogen-cap 1.0.0's VAE (dropout 0.1),
and dropouts 0.3 and 0.5 replaced its conditional model; ~4 min each on 2 CPU cores.
"""

import dataclasses
import sys

import numpy as np
import torch

from cardiocore.gen.data import load_cap_atlas
from cardiocore.gen.model import CardioGenModel
from cardiocore.gen.training import GenTrainingSpec, split_as_recorded, train_cardiogen

torch.set_num_threads(2)
name, dropout, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
model = CardioGenModel.from_bundled(device="cpu") if name == "bundled" else CardioGenModel.load(name)
model.eval()
cohort = load_cap_atlas("../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz")
spec = dataclasses.replace(GenTrainingSpec(), condition_dropout=dropout, models=("conditional",))
trained = train_cardiogen(cohort, out, spec, vae_from=model, progress=lambda *a: None, resume=True)
model.diffusion["conditional"] = trained.model.diffusion["conditional"].eval()
train, _, test = split_as_recorded(cohort, model.card["split"])

with torch.no_grad():
    generated = model.pair_volume_indices(*model.sample_pairs(6000, seed=11, steps=20, sampler="plms"))
for part_name, part in (("train", train), ("test", test)):
    real = model.pair_volume_indices(part.phase("ED").verts, part.phase("ES").verts)
    print(f"condition dropout {dropout}, vs the {part_name} split: " + "  ".join(
        f"{key} {np.mean(generated[key]) / np.mean(real[key]) * 100 - 100:+.2f} % (SD ratio "
        f"{np.std(generated[key], ddof=1) / np.std(real[key], ddof=1):.2f})" for key in generated
    ))
    slope, intercept = np.polyfit(real["EDV"], real["ESV"], 1)
    residual = {k: np.std(v["ESV"] - (slope * v["EDV"] + intercept)) for k, v in (("real", real), ("generated", generated))}
    print(f"    SD of ESV about the real ESV-on-EDV line: real {residual['real']:.2f} ml, generated {residual['generated']:.2f} ml")
