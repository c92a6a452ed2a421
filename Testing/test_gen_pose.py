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
