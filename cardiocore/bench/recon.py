"""``cardio bench recon``: the CardioReconstruct ablation and baseline in one run.

The same cases are reconstructed by five methods:

- ``MIE + resolve``: what ``cardio recon fit`` and the module do: the fit with every term, then
  the resolution step (:mod:`cardiocore.recon.resolve`: remaining violations pushed out,
  self-intersections untangled);
- ``MIE``: the fit with every term (occupancy BCE + MIE relational loss + surface distance +
  Laplacian and normal regularisers), :func:`cardiocore.recon.fit.fit_template`, no resolution;
- ``surface only``: the fit with the surface (Chamfer) distance and the regularisers;
- ``occupancy only``: the fit with the occupancy BCE and the regularisers (the loss ablations,
  ``MIE`` to ``occupancy only``, run without the resolution step so that they compare losses);
- ``Slicer baseline``: what a user would otherwise do in Slicer, marching cubes plus
  windowed-sinc smoothing per segment (:func:`cardiocore.recon.baseline.run_baseline_case`).

Every result is scored by :func:`cardiocore.recon.evaluate.evaluate_meshes` against the case's
label map. One row per method and case, then one summary row per method (medians over the
cases). Row keys (the table's columns; rates in %):

- ``method``, ``case``, ``device``, ``size`` (grid and voxel size of the case);
- ``chamber Dice`` (worst of LV cavity, RV, LA, RA), ``myo Dice`` (LV myocardium),
  ``min Dice`` and ``mean Dice`` over every structure; ``dice``: name -> Dice (JSON only);
- ``max VR (%)`` and ``max SVR (%)``: the worst rule; ``mean VR (%)``: the mean over rules;
- ``LSE (mm^2)``: mean Laplacian smoothness energy; ``watertight`` (all structures);
  ``self-intersections`` (intersecting face pairs, all structures);
- ``time_s``: wall time of the reconstruction (not of its scoring); ``target_s``: the fit's
  speed target on this device (fit methods only);
- ``targets met``: the fit targets of the issue (below) on this case; on a summary row, on
  every case.

Targets (issue "CardioReconstruct"), checked on the summary rows and printed beside them: Dice
>= 0.90 for each chamber and >= 0.80 for the myocardium, VR <= 0.5 % for every rule,
watertight, no self-intersection; MIE versus surface-only: mean VR lower by >= 80 % with mean
Dice within 0.01; fit <= 30 s per case on 2 CPU cores, <= 3 s on an H100.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardiocore.bench.measure import Row
from cardiocore.errors import CardioInputError
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.baseline import run_baseline_case
from cardiocore.recon.evaluate import ReconMetrics, evaluate_meshes
from cardiocore.recon.fit import fit_template
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.template import crop_and_stride, load_template, read_label_map
from cardiocore.train.device import select_device

CHAMBERS = ("lv_cavity", "rv", "la", "ra")
"""Structures held to the chamber Dice target."""
MYOCARDIUM = "lv_myocardium"
CHAMBER_DICE_TARGET = 0.90
MYOCARDIUM_DICE_TARGET = 0.80
VR_TARGET_PERCENT = 0.5
"""Largest VR allowed for any rule, %."""
VR_CUT_TARGET_PERCENT = 80.0
"""MIE's mean VR must be at least this much (%) below surface-only's ..."""
DICE_GAP_TARGET = 0.01
"""... with a mean Dice within this of surface-only's."""
FIT_TARGET_S = {"cpu": 30.0, "cuda": 3.0}
"""Seconds allowed per fit (2 CPU cores; one H100)."""

METHODS = ("MIE + resolve", "MIE", "surface only", "occupancy only", "Slicer baseline")
_FIT_SWITCHES = {
    "MIE + resolve": {"use_mie": True, "use_occupancy": True, "use_surface": True, "resolve": True},
    "MIE": {"use_mie": True, "use_occupancy": True, "use_surface": True, "resolve": False},
    "surface only": {"use_mie": False, "use_occupancy": False, "use_surface": True, "resolve": False},
    "occupancy only": {"use_mie": False, "use_occupancy": True, "use_surface": False, "resolve": False},
}

