"""Where a mesh sits relative to the frame a shape model was trained in, and back.

A CardioGen VAE has no pose invariance: it learnt shapes in the training data's frame (the CAP
atlas's LV frame), so a mesh of the same topology given in a scanner's RAS frame is encoded as
nonsense. Measured with the bundled model on 20 CAP shapes: mean per-vertex reconstruction error
0.57 mm in the data's frame, 12.8 mm after a 23 mm shift, 15.7 mm after a 30 degree rotation.

:func:`fit_pose` finds the rigid motion (rotation and translation, no scaling: the size is part of
the shape) that puts a mesh where the model reconstructs it best, the way an active shape model is
fitted: a first Procrustes alignment onto the model's mean shape, then alternately reconstructing
the aligned mesh and aligning the mesh onto that reconstruction, until the motion settles. On 300
CAP shapes (every 10th of the cohort) moved by random rotations and shifts of ~100 mm this gives a
median reconstruction error of 0.565 mm (p95 0.87 mm), the same as for the shapes in their own frame;
for shapes already in the frame the motion found is ~0.1 degree and ~0.1 mm
(``docs/benchmarks/cardiogen-eval/pose_invariance.py``).
Correspondence is by vertex index (same template), so each alignment is the closed-form Kabsch
solution (:meth:`scipy.spatial.transform.Rotation.align_vectors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp

from cardiocore.errors import CardioInputError

if TYPE_CHECKING:
    from cardiocore.gen.data import ShapeCohort

MAX_ROUNDS = 8
"""Most reconstruct-and-align rounds of :func:`fit_pose`."""

SETTLED_MM = 0.01
""":func:`fit_pose` stops when a round moves the vertices by less than this (RMS, mm)."""

SIZE_RATIO_LIMITS = (0.2, 5.0)
"""A mesh whose RMS radius is outside these multiples of the mean shape's is refused: its units
are not mm (metres, cm) or it is not the anatomy the model was trained on."""


@dataclass(frozen=True)
class RigidPose:
    """The rigid motion ``x -> x @ rotation.T + translation`` (mm): rotation (3, 3) and
    translation (3,), float64."""

    rotation: torch.Tensor
    translation: torch.Tensor

    @classmethod
    def identity(cls) -> RigidPose:
        return cls(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))

    def apply(self, verts: torch.Tensor) -> torch.Tensor:
        """Vertices (..., V, 3) mm moved, in their own dtype."""
        return verts @ self.rotation.to(verts.dtype).T + self.translation.to(verts.dtype)

    def inverse(self) -> RigidPose:
        rotation_back = self.rotation.T
        return RigidPose(rotation_back, -(self.translation @ rotation_back.T))

    def angle_degrees(self) -> float:
        return float(np.degrees(Rotation.from_matrix(self.rotation.numpy()).magnitude()))


def kabsch_pose(moving: torch.Tensor, target: torch.Tensor) -> RigidPose:
    """The rigid motion that best puts ``moving`` (V, 3) onto ``target`` (V, 3) in the least-squares
    sense, vertex by vertex (mm)."""
    moving, target = moving.double(), target.double()
    moving_centre, target_centre = moving.mean(dim=0), target.mean(dim=0)
    rotation, _ = Rotation.align_vectors((target - target_centre).numpy(), (moving - moving_centre).numpy())
    matrix = torch.as_tensor(rotation.as_matrix())
    return RigidPose(matrix, target_centre - moving_centre @ matrix.T)


@dataclass(frozen=True)
class PoseFit:
    """What :func:`fit_pose` found: the motion into the model's frame, the mesh reconstructed there
    (V, 3) mm in the model's frame, and its mean per-vertex distance to the moved mesh (mm)."""

    pose: RigidPose
    reconstruction: torch.Tensor
    error_mm: float


