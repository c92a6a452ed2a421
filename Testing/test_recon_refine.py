"""Predict mode's refinement against the network's own segmentation (:mod:`cardiocore.recon.refine`).

Known truth: the seven-structure phantom heart (:func:`cardiocore.phantoms.heart.heart_label_phantom`)
stands in for a network segmentation; the end-to-end test runs the bundled network on a CT-like
image of the phantom and checks that refinement brings the meshes onto the network's own labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiocore.bench.recon_predict import phantom_image
from cardiocore.errors import CardioInputError
from cardiocore.geometry.primitives import box_mesh
from cardiocore.geometry.voxelize import voxelize_mesh
from cardiocore.phantoms.heart import heart_label_phantom
from cardiocore.recon.fit import fit_template
from cardiocore.recon.predict import MeshPredictor, finish_meshes, predict_meshes, run_network
from cardiocore.recon.refine import fused_segmentation, refine_to_segmentation, segmentation_rule_set
from cardiocore.recon.rules import RuleSet
from cardiocore.recon.synth import image_to_frame
from cardiocore.recon.template import load_template


def _dice(verts: torch.Tensor, faces: torch.Tensor, labels: np.ndarray, label: int, ijk_to_ras: np.ndarray) -> float:
    mask = voxelize_mesh(verts, faces, labels.shape, ijk_to_ras).numpy()
    truth = labels == label
    return float(2 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth)))


def test_fused_segmentation_keeps_the_decoders_structure_unless_the_head_is_surer_of_another() -> None:
    """Known truth on a 10-voxel row (1 mm voxels): the head says structure 1 at 0.7 on x = 0-4
    and structure 2 at 0.9 on x = 5-7 (background elsewhere, at 1); the decoder's mesh of
    structure 1 holds x = 3-7. With a vote of 0.5 the decoder wins where the head's margin is
    below 0.5 (x = 0-2 background, x = 3-4 structure 1) and loses where it is not (x = 5-7
    structure 2); a vote of 0 is the head's argmax, a vote of 1 the decoder's voxelisation."""
    probabilities = torch.zeros(3, 10, 1, 1)
    probabilities[0] = 1.0
    probabilities[:, :5] = torch.tensor([0.3, 0.7, 0.0])[:, None, None, None]
    probabilities[:, 5:8] = torch.tensor([0.1, 0.0, 0.9])[:, None, None, None]
    decoder = [box_mesh((5.0, 1.0, 1.0), (5.0, 0.0, 0.0)), box_mesh((0.5, 0.5, 0.5), (50.0, 0.0, 0.0))]

    def row(vote: float) -> list[int]:
        return fused_segmentation(probabilities, decoder, np.eye(4), vote)[:, 0, 0].tolist()

    assert row(0.5) == [0, 0, 0, 1, 1, 2, 2, 2, 0, 0]
    assert row(0.0) == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
    assert row(1.0) == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(CardioInputError, match="probabilities"):
        fused_segmentation(probabilities[:2], decoder, np.eye(4))
    with pytest.raises(CardioInputError, match="decoder vote"):
        fused_segmentation(probabilities, decoder, np.eye(4), -0.1)


def test_segmentation_rule_set_codes_names_in_order_and_keeps_them_apart() -> None:
    rules = segmentation_rule_set(["rv", "lv_cavity", "my_valve"])
    assert [(s.name, s.label) for s in rules.structures] == [("rv", 1), ("lv_cavity", 2), ("my_valve", 3)]
    assert rules.structure("rv").color == RuleSet.default().structure("rv").color
    assert {frozenset((r.a, r.b)) for r in rules.rules if r.kind == "disjoint"} == {
        frozenset(p) for p in (("rv", "lv_cavity"), ("rv", "my_valve"), ("lv_cavity", "my_valve"))}


def test_refinement_follows_the_label_order_and_keeps_structures_it_cannot_see() -> None:
    """Start from the template roughly placed on a phantom (a 1-step fit), with the structures
    in an order that is not the default one and the segmentation coded in that order; the
    pulmonary artery is left out of the segmentation, so its mesh must come back untouched."""
    phantom = heart_label_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0), seed=4)
    rough = fit_template(phantom.labels, phantom.ijk_to_ras, RuleSet.default(), load_template(), steps=1,
                         resolve=False, spacing_mm=3.0)
    order = ["rv", "pulmonary_artery", "lv_myocardium", "lv_cavity", "la", "ra", "aorta"]
    by_name = dict(zip(rough.names, rough.meshes(), strict=True))
    meshes = [by_name[n] for n in order]
    default_label = {s.name: s.label for s in RuleSet.default().structures}
    coded = np.zeros_like(phantom.labels)
    for s, name in enumerate(order):
        if name != "pulmonary_artery":
            coded[phantom.labels == default_label[name]] = s + 1

    refined, names = refine_to_segmentation(meshes, order, coded, phantom.ijk_to_ras, steps=40)

    assert set(names) == set(order) - {"pulmonary_artery"}
    assert torch.equal(refined[1][0], meshes[1][0]) and torch.equal(refined[1][1], meshes[1][1])
    for s, name in enumerate(order):
        if name == "pulmonary_artery":
            continue
        before = _dice(*meshes[s], phantom.labels, default_label[name], phantom.ijk_to_ras)
        after = _dice(*refined[s], phantom.labels, default_label[name], phantom.ijk_to_ras)
        assert torch.equal(refined[s][1], meshes[s][1])  # template topology kept
        assert after > before + 0.05 and after > 0.7, (name, before, after)


def test_refinement_rejects_mismatched_input() -> None:
    verts, faces = torch.zeros(4, 3), torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    labels = np.zeros((8, 8, 8), dtype=np.int64)
    with pytest.raises(CardioInputError, match="2 meshes for 1 structure"):
        refine_to_segmentation([(verts, faces)] * 2, ["rv"], labels, np.eye(4))
    with pytest.raises(CardioInputError, match="refine steps"):
        refine_to_segmentation([(verts, faces)], ["rv"], labels, np.eye(4), steps=0)
    # A segmentation without the structure: nothing to fit to, the mesh comes back as it was.
    (kept,), names = refine_to_segmentation([(verts, faces)], ["rv"], labels, np.eye(4))
    assert names == () and torch.equal(kept[0], verts)
    # Structures outside ``only`` are not refined, even when the segmentation has them.
    labels[2:6, 2:6, 2:6] = 1
    (kept,), names = refine_to_segmentation([(verts, faces)], ["rv"], labels, np.eye(4), only=())
    assert names == () and torch.equal(kept[0], verts)


@pytest.fixture(scope="module")
def bundled() -> MeshPredictor:
    torch.manual_seed(0)
    return MeshPredictor.from_bundled(device="cpu")


def test_predict_refined_meshes_agree_better_with_the_networks_own_segmentation(bundled) -> None:
    """The bundled network on a CT-like phantom image: with refinement the meshes overlap the
    network's segmentation (the head's probabilities with the decoder's vote, the refinement
    target) more (mean Dice over structures on the network grid), keep the template topology,
    and the refinement time is reported."""
    image, matrix = phantom_image(seed=2)
    grid, frame_to_ras = image_to_frame(image, matrix, bundled.spec.grid_size, bundled.spec.spacing_mm)
    output = run_network(bundled, grid, frame_to_ras)
    decoded = list(zip(output.verts.split(bundled.net.sizes), bundled.template_faces, strict=True))
    target = fused_segmentation(output.probabilities, decoded, output.ijk_to_ras)

    def agreement(result) -> float:
        return float(np.mean([_dice(v, f, target, s + 1, output.ijk_to_ras)
                              for s, (v, f) in enumerate(zip(result.verts, result.faces, strict=True))]))

    plain, _ = predict_meshes(image, matrix, bundled)
    refined, _ = predict_meshes(image, matrix, bundled, refine_steps=30)
    assert plain.seconds["refine"] < 0.01 < refined.seconds["refine"]
    assert [f.shape for f in refined.faces] == [f.shape for f in bundled.template_faces]
    assert agreement(refined) > agreement(plain) + 0.03, (agreement(plain), agreement(refined))
    with pytest.raises(CardioInputError, match="refine steps"):
        finish_meshes(bundled, output, bundled.names, refine_steps=-1)
