"""Predict mode on a real cine MR short-axis stack, scored against the study's fitted meshes.

The biv-me example study (``../shared/data/bivme_patient1``, Apache-2.0: a 3T bSSFP cine, 6
short-axis slices 17.7 mm apart at 1.41 mm pixels, 25 frames) comes with biventricular meshes
fitted to expert contours for every frame (LV endocardium, RV endocardium, epicardium). For the
end-diastolic (0) and end-systolic (9) frames this script stacks the short-axis slices into a
volume (Slicer's DICOM geometry, ``cardiocore.mrml.dicom``), runs the bundled predictor on it and
compares the predicted LV and RV cavities with the fitted LV and RV endocardia:

- mean and 95th-percentile distance (mm) from the fitted surface's vertices to the predicted
  surface (the fitted meshes are open at the valves, so this direction is the clean one) and from
  the predicted vertices to the fitted surface;
- cavity volumes (ml; the fitted surfaces closed with a fan over each valve opening) and the LV
  and RV ejection fractions from the two frames.

Each frame is predicted twice: with the network's field of view on the image centre (what
``cardio recon predict --image`` does by default) and on the fitted LV's centroid (as a user
giving ``--centre`` on the heart would; the reference is used only for that placement).

    .venv/bin/python docs/benchmarks/recon/real_cine_mr.py [--refine-steps N] [--model FILE]

(``ours`` in the output is the prediction.) Fit mode on the same slices: ``real_cine_mr_fit.py``.

Output kept: ``real-cine-mr-1.3.0.txt`` (bundled 1.3.0, without and with ``--refine-steps 60``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bivme_study import FITTED_SURFACES, FRAMES, STUDY, closed_ml, compare, fitted_meshes, mesh_ml, short_axis_stack
from cardiocore.mrml.app import slicer_app
from cardiocore.recon.predict import BUNDLED_PREDICTOR, load_predictor, predict_meshes
from cardiocore.weights import resolve_model

parser = argparse.ArgumentParser()
parser.add_argument("--refine-steps", type=int, default=0)
parser.add_argument("--model", help="predictor file (default: the bundled one)")
args = parser.parse_args()
if not STUDY.is_dir():
    sys.exit(f"{STUDY} is absent: this needs the shared biv-me study")

slicer_app()
predictor = load_predictor(args.model, device="cpu")
model_file = Path(args.model) if args.model else resolve_model(BUNDLED_PREDICTOR)
print(f"predictor {model_file.name} ({predictor.card.get('name', '?')}, {predictor.card.get('date', '?')}), "
      f"refine steps {args.refine_steps}; short-axis stack")

volumes: dict[tuple[str, str, str], float] = {}
for phase, frame in FRAMES.items():
    image, ijk_to_ras = short_axis_stack(frame)
    reference = fitted_meshes(frame)
    corners = np.array([[i, j, k, 1.0] for i in (0, image.shape[0] - 1) for j in (0, image.shape[1] - 1)
                        for k in (0, image.shape[2] - 1)]) @ ijk_to_ras.T
    lv_centre = reference["lv_cavity"][0].mean(axis=0)
    inside = np.all((lv_centre >= corners[:, :3].min(0)) & (lv_centre <= corners[:, :3].max(0)))
    print(f"\n{phase} (frame {frame}): image {image.shape}, spacing "
          f"{np.round(np.linalg.norm(ijk_to_ras[:3, :3], axis=0), 2).tolist()} mm; fitted LV centroid "
          f"{np.round(lv_centre, 1).tolist()} RAS {'inside' if inside else 'OUTSIDE'} the image box")
    for name in FITTED_SURFACES:
        volumes[("fitted", phase, name)] = closed_ml(*reference[name])
    for placement, centre in (("image centre", None), ("LV centroid", lv_centre)):
        result, warnings = predict_meshes(image, ijk_to_ras, predictor, centre_ras=centre,
                                          refine_steps=args.refine_steps)
        for warning in warnings:
            print(f"  warning: {warning}")
        meshes = {name: (v.numpy(), f.numpy()) for name, v, f in zip(result.names, result.verts, result.faces)}
        for name in FITTED_SURFACES:
            volumes[(placement, phase, name)] = mesh_ml(*meshes[name])
            print(f"  {placement:12s} {compare(name, *meshes[name], reference[name])}")

print("\nejection fraction (EDV - ESV) / EDV:")
for source in ("fitted", "image centre", "LV centroid"):
    figures = []
    for name in FITTED_SURFACES:
        edv, esv = volumes[(source, "ED", name)], volumes[(source, "ES", name)]
        figures.append(f"{name} EDV {edv:6.1f} ml ESV {esv:6.1f} ml EF {100 * (edv - esv) / edv:5.1f} %")
    print(f"  {source:12s} " + "; ".join(figures))