def _scored(verts: torch.Tensor, pose: RigidPose, reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> PoseFit:
    moved = pose.apply(verts)
    reconstruction = reconstruct(moved).double()
    return PoseFit(pose, reconstruction, float((reconstruction - moved).norm(dim=-1).mean()))


def check_size(verts: torch.Tensor, mean_shape: torch.Tensor, name: str) -> None:
    """Refuse a mesh (V, 3) whose RMS radius about its centroid is far from the mean shape's
    (:data:`SIZE_RATIO_LIMITS`), naming it and the likely unit mistake."""
    def radius(points: torch.Tensor) -> float:
        points = points.double()
        return float((points - points.mean(dim=0)).square().sum(dim=1).mean().sqrt())

    ratio = radius(verts) / radius(mean_shape)
    low, high = SIZE_RATIO_LIMITS
    if not low <= ratio <= high:
        unit = "metres or cm" if ratio < low else "a unit smaller than mm"
        raise CardioInputError(
            name, f"is {ratio:.3g} times the size of the model's mean shape",
            f"the model works in mm: is the mesh in {unit}? Rescale it to mm first",
        )


def fit_pose(
    verts: torch.Tensor,
    mean_shape: torch.Tensor,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    rounds: int = MAX_ROUNDS,
) -> PoseFit:
    """The rigid motion that puts a mesh where a shape model reconstructs it best (module docstring).

    Args:
        verts: the mesh (V, 3) mm, in any frame, in the model's vertex order.
        mean_shape: the model's mean shape (V, 3) mm, in its training frame.
        reconstruct: the model's reconstruction of a mesh (V, 3) mm in its frame.
        rounds: most reconstruct-and-align rounds after the first alignment.

    Returns:
        The best of the motions tried, the identity included: a mesh already in the model's frame
        keeps its place unless a motion reconstructs it better.
    """
    verts = verts.double()
    current = _scored(verts, kabsch_pose(verts, mean_shape), reconstruct)
    best = min(_scored(verts, RigidPose.identity(), reconstruct), current, key=lambda fit: fit.error_mm)
    for _ in range(rounds):
        pose = kabsch_pose(verts, current.reconstruction)
        step_mm = float((pose.apply(verts) - current.pose.apply(verts)).square().sum(dim=1).mean().sqrt())
        current = _scored(verts, pose, reconstruct)
        best = min(best, current, key=lambda fit: fit.error_mm)
        if step_mm < SETTLED_MM:
            break
    return best


def blend_poses(start: RigidPose, end: RigidPose, fractions: torch.Tensor, centre: torch.Tensor) -> list[RigidPose]:
    """Rigid motions evenly between two (rotation by spherical interpolation, the image of
    ``centre`` (3,) mm on the straight line between its two images), at ``fractions`` (n,) in [0, 1]."""
    rotations = Rotation.from_matrix(np.stack([start.rotation.numpy(), end.rotation.numpy()]))
    blended = Slerp([0.0, 1.0], rotations)(fractions.double().numpy()).as_matrix()
    centre = centre.double()
    centre_start, centre_end = start.apply(centre), end.apply(centre)
    poses = []
    for fraction, matrix in zip(fractions.double(), blended, strict=True):
        rotation = torch.as_tensor(matrix)
        image = torch.lerp(centre_start, centre_end, fraction)
        poses.append(RigidPose(rotation, image - centre @ rotation.T))
    return poses


# ---------------------------------------------------------------------------- cohorts
SCATTERED_DEGREES = 5.0
SCATTERED_MM = 15.0
"""Training warns when the subjects' orientations differ from their mean by more than
``SCATTERED_DEGREES`` or their centroids from theirs by more than ``SCATTERED_MM`` (medians,
:func:`pose_spread`): the meshes lie in their own frames, e.g. each patient's scanner frame."""


def key_items(cohort: ShapeCohort) -> list[int]:
    """Per subject, in order of first appearance, the index of the item its pose is taken from: its
    ED shape, else its first one. ED and ES of a subject move together, keeping the motion between them."""
    keys: dict[str, int] = {}
    for index, (subject, phase) in enumerate(zip(cohort.subject_ids, cohort.phases, strict=True)):
        if subject not in keys or (phase == "ED" and cohort.phases[keys[subject]] != "ED"):
            keys[subject] = index
    return list(keys.values())


def procrustes_reference(shapes: torch.Tensor, rounds: int = MAX_ROUNDS) -> torch.Tensor:
    """Generalised Procrustes mean (V, 3) float64 mm of shapes (N, V, 3) mm, rigid (no scaling), in
    the frame of the first shape: each round aligns every shape onto the current mean and puts the
    new mean back onto the first shape, until the mean moves by less than :data:`SETTLED_MM`."""
    shapes = shapes.double()
    anchor = reference = shapes[0]
    for _ in range(rounds):
        mean = torch.stack([kabsch_pose(shape, reference).apply(shape) for shape in shapes]).mean(dim=0)
        mean = kabsch_pose(mean, anchor).apply(mean)
        step_mm = float((mean - reference).square().sum(dim=1).mean().sqrt())
        reference = mean
        if step_mm < SETTLED_MM:
            break
    return reference


def aligned_cohort(cohort: ShapeCohort, reference: torch.Tensor) -> ShapeCohort:
    """The cohort with each subject moved rigidly so that its key shape (:func:`key_items`) lies on
    ``reference`` (V, 3) mm as well as it can; all of a subject's shapes move together."""
    verts = cohort.verts.double().clone()
    items: dict[str, list[int]] = {}
    for index, subject in enumerate(cohort.subject_ids):
        items.setdefault(subject, []).append(index)
    for key in key_items(cohort):
        subject_items = items[cohort.subject_ids[key]]
        verts[subject_items] = kabsch_pose(verts[key], reference).apply(verts[subject_items])
    return dataclasses.replace(cohort, verts=verts.float())


def pose_spread(cohort: ShapeCohort) -> tuple[float, float]:
    """How scattered a cohort's subjects are: :func:`shapes_spread` of their key shapes
    (:func:`key_items`).

    Measured: the CAP atlas (aligned already) 0.12 degrees and 0.15 mm; the tests' phantom cohort
    (one frame, lengths varying) 0.2 degrees and 2.4 mm; CAP subjects each moved at random by ~5
    degrees and ~5 mm: 4.5 degrees and 7.8 mm; by ~10 degrees and ~10 mm: 8.7 degrees and 15.5 mm.
    """
    return shapes_spread(cohort.verts[key_items(cohort)])


def shapes_spread(shapes: torch.Tensor) -> tuple[float, float]:
    """How scattered shapes (N, V, 3) mm of one template are: the median angle (degrees) between a
    shape's orientation (its rotation onto their Procrustes mean) and their mean orientation, and the
    median distance (mm) of their centroids from their mean."""
    shapes = shapes.double()
    if shapes.shape[0] < 2:
        return 0.0, 0.0
    reference = procrustes_reference(shapes)
    rotations = Rotation.from_matrix(np.stack([kabsch_pose(shape, reference).rotation.numpy() for shape in shapes]))
    angles = (rotations.mean().inv() * rotations).magnitude()
    centroids = shapes.mean(dim=1)
    offsets = (centroids - centroids.mean(dim=0)).norm(dim=1)
    return float(np.degrees(np.median(angles))), float(offsets.median())


def frame_problems(generated: torch.Tensor, reference: torch.Tensor) -> list[str]:
    """Why two sets of shapes (N, V, 3) and (M, V, 3) mm of one template cannot be compared where
    they lie (empty when they can): either set scattered (:func:`shapes_spread` beyond
    :data:`SCATTERED_DEGREES` / :data:`SCATTERED_MM`), or their mean shapes turned or shifted apart
    by more than that."""
    problems = []
    for name, shapes in (("generated", generated), ("reference", reference)):
        degrees, mm = shapes_spread(shapes)
        if degrees > SCATTERED_DEGREES or mm > SCATTERED_MM:
            problems.append(f"the {name} meshes' orientations differ by {degrees:.0f} degrees and their centres by "
                            f"{mm:.0f} mm (medians): they lie in their own frames")
    if not problems:
        mean_generated, mean_reference = generated.double().mean(dim=0), reference.double().mean(dim=0)
        degrees = kabsch_pose(mean_generated, mean_reference).angle_degrees()
        mm = float((mean_generated.mean(dim=0) - mean_reference.mean(dim=0)).norm())
        if degrees > SCATTERED_DEGREES or mm > SCATTERED_MM:
            problems.append(f"the generated and reference meshes lie in different frames: their mean shapes are "
                            f"turned {degrees:.0f} degrees and shifted {mm:.0f} mm apart")
    return problems
