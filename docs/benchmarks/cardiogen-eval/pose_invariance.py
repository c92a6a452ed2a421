"""How well the bundled CardioGen model reconstructs real LV shapes that lie outside the atlas frame,
with and without the rigid pose fit that interpolation uses (``CardioGenModel.pose_of``).

Every 10th shape of the CAP cohort (ED and ES; 300 shapes) is reconstructed (a) as it lies in the
atlas frame, encoded directly; (b) the same with the pose fit; (c) moved by a random rigid motion
(uniform rotation, shift ~N(0, 100 mm) per axis), encoded directly; (d) moved, with the pose fit.
Printed: median, 95th percentile and largest mean per-vertex error (mm), the motion the fit finds for
the shapes in place, and the fit's time per mesh.

    .venv/bin/python docs/benchmarks/cardiogen-eval/pose_invariance.py [ATLAS_NPZ]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from cardiocore.gen.cli import load_cohort, load_model
from cardiocore.gen.pose import RigidPose

ATLAS = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cap_lv_atlas/cap_lv_atlas_dev.npz"

torch.set_num_threads(2)
model = load_model(None, "cpu")
shapes = load_cohort(ATLAS).verts[::10].double()
rng = np.random.default_rng(0)


def plain_error(verts: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(model.reconstruct(verts.float()[None])[0].double() - verts, dim=-1).mean())


rows: dict[str, list[float]] = {"in place, encoded directly": [], "in place, pose fitted": [],
                                "moved, encoded directly": [], "moved, pose fitted": []}
angles, shifts, seconds = [], [], []
for shape in shapes:
    motion = RigidPose(torch.as_tensor(Rotation.random(random_state=rng).as_matrix()),
                       torch.as_tensor(rng.normal(0.0, 100.0, 3)))
    moved = motion.apply(shape)
    rows["in place, encoded directly"].append(plain_error(shape))
    start = time.perf_counter()
    fit = model.pose_of(shape)
    seconds.append(time.perf_counter() - start)
    rows["in place, pose fitted"].append(fit.error_mm)
    angles.append(fit.pose.angle_degrees())
    shifts.append(float(fit.pose.translation.norm()))
    rows["moved, encoded directly"].append(plain_error(moved))
    start = time.perf_counter()
    rows["moved, pose fitted"].append(model.pose_of(moved).error_mm)
    seconds.append(time.perf_counter() - start)

print(f"{len(shapes)} CAP shapes (every 10th of {ATLAS}), bundled model {model.card.get('name')}, 2 CPU threads")
print("mean per-vertex reconstruction error (mm): median / p95 / max")
for name, values in rows.items():
    v = np.asarray(values)
    print(f"  {name:28s} {np.median(v):6.3f} / {np.percentile(v, 95):6.3f} / {v.max():7.3f}")
print(f"motion found for the shapes in place: median {np.median(angles):.2f} deg, {np.median(shifts):.2f} mm; "
      f"identity kept for {int(sum(a == 0.0 for a in angles))} of {len(angles)}")
print(f"pose fit: median {1000 * np.median(seconds):.0f} ms per mesh")
