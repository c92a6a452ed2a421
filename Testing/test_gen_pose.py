"""Rigid poses for CardioGen: Kabsch alignment, the reconstruct-and-align pose fit, pose blending.

Known truth: a toy "shape model" whose reconstruction is always one fixed shape in its own frame
(a model with no shape modes), so the best pose of that shape moved by a known motion is the
motion's inverse, and the reconstruction error there is zero.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from cardiocore.errors import CardioInputError
from cardiocore.gen.pose import RigidPose, blend_poses, check_size, fit_pose, kabsch_pose
from cardiocore.phantoms.lv import lv_cohort


def _shape() -> torch.Tensor:
    """An LV phantom (V, 3) mm: an asymmetric shape, so its pose is defined."""
    return lv_cohort(1, seed=2, n_circumferential=12, n_longitudinal=8)[0][0].verts.double()


def _motion(rotvec: tuple[float, float, float], shift: tuple[float, float, float]) -> RigidPose:
    return RigidPose(torch.as_tensor(Rotation.from_rotvec(rotvec).as_matrix()), torch.tensor(shift, dtype=torch.float64))


def test_kabsch_recovers_a_known_motion_and_inverse_undoes_it():
    shape = _shape()
    motion = _motion((0.4, -1.1, 0.7), (80.0, -25.0, 140.0))
    found = kabsch_pose(shape, motion.apply(shape))
    torch.testing.assert_close(found.rotation, motion.rotation, atol=1e-9, rtol=0)
    torch.testing.assert_close(found.translation, motion.translation, atol=1e-7, rtol=0)
    torch.testing.assert_close(motion.inverse().apply(motion.apply(shape)), shape, atol=1e-9, rtol=0)
    assert found.angle_degrees() == pytest.approx(math.degrees(math.sqrt(0.4**2 + 1.1**2 + 0.7**2)))


def test_pose_fit_puts_a_moved_shape_back_where_the_model_reconstructs_it():
    canonical = _shape()
    calls = []

    def reconstruct(moved: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return canonical.clone()

    motion = _motion((2.0, 0.3, -0.9), (-60.0, 30.0, 200.0))  # 2.2 rad and 210 mm away
    fit = fit_pose(motion.apply(canonical), canonical, reconstruct)
    assert fit.error_mm < 1e-6
    torch.testing.assert_close(fit.pose.apply(motion.apply(canonical)), canonical, atol=1e-6, rtol=0)
    assert len(calls) <= 4  # identity, first alignment, one round that settles


def test_pose_fit_keeps_a_shape_in_the_model_frame_where_it_is():
    canonical = _shape()
    mean = canonical + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) * canonical[:, :1] * 0.05  # a sheared mean
    fit = fit_pose(canonical, mean, lambda moved: canonical.clone())
    assert fit.error_mm == 0.0 and fit.pose.angle_degrees() == 0.0  # identity reconstructs it exactly


def test_blended_poses_run_from_one_to_the_other():
    start, end = _motion((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), _motion((0.0, 0.0, 1.2), (30.0, -10.0, 4.0))
    centre = torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64)
    poses = blend_poses(start, end, torch.tensor([0.0, 0.5, 1.0]), centre)
    torch.testing.assert_close(poses[0].rotation, start.rotation, atol=1e-12, rtol=0)
    torch.testing.assert_close(poses[2].rotation, end.rotation, atol=1e-12, rtol=0)
    torch.testing.assert_close(poses[2].translation, end.translation, atol=1e-9, rtol=0)
    assert poses[1].angle_degrees() == pytest.approx(math.degrees(0.6))
    torch.testing.assert_close(poses[1].apply(centre), (start.apply(centre) + end.apply(centre)) / 2, atol=1e-9, rtol=0)


def test_a_mesh_in_other_units_is_refused_by_name():
    shape = _shape()
    check_size(shape * 1.3, shape, "bigger heart")  # a larger heart is fine
    with pytest.raises(CardioInputError, match=r"lv_in_metres.*0.001 times.*metres or cm"):
        check_size(shape / 1000.0, shape, "lv_in_metres")
    with pytest.raises(CardioInputError, match="smaller than mm"):
        check_size(shape * 1000.0, shape, "lv_in_microns")


def test_bundled_model_reconstructs_real_shapes_anywhere_as_well_as_in_their_frame():
    """Real data: held-out CAP shapes moved by random rigid motions (up to 180 degrees, ~100 mm) are
    reconstructed by the bundled model as well as where they lie in the atlas's frame."""
    import numpy as np
    from conftest import shared_file

    from cardiocore.gen.cli import held_out_references, load_model

    model = load_model(None, "cpu")
    shapes = held_out_references(model, str(shared_file("cap_lv_atlas/cap_lv_atlas_dev.npz")), 6).double()
    rng = np.random.default_rng(0)
    for shape in shapes:
        in_frame = model.pose_of(shape).error_mm
        plain = float(torch.linalg.vector_norm(model.reconstruct(shape.float()[None])[0] - shape, dim=-1).mean())
        assert in_frame <= plain + 1e-6 and in_frame < 1.5
        motion = RigidPose(torch.as_tensor(Rotation.random(random_state=rng).as_matrix()),
                           torch.as_tensor(rng.normal(0.0, 100.0, 3)))
        moved = model.pose_of(motion.apply(shape))
        assert moved.error_mm <= in_frame + 0.05  # measured: within 0.002 mm (motions of 88-162 degrees)
        as_lying = model.reconstruct(motion.apply(shape).float()[None])[0].double()
        assert float(torch.linalg.vector_norm(as_lying - motion.apply(shape), dim=-1).mean()) > 10.0


