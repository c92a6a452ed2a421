"""Fit mode on a segmentation of a real cine MR short-axis stack, scored against the study's fitted meshes.

What the Predict warning on sparse slices recommends, measured: segment the short-axis slices
(here: the study's expert contours, filled on each slice's pixel grid as a Segment Editor
segmentation of the stack would be, ``lv_cavity`` inside the LV endocardium, ``lv_myocardium``
between it and the LV epicardium (the septum's RV side closing it), ``rv`` inside the RV free wall
and septum contours) and fit the template to that label map. The study (``bivme_study``) is a 3T
bSSFP cine with 6 short-axis slices 17.7 mm apart; the reference meshes were fitted by biv-me to the
same short-axis contours **and** to long-axis contours (so without the long-axis views the base
and apex are known to the reference, not to the fit).

Each frame is fitted five times: as a volume (each label filling its 17.7 mm slab), as thick
slices (the default on such a stack: labels on the slice planes only), and as thick slices with
three long-axis views added (4-chamber, LVOT and 2-chamber cines, their expert contours filled on
their own single-slice grids: ``fit_template(..., views=...)``, what a user who also segments the
long-axis series gives), with the RVOT view as well, which annotates the RV alone, and with the
RVOT view read as annotating every structure (its uncontoured LV then counts as background). Scores per frame (ED 0, ES 9): distances both ways between our LV and RV cavities and the fitted LV
and RV endocardia (mm), volumes (ml; the fitted surfaces closed over the valves), the ejection
fractions, and the same volumes by the slice-summation (Simpson) rule on the label map, the
clinical method on such a stack.

    .venv/bin/python docs/benchmarks/recon/real_cine_mr_fit.py [--steps N] [--seed S]

Output kept: ``real-cine-mr-fit.txt`` (seeds 0, 1 and 2).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from skimage.draw import polygon as fill_polygon

from bivme_study import (
    FRAMES,
    STUDY,
    closed_ml,
    compare,
    fitted_meshes,
    guide_points,
    long_axis_slice,
    mesh_ml,
    short_axis_stack,
)
from cardiocore.geometry.volume import close_boundary
from cardiocore.geometry.winding import inside_mesh
from cardiocore.mrml.app import slicer_app
from cardiocore.recon.fit import FitView, fit_template
from cardiocore.recon.rules import resolve_rule_set
from cardiocore.recon.template import load_template

# Outline of each labelled region: the contour types that bound it (after the view's prefix,
# SAX_ or LAX_), in order around it.
OUTLINES = {
    "lv_cavity": ("LV_ENDOCARDIAL",),
    "lv_epicardium": ("LV_EPICARDIAL", "RV_SEPTUM"),
    "rv": ("RV_FREEWALL", "RV_SEPTUM"),
}
# The long-axis views with both LV and RV contours or LV contours alone (4-chamber, LVOT,
# 2-chamber), and the RVOT view (11), whose RV alone was contoured (the LV may be in it): it
# annotates the RV only (``FitView.structures``), so the LV is unknown on its plane; read as
# annotating every structure, it would call the LV background there.
LONG_AXIS_SLICES = (7, 8, 9)
RVOT_SLICE = 11
RVOT, RVOT_AS_ALL = "RVOT", "RVOT as all"
GAP_FACTOR = 3.0  # a step longer than this many median steps splits a contour into pieces
# Mode -> (thick_slices, views): fitted as a volume (labels filling the slabs between slices), as
# thick slices (labels on the slice planes only, what ``fit_template`` does by default on such a
# stack), with the three long-axis views added, with the RVOT view too, and with the RVOT view
# read as annotating every structure.
MODES = {"volume": (False, ()), "slices": (None, ()), "slices+LAX": (None, LONG_AXIS_SLICES),
         "slices+LAX+RVOT": (None, (*LONG_AXIS_SLICES, RVOT)),
         "slices+LAX+RVOT as all": (None, (*LONG_AXIS_SLICES, RVOT_AS_ALL))}


def contour_pieces(points: np.ndarray) -> list[np.ndarray]:
    """An ordered contour (N, 2) split wherever consecutive points are unusually far apart."""
    if len(points) < 3:
        return [points]
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cuts = np.flatnonzero(steps > GAP_FACTOR * np.median(steps)) + 1
    return [piece for piece in np.split(points, cuts) if len(piece) > 0]


def closed_outline(pieces: list[np.ndarray]) -> np.ndarray:
    """Chain polyline pieces (each (N_i, 2)) into one outline (N, 2): from the first piece, each
    next piece is the one with an end nearest the current end, reversed when its far end is."""
    outline, rest = pieces[0], list(pieces[1:])
    while rest:
        gaps = [(min(np.linalg.norm(p[0] - outline[-1]), np.linalg.norm(p[-1] - outline[-1])), i)
                for i, p in enumerate(rest)]
        piece = rest.pop(min(gaps)[1])
        if np.linalg.norm(piece[-1] - outline[-1]) < np.linalg.norm(piece[0] - outline[-1]):
            piece = piece[::-1]
        outline = np.concatenate([outline, piece])
    return outline


def contour_label_map(frame: int, shape: tuple[int, int, int], ijk_to_ras: np.ndarray,
                      prefix: str = "SAX_", slice_ids: tuple[int, ...] | None = None) -> np.ndarray:
    """The frame's contours of one view (``prefix`` SAX_ or LAX_; ``slice_ids``: which slices,
    default all of the view) filled on its grid: (I, J, K) uint8 in the default rule set's coding
    (lv_cavity 1, lv_myocardium 2, rv 3)."""
    labels = resolve_rule_set(None)
    value = {name: labels.structure(name).label for name in ("lv_cavity", "lv_myocardium", "rv")}
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    grouped: dict[tuple[str, int], list[np.ndarray]] = {}
    for kind, slice_id, point in guide_points(frame):
        if kind.startswith(prefix) and (slice_ids is None or slice_id in slice_ids):
            grouped.setdefault((kind[len(prefix):], slice_id), []).append(ras_to_ijk[:3, :3] @ point + ras_to_ijk[:3, 3])
    out = np.zeros(shape, dtype=np.uint8)
    for slice_id in sorted({s for _, s in grouped}):
        filled = {}
        k = None
        for region, kinds in OUTLINES.items():
            pieces = []
            for kind in kinds:
                ijk = np.array(grouped.get((kind, slice_id), []))
                if len(ijk) == 0:
                    continue
                k = int(round(ijk[0, 2]))
                if np.abs(ijk[:, 2] - k).max() > 0.1:
                    sys.exit(f"slice {slice_id}: {kind} points are not on one slice of the stack")
                pieces += contour_pieces(ijk[:, :2])
            mask = np.zeros(shape[:2], dtype=bool)
            if pieces:
                outline = closed_outline(pieces)
                mask[fill_polygon(outline[:, 0], outline[:, 1], shape[:2])] = True
            filled[region] = mask
        plane = out[:, :, k]
        plane[filled["lv_epicardium"]] = value["lv_myocardium"]
        plane[filled["rv"] & ~filled["lv_epicardium"]] = value["rv"]
        plane[filled["lv_cavity"]] = value["lv_cavity"]
    return out


def long_axis_label_maps(frame: int, slice_ids: tuple[int, ...]) -> list[FitView]:
    """The frame's contours of the long-axis slices ``slice_ids``, each filled on its own
    single-slice grid (labels (I, J, 1), IJK-to-RAS (4, 4)); the RVOT slice annotates the RV alone."""
    views = []
    for slice_id in slice_ids:
        image, ijk_to_ras = long_axis_slice(slice_id, frame)
        views.append(FitView(contour_label_map(frame, image.shape, ijk_to_ras, "LAX_", (slice_id,)), ijk_to_ras,
                             ["rv"] if slice_id == RVOT_SLICE else None))
    return views


def reference_on_slices(labels: np.ndarray, ijk_to_ras: np.ndarray, value: int,
                        reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Pixels inside the reference surface (closed over its valves) on the contoured slices, over
    the pixels the contours fill there: how the reference agrees with the contours it was fitted to."""
    verts, faces = close_boundary(torch.as_tensor(reference[0]), torch.as_tensor(reference[1]))
    slices = [k for k in range(labels.shape[2]) if (labels[:, :, k] == value).any()]
    ijk = np.argwhere(np.ones(labels.shape[:2] + (len(slices),), dtype=bool)).astype(np.float64)
    ijk[:, 2] = np.asarray(slices, dtype=np.float64)[ijk[:, 2].astype(int)]
    inside = inside_mesh(torch.as_tensor(ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]), verts.double(), faces)
    return float(inside.sum()) / float((labels[:, :, slices] == value).sum())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150, help="fit steps (the default of cardio recon fit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fits' random draws (default 0)")
    args = parser.parse_args()
    if not STUDY.is_dir():
        sys.exit(f"{STUDY} is absent: this needs the shared biv-me study")
    slicer_app()
    rules, template = resolve_rule_set(None), load_template()
    print(f"Fit mode on the expert contours, {args.steps} steps, seed {args.seed}")
    volumes: dict[tuple[str, str, str], float] = {}
    for phase, frame in FRAMES.items():
        image, ijk_to_ras = short_axis_stack(frame)
        labels = contour_label_map(frame, image.shape, ijk_to_ras)
        spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        reference = fitted_meshes(frame)
        slices = [k for k in range(labels.shape[2]) if labels[:, :, k].any()]
        print(f"\n{phase} (frame {frame}): {len(slices)} contoured slices of {labels.shape[2]}, spacing "
              f"{np.round(spacing, 2).tolist()} mm")
        for name in ("lv_cavity", "rv"):
            volumes[("fitted", phase, name)] = closed_ml(*reference[name])
            volumes[("slice sum", phase, name)] = voxel_ml * int((labels == rules.structure(name).label).sum())
            ratio = reference_on_slices(labels, ijk_to_ras, rules.structure(name).label, reference[name])
            print(f"  slice summation {name:9s} {volumes[('slice sum', phase, name)]:6.1f} ml; on the contoured "
                  f"slices the fitted surface holds {ratio:.2f}x the contours' pixels")
        views = dict(zip((*LONG_AXIS_SLICES, RVOT), long_axis_label_maps(frame, (*LONG_AXIS_SLICES, RVOT_SLICE)),
                         strict=True))
        views[RVOT_AS_ALL] = views[RVOT]._replace(structures=None)
        print("  long-axis views: " + ", ".join(f"{slice_id}: {int((v.labels > 0).sum())} labelled pixels"
                                                for slice_id, v in views.items() if slice_id != RVOT_AS_ALL))
        for mode, (thick, view_ids) in MODES.items():
            started = time.perf_counter()
            result = fit_template(labels, ijk_to_ras, rules, template, steps=args.steps, thick_slices=thick,
                                  views=[views[i] for i in view_ids], seed=args.seed)
            seconds = time.perf_counter() - started
            meshes = dict(zip(result.names, result.meshes(), strict=True))
            print(f"  {mode}: fit of {', '.join(result.names)} in {seconds:.1f} s (slice axis {result.slice_axis}); "
                  f"self-intersecting pairs left: {result.resolved.self_intersections_left if result.resolved else 'n/a'}")
            for name in ("lv_cavity", "rv"):
                verts, faces = (t.numpy() for t in meshes[name])
                volumes[(mode, phase, name)] = mesh_ml(verts, faces)
                print(f"    {compare(name, verts, faces, reference[name])}")
            myocardium = voxel_ml * int((labels == rules.structure("lv_myocardium").label).sum())
            print(f"    lv_myocardium volume {mesh_ml(*meshes['lv_myocardium']):6.1f} ml (slice summation {myocardium:6.1f} ml)")

    print("\nejection fraction (EDV - ESV) / EDV:")
    for source in ("fitted", "slice sum", *MODES):
        figures = []
        for name in ("lv_cavity", "rv"):
            edv, esv = volumes[(source, "ED", name)], volumes[(source, "ES", name)]
            figures.append(f"{name} EDV {edv:6.1f} ml ESV {esv:6.1f} ml EF {100 * (edv - esv) / edv:5.1f} %")
        print(f"  {source:22s} " + "; ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