DEFAULT_STEPS = 150
PHANTOM_SHAPE, PHANTOM_SPACING_MM = (60, 60, 60), 2.5
"""Grid of the phantom cases (150 mm wide; the heart spans about 130 mm)."""
QUICK = {"shape": (40, 40, 40), "spacing_mm": 3.6, "steps": 30, "vr_points": 2000, "svr_points": 1000}
"""``quick`` mode: one coarse phantom, a short fit, fewer violation samples (a smoke test)."""
VR_POINTS, SVR_POINTS = 10_000, 5_000
"""Violation samples per rule in a full run."""
MMWHS_SPACING_MM = 2.0
"""Voxel size the MM-WHS label maps (0.49 x 0.49 x 0.63 mm) are subsampled to."""

COLUMNS = (
    "method", "case", "size", "chamber Dice", "myo Dice", "min Dice", "mean Dice", "max VR (%)", "mean VR (%)",
    "max SVR (%)", "LSE (mm^2)", "watertight", "self-intersections", "time_s", "target_s", "targets met",
)
"""Columns of :func:`format_recon_rows`, in order."""


@dataclass(frozen=True)
class ReconCase:
    """One label map to reconstruct.

    Attributes:
        name: case name in the rows.
        labels: label map (I, J, K) int, coded as ``rules`` says.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix, mm.
        rules: structures (label values) and rules.
    """

    name: str
    labels: np.ndarray
    ijk_to_ras: np.ndarray
    rules: RuleSet

    @property
    def size(self) -> str:
        spacing = np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)
        return f"{'x'.join(str(n) for n in self.labels.shape)} @ {'x'.join(f'{s:.2g}' for s in spacing)} mm"


def phantom_cases(
    n: int, seed: int = 0, shape: tuple[int, int, int] = PHANTOM_SHAPE, spacing_mm: float = PHANTOM_SPACING_MM
) -> list[ReconCase]:
    """``n`` seeded heart phantoms (:func:`cardiocore.phantoms.heart.heart_label_phantom`,
    seeds ``seed .. seed + n - 1``) on an isotropic grid, labels 1..7 (:meth:`RuleSet.default`)."""
    if n < 1:
        raise CardioInputError("cases", f"need at least one case, got {n}")
    rules = RuleSet.default()
    cases = []
    for k in range(seed, seed + n):
        phantom = heart_label_phantom(shape=shape, spacing=(spacing_mm,) * 3, seed=k)
        cases.append(ReconCase(f"phantom {k}", phantom.labels, phantom.ijk_to_ras, rules))
    return cases


def mmwhs_cases(
    folder: str | Path, spacing_mm: float = MMWHS_SPACING_MM, n: int | None = None, margin_mm: float = 10.0
) -> list[ReconCase]:
    """The MM-WHS label maps ``folder/*.nii.gz`` (sorted; the first ``n``), each cropped to its
    labelled voxels plus ``margin_mm`` and subsampled (nearest) to about ``spacing_mm``
    (:func:`cardiocore.recon.template.crop_and_stride`), coded by :meth:`RuleSet.mmwhs`.

    Raises:
        CardioInputError: a missing folder, no ``.nii.gz`` file, or an unreadable file (named);
            reading NIfTI needs ``nibabel``.
    """
    source = Path(folder).expanduser()
    if not source.is_dir():
        raise CardioInputError(str(source), "is not an existing folder", "give the folder of MM-WHS label maps")
    files = sorted(source.glob("*.nii.gz"))[:n]
    if not files:
        raise CardioInputError(str(source), "holds no .nii.gz label map")
    rules = RuleSet.mmwhs()
    cases = []
    for path in files:
        labels, matrix = read_label_map(path)
        work, work_matrix = crop_and_stride(labels, matrix, spacing_mm, margin_mm)
        cases.append(ReconCase(path.name.removesuffix(".nii.gz"), np.ascontiguousarray(work), work_matrix, rules))
    return cases