def _scattered(cohort, seed: int = 0):
    """The cohort with every subject (ED and ES together) moved by its own random rigid motion, as
    meshes in each patient's scanner frame would be."""
    import dataclasses

    import numpy as np

    rng = np.random.default_rng(seed)
    verts = cohort.verts.double().clone()
    for subject in dict.fromkeys(cohort.subject_ids):
        items = [i for i, s in enumerate(cohort.subject_ids) if s == subject]
        motion = RigidPose(torch.as_tensor(Rotation.random(random_state=rng).as_matrix()),
                           torch.as_tensor(rng.normal(0.0, 80.0, 3)))
        verts[items] = motion.apply(verts[items])
    return dataclasses.replace(cohort, verts=verts.float())


def test_cohort_alignment_undoes_per_subject_motions_and_keeps_each_subject_whole():
    from gen_helpers import phantom_cohort

    from cardiocore.gen.pose import aligned_cohort, key_items, pose_spread, procrustes_reference

    cohort = phantom_cohort(8)
    scattered = _scattered(cohort)
    assert key_items(cohort) == list(range(0, 16, 2))  # each subject's ED item
    assert max(pose_spread(cohort)) < 3.0 and min(pose_spread(scattered)) > 30.0  # degrees, mm
    straight = aligned_cohort(cohort, procrustes_reference(cohort.verts[key_items(cohort)]))
    again = aligned_cohort(scattered, procrustes_reference(scattered.verts[key_items(scattered)]))
    # The same cohort up to one rigid motion of the whole (the reference sits in the first subject's frame).
    whole = kabsch_pose(again.verts.double().reshape(-1, 3), straight.verts.double().reshape(-1, 3))
    torch.testing.assert_close(whole.apply(again.verts.double()), straight.verts.double(), atol=1e-3, rtol=0)
    # ED and ES of a subject moved together: the vertex distances between the two are kept.
    for ed, es in ((0, 1), (6, 7)):
        torch.testing.assert_close(torch.cdist(again.verts[ed].double(), again.verts[es].double()),
                                   torch.cdist(cohort.verts[ed].double(), cohort.verts[es].double()), atol=1e-3, rtol=0)


def test_training_on_a_scattered_cohort_warns_and_aligns_when_asked(tmp_path):
    import dataclasses

    from gen_helpers import phantom_cohort

    from cardiocore.gen.model import CardioGenModel
    from cardiocore.gen.training import GenTrainingSpec, train_cardiogen

    scattered = _scattered(phantom_cohort(24))
    spec = dataclasses.replace(GenTrainingSpec.tiny(), models=("ED",))
    with pytest.warns(UserWarning, match=r"orientations differ by \d+ degrees .* own frames.*--align"):
        plain = train_cardiogen(scattered, tmp_path / "plain", spec, progress=lambda *a: None)
    aligned = train_cardiogen(scattered, tmp_path / "aligned", dataclasses.replace(spec, align=True),
                              progress=lambda *a: None)
    loaded = CardioGenModel.load(aligned.model_path)
    assert plain.model.alignment is None and loaded.card["spec"]["align"] is True
    torch.testing.assert_close(loaded.alignment, aligned.model.alignment)
    test_raw, test_aligned = plain.model.splits_of(scattered)[-1], loaded.splits_of(scattered)[-1]
    assert test_raw.subject_ids == test_aligned.subject_ids

    def error(model, part):
        return float(torch.linalg.vector_norm(model.reconstruct(part.verts) - part.verts, dim=-1).mean())

    assert error(loaded, test_aligned) < 0.5 * error(plain.model, test_raw)  # held-out subjects, aligned alike
