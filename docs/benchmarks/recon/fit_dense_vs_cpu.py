"""Dice of the CPU fit loop and of the dense loop (what a GPU runs) on the oblique phantom of
``Testing/test_recon_fit.py`` (phantom seed 3, 100 steps, one thread, with the resolution step).

    .venv/bin/python docs/benchmarks/recon/fit_dense_vs_cpu.py 0:0 0:1 0:2 1:0 1:1 1:2

Each argument is DENSE:SEED (DENSE 1 for ``fit_template(dense=True)``, SEED the fit's seed); a
line per run: Dice per structure (first six letters of its name) and the optimisation seconds.
"""

from __future__ import annotations

import sys

import torch
from scipy.spatial.transform import Rotation

from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.metrics.overlap import dice
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.fit import fit_template
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.template import load_template

torch.set_num_threads(1)
direction = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
phantom = heart_label_phantom(shape=(72, 60, 64), spacing=(2.0, 2.4, 2.25), direction=direction, seed=3)
rules, template = RuleSet.default(), load_template()
for spec in sys.argv[1:]:
    dense, seed = spec.split(":")
    result = fit_template(phantom.labels, phantom.ijk_to_ras, rules, template, steps=100, dense=dense == "1",
                          seed=int(seed))
    scores = {name[:6]: round(float(dice(voxelize_mesh(v, f, phantom.labels.shape, phantom.ijk_to_ras),
                                          phantom.labels == rules.structure(name).label)), 4)
              for name, (v, f) in zip(result.names, result.meshes(), strict=True)}
    print(spec, scores, round(result.seconds["optimise"], 1), flush=True)
