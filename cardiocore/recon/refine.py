"""Refinement of Predict mode's meshes against the network's own segmentation.

The Predict network has two heads over one U-Net: a segmentation head (per-voxel structure
logits on its grid) and the graph decoder that deforms the template. On held-out images the
decoder's thin structures are its weak point (the LV myocardium above all), while the
segmentation head, trained on the same images, traces them better, and the decoder's large
chambers are better than the head's (fitted to the head's argmax alone, the held-out LV cavity
fell from Dice 0.92 to 0.88, ``docs/benchmarks/recon/refine-1.3.0.txt`` before 2026-12-07).
Refinement therefore fits to a label map that takes both into account
(:func:`fused_segmentation`: each voxel takes the structure of the highest head probability plus
:data:`DECODER_VOTE` for the structure whose decoder mesh holds the voxel), and runs
:func:`cardiocore.recon.fit.fit_template` from the predicted meshes: the same occupancy, surface,
MIE, Laplacian and normal terms as Fit mode (the last two weighted more, :data:`REFINE_WEIGHTS`),
so the meshes keep the template topology and stay smooth, only pulled onto that label map's
boundaries. It costs a short fit (tens of steps) on top of the forward pass;
``cardio bench recon --predict-only --refine-steps N`` measures both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.recon.fit import FitWeights, fit_template
from cardiocore.recon.resolve import Mesh
from cardiocore.recon.rules import RuleSet, Structure
from cardiocore.recon.template import HeartTemplate

DEFAULT_REFINE_STEPS = 60
"""Optimisation steps of a refinement (coarse 30 %, then fine)."""

REFINE_WEIGHTS = FitWeights(laplacian=2.0, normal=10.0)
"""Loss weights of a refinement: Fit mode's, with 10x the Laplacian and normal-consistency
weights. The target is an argmax segmentation on 3 mm voxels, blockier and noisier than a
user's label map; with Fit's own weights the atria and great vessels folded (up to 49
self-intersecting face pairs left after the resolution step on 3 of 8 held-out images), with
these none did on the images checked, at the same Dice (``docs/benchmarks/recon/refine-1.2.0.txt``)."""

DECODER_VOTE = 0.2
"""What a decoder mesh adds to the head's probability (0-1) of its structure at the voxels it
holds (and the background where no mesh does): a voxel keeps the decoder's structure unless the
head is this much surer of another. 0 fits the head's argmax alone; 1 or more the decoder's own
voxelisation. The myocardium falls as the vote rises and the chambers gain; 0.2 is the smallest
vote that kept every chamber's median Dice >= 0.85 (the Predict target) on tuning images of all
three contrasts that no reported figure uses (``docs/benchmarks/recon/refine-target-tuning.txt``;
with 0 the LV cavity was 0.84)."""

MIN_VOXELS = 20
"""Structures with fewer voxels in the segmentation are not refined (nothing to fit to)."""

_GREY = (128, 128, 128)


def segmentation_rule_set(names: Sequence[str]) -> RuleSet:
    """The rule set of a network segmentation over ``names``: structure ``names[s]`` has label
    ``s + 1`` (0 is background) and every pair is disjoint, as in any label map. Colours and
    aliases come from the default cardiac set where it knows the name."""
    default = RuleSet.default()
    known = set(default.names)
    structures = tuple(
        Structure(name, s + 1, default.structure(name).color if name in known else _GREY,
                  default.structure(name).aliases if name in known else ())
        for s, name in enumerate(names)
    )
    return RuleSet.label_map(structures)


def fused_segmentation(
    probabilities: torch.Tensor | np.ndarray,
    meshes: Sequence[Mesh],
    ijk_to_ras: np.ndarray,
    decoder_vote: float = DECODER_VOTE,
) -> np.ndarray:
    """The refinement target: the head's probabilities with a vote for the decoder's meshes.

    Args:
        probabilities: (S + 1, I, J, K) per-voxel probabilities of the segmentation head (channel 0
            background, s + 1 structure s), summing to 1 over channels.
        meshes: per structure s, the decoder's (vertices (V_s, 3) RAS mm, faces (F_s, 3) int64),
            closed.
        ijk_to_ras: (4, 4) voxel-to-RAS matrix of the probability grid, mm.
        decoder_vote: added to channel s + 1 at the voxels whose centre lies inside mesh s, and to
            channel 0 at those inside no mesh (where meshes overlap, both get it).

    Returns:
        (I, J, K) int64 structure index (0 background, s + 1 structure s): the argmax.
    """
    scores = torch.as_tensor(probabilities, dtype=torch.float32).cpu().clone()
    if scores.dim() != 4 or scores.shape[0] != len(meshes) + 1:
        raise CardioInputError("probabilities", f"must have shape (S + 1, I, J, K) for {len(meshes)} meshes, "
                                                f"got {tuple(scores.shape)}")
    if decoder_vote < 0:
        raise CardioInputError("decoder vote", f"must be 0 or more, got {decoder_vote}")
    claimed = torch.zeros(scores.shape[1:], dtype=torch.bool)
    for s, (verts, faces) in enumerate(meshes):
        inside = voxelize_mesh(verts.detach().cpu(), faces.cpu(), scores.shape[1:], ijk_to_ras)
        scores[s + 1] += decoder_vote * inside
        claimed |= inside
    scores[0] += decoder_vote * ~claimed
    return scores.argmax(dim=0).numpy()


def refine_to_segmentation(
    meshes: Sequence[Mesh],
    names: Sequence[str],
    labels: np.ndarray,
    labels_ijk_to_ras: np.ndarray,
    *,
    steps: int = DEFAULT_REFINE_STEPS,
    only: Collection[str] | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[Mesh], tuple[str, ...]]:
    """Pull predicted meshes onto the network's segmentation.

    Args:
        meshes: per structure of ``names``, (vertices (V_s, 3) RAS mm, faces (F_s, 3) int64).
        names: the structures, in the segmentation's label order (``names[s]`` is label s + 1).
        labels: (I, J, K) integer structure index of the segmentation (0 background).
        labels_ijk_to_ras: (4, 4) voxel-to-RAS matrix of ``labels``, mm; the fit works at its
            mean voxel size.
        steps: fit steps (>= 1).
        only: refine just these structures (default all); the others come back as they were.
        device: where the fit runs.
        progress: ``progress(step, steps)`` after each step; should_stop: ends the fit early
            (the meshes are those reached so far).

    Returns:
        The meshes in the order of ``names`` (no resolution step: the caller resolves all
        structures together), and the names of the structures refined: one outside ``only`` or
        with fewer than :data:`MIN_VOXELS` voxels in ``labels``, or whose fit collapsed
        (``FitResult.collapsed``), keeps its predicted mesh.
    """
    if len(meshes) != len(names):
        raise CardioInputError("meshes", f"{len(meshes)} meshes for {len(names)} structure names")
    if steps < 1:
        raise CardioInputError("refine steps", f"must be at least 1, got {steps}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(names) + 1)
    seen = [name for s, name in enumerate(names)
            if counts[s + 1] >= MIN_VOXELS and (only is None or name in only)]
    kept = [(v.float().cpu(), f.long().cpu()) for v, f in meshes]
    if not seen:
        return kept, ()
    start = HeartTemplate(tuple(names), tuple(v for v, _ in kept), tuple(f for _, f in kept), "predicted meshes")
    voxel_mm = float(np.linalg.norm(np.asarray(labels_ijk_to_ras, dtype=np.float64)[:3, :3], axis=0).mean())
    result = fit_template(
        labels, labels_ijk_to_ras, segmentation_rule_set(names).subset(seen), start.subset(seen), steps=steps,
        weights=REFINE_WEIGHTS, resolve=False, mirror_check=False, device=device, spacing_mm=voxel_mm, min_voxels=MIN_VOXELS,
        coarse_fraction=0.3, should_stop=should_stop,
        progress=None if progress is None else (lambda step, total, _terms: progress(step, total)),
    )
    refined = dict(zip(result.names, zip(result.verts, result.faces, strict=True), strict=True))
    return [refined.get(name, mesh) for name, mesh in zip(names, kept, strict=True)], result.names
