"""Fit mode over a whole real cardiac cycle: LV and RV volume curves of the biv-me cine study.

For each of the study's 25 frames, the expert short-axis contours (6 slices 17.7 mm apart) and
the 4-chamber, LVOT and 2-chamber long-axis contours are filled on their own grids (as in
``real_cine_mr_fit.py``) and fitted together with ``fit_template`` (thick slices on their planes,
long-axis views added; 150 steps, seed 0). Per frame: the LV and RV cavity volumes (ml) beside
those of the meshes biv-me fitted to the same contours (closed over the valves), and the mean
distance from biv-me's LV surface to ours (mm). Then the ejection fractions from the curves
(max and min over the cycle) and a PNG of the curves.

    .venv/bin/python docs/benchmarks/recon/real_cine_mr_cycle.py [--out PNG]

Outputs kept: ``real-cine-mr-cycle.txt`` and ``real-cine-mr-cycle.png`` (about 7 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bivme_study import STUDY, closed_ml, distances, fitted_meshes, mesh_ml, short_axis_stack  # noqa: E402
from real_cine_mr_fit import LONG_AXIS_SLICES, contour_label_map, long_axis_label_maps  # noqa: E402

from cardiocore.mrml.app import slicer_app  # noqa: E402
from cardiocore.recon.fit import fit_template  # noqa: E402
from cardiocore.recon.rules import resolve_rule_set  # noqa: E402
from cardiocore.recon.template import load_template  # noqa: E402

FRAMES = range(25)
STRUCTURES = ("lv_cavity", "rv")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).with_name("real-cine-mr-cycle.png")), help="PNG of the curves")
    args = parser.parse_args()
    if not STUDY.is_dir():
        sys.exit(f"{STUDY} is absent: this needs the shared biv-me study")
    slicer_app()
    rules, template = resolve_rule_set(None), load_template()
    ours: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    theirs: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    print("frame  LV ours  LV biv-me  LV distance  RV ours  RV biv-me  seconds")
    for frame in FRAMES:
        image, ijk_to_ras = short_axis_stack(frame)
        labels = contour_label_map(frame, image.shape, ijk_to_ras)
        views = long_axis_label_maps(frame, LONG_AXIS_SLICES)
        started = time.perf_counter()
        result = fit_template(labels, ijk_to_ras, rules, template, views=views)
        seconds = time.perf_counter() - started
        meshes = dict(zip(result.names, result.meshes(), strict=True))
        reference = fitted_meshes(frame)
        for name in STRUCTURES:
            ours[name].append(mesh_ml(*meshes[name]))
            theirs[name].append(closed_ml(*reference[name]))
        lv_verts, lv_faces = (t.numpy() for t in meshes["lv_cavity"])
        distance, _ = distances(reference["lv_cavity"][0], lv_verts, lv_faces)
        print(f"{frame:5d}  {ours['lv_cavity'][-1]:7.1f}  {theirs['lv_cavity'][-1]:9.1f}  {distance:8.1f} mm  "
              f"{ours['rv'][-1]:7.1f}  {theirs['rv'][-1]:9.1f}  {seconds:7.1f}", flush=True)

    print("\nejection fraction from the curves, (max - min) / max:")
    for name in STRUCTURES:
        figures = []
        for source, curve in (("ours", ours[name]), ("biv-me", theirs[name])):
            high, low = max(curve), min(curve)
            figures.append(f"{source} EDV {high:6.1f} ml (frame {curve.index(high)}) ESV {low:6.1f} ml "
                           f"(frame {curve.index(low)}) EF {100 * (high - low) / high:5.1f} %")
        print(f"  {name:9s} " + "; ".join(figures))

    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for name, colour in zip(STRUCTURES, ("tab:red", "tab:blue"), strict=True):
        axes.plot(list(FRAMES), ours[name], color=colour, label=f"{name}: Fit (short + long axis)")
        axes.plot(list(FRAMES), theirs[name], color=colour, linestyle="--", label=f"{name}: biv-me")
    axes.set_xlabel("frame")
    axes.set_ylabel("volume (ml)")
    axes.set_title("biv-me cine study: cavity volumes over the cycle")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"\ncurves written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