def _case_row(method: str, case: ReconCase, device: torch.device, metrics: ReconMetrics, seconds: float) -> Row:
    """The figures of one method on one case (module docstring)."""
    summary = metrics.summary()
    dice = {name: m.dice for name, m in metrics.structures.items()}
    chambers = [dice[name] for name in CHAMBERS if name in dice]
    vrs = [100.0 * r.vr for r in metrics.rules]
    fit = method in _FIT_SWITCHES
    row: Row = {
        "method": method, "case": case.name, "device": str(device), "size": case.size,
        "chamber Dice": min(chambers, default=float("nan")), "myo Dice": dice.get(MYOCARDIUM, float("nan")),
        "min Dice": summary["min Dice"], "mean Dice": summary["mean Dice"],
        "max VR (%)": summary["max VR (%)"], "mean VR (%)": float(np.mean(vrs)) if vrs else 0.0,
        "max SVR (%)": summary["max SVR (%)"], "LSE (mm^2)": summary["mean LSE (mm^2)"],
        "watertight": summary["all watertight"], "self-intersections": summary["self-intersections"],
        "time_s": seconds, "target_s": FIT_TARGET_S.get(device.type) if fit else None,
        "missing": list(metrics.missing), "dice": dice,
    }
    row["targets met"] = _meets_fit_targets(row)
    return row


def _meets_fit_targets(row: Row) -> bool:
    """Dice per chamber and myocardium, VR of every rule, watertight, no self-intersection."""
    return bool(
        row["chamber Dice"] >= CHAMBER_DICE_TARGET and row["myo Dice"] >= MYOCARDIUM_DICE_TARGET
        and row["max VR (%)"] <= VR_TARGET_PERCENT and row["watertight"] and row["self-intersections"] == 0
    )


def _summary_row(method: str, rows: list[Row]) -> Row:
    """Medians over the cases of one method (booleans: all cases; self-intersections: the largest)."""
    numeric = ("chamber Dice", "myo Dice", "min Dice", "mean Dice", "max VR (%)", "mean VR (%)", "max SVR (%)",
               "LSE (mm^2)", "time_s")
    row: Row = {"method": method, "case": f"median of {len(rows)}", "device": rows[0]["device"], "size": "-"}
    row |= {key: statistics.median(r[key] for r in rows) for key in numeric}
    row |= {"watertight": all(r["watertight"] for r in rows),
            "self-intersections": max(r["self-intersections"] for r in rows), "target_s": rows[0]["target_s"]}
    row["targets met"] = all(r["targets met"] for r in rows)
    return row


def run_recon_benchmarks(
    cases: Sequence[ReconCase],
    *,
    steps: int | None = None,
    device: str = "auto",
    quick: bool = False,
    vr_points: int | None = None,
    svr_points: int | None = None,
    progress: Callable[[str], None] = print,
) -> list[Row]:
    """Reconstruct every case with the four methods of the module docstring and score them.

    Args:
        cases: label maps (:func:`phantom_cases`, :func:`mmwhs_cases`); ``quick`` replaces them
            with one coarse phantom.
        steps: optimisation steps per fit (default ``DEFAULT_STEPS``, ``quick``: 30).
        device: "auto" (CUDA when present), "cpu", "cuda", ... for the fits (scoring runs on the CPU);
            on a device other than the CPU an untimed 2-step fit of the first case warms it up.
        quick: a smoke test in well under a minute, not the figures.
        vr_points, svr_points: violation samples per rule (default ``VR_POINTS``, ``SVR_POINTS``).
        progress: called with a line of text before each reconstruction and with its result.

    Returns:
        One row per method and case (methods in :data:`METHODS` order), then one summary row per
        method; keys as in the module docstring. :func:`format_recon_rows` prints them with the
        target checks.
    """
    if quick:
        cases = phantom_cases(1, shape=QUICK["shape"], spacing_mm=QUICK["spacing_mm"])
        steps = steps or QUICK["steps"]
        vr_points, svr_points = vr_points or QUICK["vr_points"], svr_points or QUICK["svr_points"]
    if not cases:
        raise CardioInputError("cases", "no case to reconstruct")
    steps = steps or DEFAULT_STEPS
    vr_points, svr_points = vr_points or VR_POINTS, svr_points or SVR_POINTS
    dev = select_device(device)
    template = load_template()
    progress(f"recon ablation: {len(cases)} case(s), {steps} fit steps on {dev}, {torch.get_num_threads()} torch threads")
    if dev.type != "cpu":
        # A GPU's first fit also pays for its context, kernel loading and library handles:
        # a short untimed fit first, so that every timed fit is a steady-state one.
        progress(f"warming up {dev} with a 2-step fit of {cases[0].name} (not timed)")
        fit_template(cases[0].labels, cases[0].ijk_to_ras, cases[0].rules, template, steps=2, resolve=False, device=dev)
    per_method: dict[str, list[Row]] = {method: [] for method in METHODS}
    for case in cases:
        label_of = {s.name: s.label for s in case.rules.structures}
        for method in METHODS:
            progress(f"{case.name} ({case.size}): {method} ...")
            start = time.perf_counter()
            stages = ""
            if method in _FIT_SWITCHES:
                result = fit_template(case.labels, case.ijk_to_ras, case.rules, template, steps=steps, device=dev,
                                      **_FIT_SWITCHES[method])
                meshes = dict(zip(result.names, result.meshes(), strict=True))
                seconds = time.perf_counter() - start
                stages = " (" + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items() if k != "total") + ")"
            else:
                meshes, seconds = run_baseline_case(case.labels, case.ijk_to_ras, case.rules, label_of)
            scoring = time.perf_counter()
            metrics = evaluate_meshes(meshes, case.labels, case.ijk_to_ras, label_of, case.rules,
                                      vr_points=vr_points, svr_points=svr_points)
            row = _case_row(method, case, dev, metrics, seconds)
            per_method[method].append(row)
            # Each result as soon as it is known: a run stopped part-way still leaves its figures.
            progress(f"  -> {seconds:.2f} s{stages}; chamber Dice {row['chamber Dice']:.3f}, "
                     f"myo Dice {row['myo Dice']:.3f}, max VR {row['max VR (%)']:.3f} %; "
                     f"scored in {time.perf_counter() - scoring:.1f} s")
    rows = [row for method in METHODS for row in per_method[method]]
    return rows + [_summary_row(method, per_method[method]) for method in METHODS]


