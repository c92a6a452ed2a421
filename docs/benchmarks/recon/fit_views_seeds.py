"""Dice of fits of the six-slice cine phantom alone and with its two long-axis views, over fit
seeds: the spread behind the thresholds of ``test_long_axis_views_add_what_the_short_axis_stack_misses``
in ``Testing/test_recon_fit.py`` (phantom seed 3, 100 steps, one thread, CPU loop).

    .venv/bin/python docs/benchmarks/recon/fit_views_seeds.py 0 1 2 3 4 5 6 7

Two lines per fit seed (the stack alone, then with the views): Dice per structure against the
phantom on a 2 mm grid and their sum, over the whole grid and beyond the stack's first and last
slices (apex and base).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

sys.path.insert(0, "Testing")
from test_recon_fit import _dice_against, _six_slice_study, _beyond_the_stack  # noqa: E402

from cardiocore.recon.fit import fit_template  # noqa: E402
from cardiocore.recon.rules import RuleSet  # noqa: E402
from cardiocore.recon.template import load_template  # noqa: E402

torch.set_num_threads(1)
labels, matrix, dense, views = _six_slice_study()
view_maps = [(np.where(np.isin(v.labels, (1, 2, 3)), v.labels, 0), v.ijk_to_ras) for v in views]
rules, template = RuleSet.default(), load_template()
beyond = _beyond_the_stack(matrix, labels.shape[2], dense)
for seed in (int(arg) for arg in sys.argv[1:]):
    for with_views in (False, True):
        result = fit_template(labels, matrix, rules, template, steps=100, views=view_maps if with_views else (),
                              seed=seed)
        for where, scores in (("whole", _dice_against(result, dense, rules)),
                              ("beyond", _dice_against(result, dense, rules, beyond))):
            print(seed, "views" if with_views else "stack", f"{where:6s}",
                  "  ".join(f"{n} {v:.4f}" for n, v in scores.items()), f"sum {sum(scores.values()):.4f}", flush=True)
