"""Time the resolution step on Fit mode's meshes of the three MM-WHS label maps.

Each label map is fitted as ``cardio bench recon`` fits it (cropped, subsampled to 2 mm, 150 steps,
seed 0) without the resolution step, and the fitted meshes are then resolved five times; the script
prints the median seconds per case, what the step did and a digest of the resolved vertices, so
that two versions of the code can be checked to give the same meshes. About 70 s on 2 CPU cores:

    .venv/bin/python docs/benchmarks/recon/resolve_speed_fit.py [FOLDER]

Default folder: ../shared/data/mmwhs_ct_labels.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time

import torch

from cardiocore.bench.recon import mmwhs_cases
from cardiocore.recon.fit import fit_template
from cardiocore.recon.resolve import resolve_meshes
from cardiocore.recon.template import load_template

FOLDER = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mmwhs_ct_labels"

torch.set_num_threads(2)
template = load_template()
for case in mmwhs_cases(FOLDER):
    fitted = fit_template(case.labels, case.ijk_to_ras, case.rules, template, resolve=False)
    meshes = list(zip(fitted.verts, fitted.faces, strict=True))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        resolved, report = resolve_meshes(meshes, fitted.names, case.rules.rules)
        times.append(time.perf_counter() - start)
    digest = hashlib.sha256(b"".join(verts.numpy().tobytes() for verts, _ in resolved)).hexdigest()[:16]
    left = {n: c for n, c in report.self_intersections_left.items() if c}
    print(f"{case.name}: median {statistics.median(times):.3f} s over 5, moved per round {report.moved_per_round}, "
          f"self-intersections left {left or 0}, resolved vertices sha256 {digest}")