def mie_versus_surface(rows: Sequence[Row]) -> dict[str, Any]:
    """The ablation target from the summary rows: MIE's mean VR cut (%) relative to surface-only
    (and, for reading, the cut of the worst rule's VR), the mean Dice gap (MIE minus surface-only),
    and whether the mean VR cut and the gap meet their targets."""
    summary = {row["method"]: row for row in rows if str(row["case"]).startswith("median")}
    mie, surface = summary["MIE"], summary["surface only"]

    def cut(key: str) -> float:
        return 100.0 * (1.0 - mie[key] / surface[key]) if surface[key] > 0 else float("nan")

    gap = mie["mean Dice"] - surface["mean Dice"]
    vr_cut = cut("mean VR (%)")
    return {"vr_cut_percent": vr_cut, "max_vr_cut_percent": cut("max VR (%)"), "dice_gap": gap,
            "met": bool(vr_cut >= VR_CUT_TARGET_PERCENT and abs(gap) <= DICE_GAP_TARGET)}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """Rows as an aligned text table of ``columns`` (None: "-", booleans: yes/no)."""
    table = [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def format_recon_rows(rows: Sequence[Row]) -> str:
    """The ablation table, then the targets beside the measured figures."""
    ablation = mie_versus_surface(rows)
    lines = [
        format_table(rows, COLUMNS),
        f"targets (issue CardioReconstruct): Dice >= {CHAMBER_DICE_TARGET:g} per chamber ({', '.join(CHAMBERS)}) "
        f"and >= {MYOCARDIUM_DICE_TARGET:g} myocardium, VR <= {VR_TARGET_PERCENT:g} % every rule, watertight, "
        f"no self-intersections ('targets met': every case); fit <= {FIT_TARGET_S['cpu']:g} s per case on 2 CPU "
        f"cores, <= {FIT_TARGET_S['cuda']:g} s on an H100",
        f"MIE vs surface only (medians): mean VR lower by {ablation['vr_cut_percent']:.1f} % (target >= "
        f"{VR_CUT_TARGET_PERCENT:g} %; worst rule's VR lower by {ablation['max_vr_cut_percent']:.1f} %), mean Dice "
        f"{ablation['dice_gap']:+.4f} (target within {DICE_GAP_TARGET:g}): {'met' if ablation['met'] else 'NOT met'}",
    ]
    return "\n".join(lines)
