"""Time the resolution step (rule separation + untangling) on the bundled predictor's raw meshes.

The network's meshes for four held-out synthetic images of MM-WHS ct_train_1012 (the seeds
``cardio recon eval``-style evaluation uses) are resolved three times each; the script prints the
median seconds per image, what the step did, and a digest of the resolved vertices so that two
versions of the code can be checked to give the same meshes.

    .venv/bin/python docs/benchmarks/recon/resolve_speed.py [LABEL_MAP]

Default label map: ../shared/data/mmwhs_ct_labels/ct_train_1012_label.nii.gz.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time

import torch

from cardiocore.recon.predict import MeshPredictor, run_network
from cardiocore.recon.predict_eval import EVAL_SEED_OFFSET
from cardiocore.recon.resolve import resolve_meshes
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import SynthOptions, load_cases, synthesize_sample

LABELS = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mmwhs_ct_labels/ct_train_1012_label.nii.gz"

torch.set_num_threads(2)
predictor = MeshPredictor.from_bundled(device="cpu")
case = load_cases([LABELS], "mmwhs")[0]
rules = RuleSet.default().subset(predictor.names).rules
digest = hashlib.sha256()
medians = []
for k in range(4):
    generator = torch.Generator().manual_seed(EVAL_SEED_OFFSET + k)
    sample = synthesize_sample(case, predictor.spec.grid_size, predictor.spec.spacing_mm, generator, SynthOptions())
    raw = run_network(predictor, sample.image, sample.frame_to_ras)
    meshes = list(zip(raw.verts.split(predictor.net.sizes), predictor.template_faces, strict=True))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        resolved, report = resolve_meshes(meshes, predictor.names, rules)
        times.append(time.perf_counter() - start)
    for verts, _ in resolved:
        digest.update(verts.numpy().tobytes())
    medians.append(statistics.median(times))
    left = {n: c for n, c in report.self_intersections_left.items() if c}
    print(f"image {k}: median {medians[-1]:.3f} s over 3, moved per round {report.moved_per_round}, "
          f"self-intersections left {left or 0}")
print(f"median over images {statistics.median(medians):.3f} s; resolved vertices sha256 {digest.hexdigest()[:16]}")
