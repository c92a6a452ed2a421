"""Count what each step of the GPU fit loop costs a GPU, without one.

Runs ``fit_template(dense=True)`` (the loop a GPU runs) on the CPU with the GPU's chunk sizes
and counts, per optimisation step, the aten operations it dispatches, those that launch a kernel
(not views) and those that make the host wait for the device
(:class:`cardiocore.bench.dispatch.DispatchCounter`). Small kernels on a GPU cost their launch,
a few microseconds of host time each, so the launches per step bound the loop's speed there; a
wait stalls the host until the device has caught up. Ordinary steps and violation-search steps
(every ``mie_refresh``) are reported apart.

    .venv/bin/python docs/benchmarks/recon/fit_dispatches.py [LABEL_MAP ...]

Default: the three MM-WHS label maps of ../shared/data (``--structures mmwhs`` coding).
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter

import torch

from cardiocore.bench.dispatch import DispatchCounter
from cardiocore.geometry import solid_angle
from cardiocore.recon import mie
from cardiocore.recon.fit import fit_template
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.template import load_template, read_label_map

STEPS, MIE_REFRESH = 30, 10
DATA = "../shared/data/mmwhs_ct_labels"
maps = sys.argv[1:] or [f"{DATA}/ct_train_{case}_label.nii.gz" for case in (1002, 1005, 1012)]

# The GPU's chunk sizes, so that chunked sums count the GPU's launches.
mie.BATCH_PAIRS["cpu"] = mie.BATCH_PAIRS["cuda"]
solid_angle.PAIR_BUDGET = solid_angle.pair_budget(torch.device("cuda"))
torch.set_num_threads(2)
rules, template = RuleSet.mmwhs(), load_template()
print(f"dense fit loop, {STEPS} steps, violation search every {MIE_REFRESH}; per step after the first")
print(f"{'label map':34s} {'kind':8s} {'steps':>5s} {'dispatches':>10s} {'launches':>9s} {'waits':>6s}")
for path in maps:
    labels, matrix = read_label_map(path)
    counter = DispatchCounter()
    marks: list[tuple[int, int, int]] = []
    with counter:
        fit_template(labels, matrix, rules, template, steps=STEPS, mie_refresh=MIE_REFRESH, resolve=False,
                     dense=True, progress=lambda step, total, terms: marks.append(
                         (counter.dispatches, counter.launches, len(counter.waits))))
    rows = {"ordinary": [], "search": []}
    for step, (before, after) in enumerate(zip(marks, marks[1:]), start=1):
        rows["search" if step % MIE_REFRESH == 0 else "ordinary"].append([a - b for a, b in zip(after, before)])
    name = path.rsplit("/", 1)[-1]
    for kind, values in rows.items():
        medians = [statistics.median(column) for column in zip(*values)]
        print(f"{name:34s} {kind:8s} {len(values):5d} {medians[0]:10.0f} {medians[1]:9.0f} {medians[2]:6.0f}")
    where = Counter(w.split(" in ")[1].rsplit(":", 1)[0] for w in counter.waits[marks[0][2]:])
    print(f"{'':34s} waits after the first step: {dict(where) or 'none'}")
