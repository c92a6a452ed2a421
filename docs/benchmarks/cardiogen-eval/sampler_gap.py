"""Settle the fast sampler's 1-NNA gap to the 1000-step DDPM sampler with many generated sets.

``cardio bench gen`` scores each sampler on the sets its 1,000 meshes hold (6 of 150), which
leaves a standard error of 1-2 points on the gap: as large as the 2-point target. This script
runs the same benchmark (:func:`cardiocore.bench.gen.run_gen_benchmarks`, a model's ED model,
``R`` ED shapes of its CAP test split as the references, one seed for every sampler) with ``N``
meshes per sampler, so ``N / R`` disjoint sets are averaged, for the default sampler only (PLMS,
20 steps). Timings are from a single run (``repeats=1``); ``cardio bench gen`` gives the medians.

    .venv/bin/python docs/benchmarks/cardiogen-eval/sampler_gap.py [N [MODEL [R]]]

N defaults to 4500, MODEL to the bundled default (a name, NAME@VERSION or a model.pt), R to 150 (a
seeded choice when the test split holds more ED shapes; 1.0.0's holds exactly 150).
Output: ``sampler_gap.txt`` (1.0.0), ``cap-1.1.0/sampler_gap.txt`` (2 CPU threads).
"""

from __future__ import annotations

import sys

import torch

from cardiocore.bench.gen import format_gen_rows, run_gen_benchmarks
from cardiocore.gen.cli import held_out_references, load_model

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4500
MODEL = sys.argv[2] if len(sys.argv) > 2 else None
R = int(sys.argv[3]) if len(sys.argv) > 3 else 150
torch.set_num_threads(2)
model = load_model(MODEL, "cpu")
references = held_out_references(model, "../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz", R)
print(f"{model.card.get('name')} (seed {model.card.get('spec', {}).get('seed', 0)}): {len(references)} "
      "test ED shapes as references", flush=True)
rows = run_gen_benchmarks(model, references, n=N, device="cpu", steps=[20], samplers=["plms"], repeats=1)
print(format_gen_rows(rows), flush=True)
for row in rows:
    if row.get("one_nna_gap_pts") is not None:
        print(f"{row['method']}: 1-NNA {row['one_nna_percent']:.2f} +- {row['one_nna_se_pts']:.2f} % over "
              f"{row['nna_sets']} sets of {row['nna_set']}; gap to DDPM {row['one_nna_gap_pts']:+.2f} "
              f"+- {row['one_nna_gap_se_pts']:.2f} points (target within 2)")
