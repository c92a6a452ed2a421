"""``cardio bench recon --predict``: speed, memory and held-out accuracy of Predict mode.

Speed rows: :func:`cardiocore.recon.predict.predict_meshes` (resampling onto the network grid,
normalisation, the network, meshes to RAS) on

- a 128^3 image at 1.5 mm of the phantom heart (:func:`cardiocore.phantoms.heart.heart_label_phantom`
  labels painted with CT-like intensities plus noise), the issue's speed case;
- a 512 x 512 x 300 float32 image at 0.5 x 0.5 x 0.6 mm (noise: only time and memory count), the
  issue's memory case.

With ``refine_steps`` > 0 the same calls refine the meshes against the network's segmentation
(:mod:`cardiocore.recon.refine`) first. Each is timed ``repeats`` times after one warm-up call
(median reported, seconds); ``peak_rss_mb``
is the growth of the process's peak resident memory during the calls (MB, Linux ``ru_maxrss``),
on top of the input array itself.

Accuracy rows: :func:`cardiocore.recon.predict_eval.evaluate_on_synthetic` on held-out label maps
(medians over images of each structure's Dice); the target is Dice >= 0.85 for every chamber.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cardiocore.bench.recon import CHAMBERS
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.predict import MeshPredictor, predict_meshes
from cardiocore.recon.predict_eval import evaluate_on_synthetic, summarise
from cardiocore.recon.synth import LabelCase, SynthOptions

PREDICT_TARGET_S = {"cpu": 30.0, "cuda": 1.0}
PREDICT_DICE_TARGET = 0.85
# CT-like intensities (HU) per phantom label 0..7: background, LV blood, myocardium, RV, LA, RA, aorta, PA.
_PHANTOM_HU = np.array([-50.0, 350.0, 100.0, 330.0, 320.0, 300.0, 380.0, 340.0], dtype=np.float32)

Row = dict[str, Any]


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def phantom_image(shape: tuple[int, int, int] = (128, 128, 128), spacing_mm: float = 1.5,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image (I, J, K) float32 (HU plus noise of 20 HU) of the phantom heart, and its
    (4, 4) voxel-to-RAS matrix (mm)."""
    phantom = heart_label_phantom(shape=shape, spacing=(spacing_mm,) * 3, seed=seed)
    rng = np.random.default_rng(seed)
    image = _PHANTOM_HU[phantom.labels] + rng.normal(0.0, 20.0, phantom.labels.shape).astype(np.float32)
    return image.astype(np.float32), phantom.ijk_to_ras


def _large_image(shape: tuple[int, int, int], spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return image, np.diag([*spacing_mm, 1.0])


def _timed(predictor: MeshPredictor, image: np.ndarray, ijk_to_ras: np.ndarray,
           repeats: int, refine_steps: int) -> tuple[float, float, dict[str, float]]:
    """Median seconds of ``repeats`` predictions after a warm-up, the peak RSS growth (MB), and
    the last call's seconds per stage (resampling, network, refinement, resolution)."""
    before = _peak_rss_mb()
    predict_meshes(image, ijk_to_ras, predictor, refine_steps=refine_steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result, _ = predict_meshes(image, ijk_to_ras, predictor, refine_steps=refine_steps)
        if next(predictor.net.parameters()).is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    stages = {"resample": result.seconds["prepare"], "network": result.seconds["optimise"],
              "refine": result.seconds["refine"], "resolve": result.seconds["resolve"]}
    return statistics.median(times), _peak_rss_mb() - before, stages


def predict_speed_rows(predictor: MeshPredictor, repeats: int = 3, large: bool = True, refine_steps: int = 0,
                       progress: Callable[[str], None] = print) -> list[Row]:
    """The speed and memory rows of the module docstring, on the predictor's device."""
    device = next(predictor.net.parameters()).device
    target = PREDICT_TARGET_S.get(device.type)
    cases = [("phantom 128^3 @ 1.5 mm", lambda: phantom_image())]
    if large:
        cases.append(("noise 512x512x300 @ 0.5x0.5x0.6 mm", lambda: _large_image((512, 512, 300), (0.5, 0.5, 0.6))))
    rows = []
    for name, make in cases:
        progress(f"predict speed: {name}" + (f", refined {refine_steps} steps" if refine_steps else "") + " ...")
        image, matrix = make()
        seconds, grown, stages = _timed(predictor, image, matrix, repeats, refine_steps)
        rows.append({"input": name, "refine_steps": refine_steps, "device": str(device),
                     "threads": torch.get_num_threads(),
                     "median_s": seconds, "target_s": target,
                     "meets": None if target is None else seconds <= target,
                     "input_mb": image.nbytes / 2**20, "peak_rss_growth_mb": grown,
                     **{f"{stage}_s": value for stage, value in stages.items()}})
        progress(f"  -> median {seconds:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                 + f"), peak memory +{grown:.0f} MB")
        del image
    return rows


def predict_accuracy_rows(predictor: MeshPredictor, cases: Sequence[LabelCase], images_per_case: int = 4,
                          refine_steps: int = 0, contrast: str = "random",
                          progress: Callable[[str], None] = print) -> tuple[list[Row], Row]:
    """Per-image rows on held-out label maps and a summary row with the chamber Dice target;
    the images' intensities follow the ``contrast`` model of :class:`SynthOptions`."""
    rows = evaluate_on_synthetic(predictor, cases, images_per_case=images_per_case, refine_steps=refine_steps,
                                 options=SynthOptions(contrast=contrast), progress=progress)
    summary: Row = {"case": "median", "contrast": contrast, "refine_steps": refine_steps,
                    **summarise(rows, predictor.names)}
    chambers = [summary[f"median_dice_{n}"] for n in CHAMBERS if f"median_dice_{n}" in summary]
    summary["worst_chamber_dice"] = min(chambers) if chambers else float("nan")
    summary["dice_target"] = PREDICT_DICE_TARGET
    summary["meets"] = bool(chambers) and min(chambers) >= PREDICT_DICE_TARGET
    return rows, summary
