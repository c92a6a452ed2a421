"""The ablation's MIE-versus-surface-only figure over fit seeds: ``cardio bench recon`` fits with
seed 0 only; this fits the three MM-WHS label maps with MIE (no resolution step) and with the
surface distance only for each seed given, scores them as the benchmark does, and prints each
seed's median mean VR of both and the cut (target >= 80 %), with the mean Dice gap.

    .venv/bin/python docs/benchmarks/recon/vr_cut_seeds.py 0 1 2
    .venv/bin/python docs/benchmarks/recon/vr_cut_seeds.py --candidates-per-surface 256 0 1 2

``--candidates-per-surface N``: the MIE fits' violation-search candidates per surface
(``fit_template(mie_candidates_per_surface=N)``; without it, the fit's default, 1,024).
"""

from __future__ import annotations

import statistics
import sys

import numpy as np

from cardiocore.bench.recon import _FIT_SWITCHES, DEFAULT_STEPS, SVR_POINTS, VR_POINTS, mmwhs_cases
from cardiocore.recon.evaluate import evaluate_meshes
from cardiocore.recon.fit import fit_template
from cardiocore.recon.template import load_template

arguments = sys.argv[1:]
candidates = {}
if arguments[:1] == ["--candidates-per-surface"]:
    candidates, arguments = {"mie_candidates_per_surface": int(arguments[1])}, arguments[2:]
cases, template = mmwhs_cases("../shared/data/mmwhs_ct_labels"), load_template()
for seed in (int(arg) for arg in arguments):
    figures = {}
    for method in ("MIE", "surface only"):
        vr, dice = [], []
        for case in cases:
            result = fit_template(case.labels, case.ijk_to_ras, case.rules, template, steps=DEFAULT_STEPS,
                                  seed=seed, device="cpu", **_FIT_SWITCHES[method],
                                  **(candidates if method == "MIE" else {}))
            label_of = {s.name: s.label for s in case.rules.structures}
            metrics = evaluate_meshes(dict(zip(result.names, result.meshes(), strict=True)), case.labels,
                                      case.ijk_to_ras, label_of, case.rules, vr_points=VR_POINTS, svr_points=SVR_POINTS)
            vr.append(float(np.mean([100.0 * r.vr for r in metrics.rules])))
            dice.append(metrics.summary()["mean Dice"])
        figures[method] = (statistics.median(vr), statistics.median(dice), vr)
    (mie_vr, mie_dice, mie_cases), (surface_vr, surface_dice, surface_cases) = figures["MIE"], figures["surface only"]
    print(f"seed {seed}: mean VR (median of cases) MIE {mie_vr:.4f} % {[round(v, 4) for v in mie_cases]}, "
          f"surface only {surface_vr:.4f} % {[round(v, 4) for v in surface_cases]}; "
          f"cut {100.0 * (1.0 - mie_vr / surface_vr):.1f} %, Dice gap {mie_dice - surface_dice:+.4f}", flush=True)
