"""Inside/outside of scattered points by ray crossings (``occupancy(method="rays")``) against the
exact generalized winding number, on closed meshes with known interiors."""

from __future__ import annotations

import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.primitives import box_mesh, icosphere, torus
from cardiocore.geometry.rays import ray_winding_numbers
from cardiocore.geometry.winding import inside_mesh, occupancy, winding_number


def _two_overlapping_spheres() -> tuple[torch.Tensor, torch.Tensor]:
    """A closed, self-intersecting surface: two icospheres whose overlap has winding number 2."""
    verts_a, faces = icosphere(3, radius=6.0, center=(0.0, 0.0, 0.0))
    verts_b, _ = icosphere(3, radius=6.0, center=(5.0, 1.0, -1.0))
    return torch.cat([verts_a, verts_b]), torch.cat([faces, faces + verts_a.shape[0]])


SHAPES = {
    "sphere": lambda: icosphere(3, radius=9.0, center=(1.0, -2.0, 3.0)),
    "torus": lambda: torus(R=9.0, r=3.5),
    "overlapping spheres": _two_overlapping_spheres,
}


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_ray_counts_equal_the_exact_winding_number(shape_name):
    verts, faces = SHAPES[shape_name]()
    generator = torch.Generator().manual_seed(3)
    low, high = verts.amin(dim=0) - 2.0, verts.amax(dim=0) + 2.0
    points = low + torch.rand(6000, 3, generator=generator, dtype=torch.float64) * (high - low)
    exact = torch.round(winding_number(points, verts.double(), faces)).to(torch.int32)
    counted = ray_winding_numbers(points, verts, faces)
    assert (exact != 0).sum() > 1000
    assert torch.equal(counted, exact)
    assert torch.equal(occupancy(points, verts, faces, method="rays"), exact > 0)
    assert torch.equal(occupancy(points, verts, faces), exact > 0)  # "auto" takes the rays here
    if shape_name == "overlapping spheres":
        assert bool((counted == 2).any())  # the overlap counts twice
    reversed_faces = faces.flip(1)
    assert torch.equal(ray_winding_numbers(points, verts, reversed_faces), -exact)
    assert not bool(occupancy(points, verts, reversed_faces).any())  # an inverted mesh holds nothing


def test_rays_under_vertices_and_along_shared_edges_count_once():
    """A box whose corners and face diagonals lie exactly above lattice points: rays through its
    vertices and shared edges must neither miss a face nor count one twice."""
    verts, faces = box_mesh(size=(4.0, 6.0, 4.0), center=(5.0, 6.0, 5.0))  # x 3..7, y 3..9, z 3..7
    axis = torch.arange(0.0, 11.0, 0.5, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis, axis)
    inside = ((points > torch.tensor([3.0, 3.0, 3.0])) & (points < torch.tensor([7.0, 9.0, 7.0]))).all(dim=1)
    strictly_outside = ((points < torch.tensor([3.0, 3.0, 3.0])) | (points > torch.tensor([7.0, 9.0, 7.0]))).any(dim=1)
    counted = ray_winding_numbers(points, verts, faces)
    assert bool((counted[inside] == 1).all())
    assert bool((counted[strictly_outside] == 0).all())
    assert set(counted.tolist()) <= {0, 1}


def test_a_ray_through_a_vertex_is_counted_once():
    """From the centre of an icosphere the +z ray leaves exactly through its pole vertex, where
    six faces meet and no edge rule applies: the origins' tiny offset must still count one face."""
    verts, faces = icosphere(3, radius=10.0, center=(1.0, -2.0, 3.0))
    pole = verts[:, 2].argmax()
    assert torch.equal(verts[pole, :2], torch.tensor([1.0, -2.0]))  # the pole lies on the ray
    points = torch.tensor([[1.0, -2.0, 3.0], [1.0, -2.0, 12.5], [1.0, -2.0, 14.0], [1.0, -2.0, -8.0]])
    assert ray_winding_numbers(points, verts, faces).tolist() == [1, 1, 0, 0]


def test_rays_are_refused_for_an_open_mesh_and_for_soft_labels():
    verts, faces = icosphere(2, radius=5.0)
    points = torch.zeros(4, 3)
    open_faces = faces[1:]
    with pytest.raises(CardioInputError, match="closed"):
        occupancy(points, verts, open_faces, method="rays")
    with pytest.raises(CardioInputError, match="closed"):
        occupancy(points, verts, faces, soft=True, method="rays")
    # "auto" falls back to the winding number for the open mesh.
    assert occupancy(points, verts, open_faces).dtype == torch.bool


def test_inside_mesh_with_rays_matches_the_exact_method():
    verts, faces = torus(R=9.0, r=3.5)
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(3000, 3, generator=generator) - 0.5) * 30.0
    assert torch.equal(inside_mesh(points, verts, faces, method="rays"), inside_mesh(points, verts, faces, method="exact"))


@pytest.mark.cuda
def test_rays_on_cuda_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; run on the GPU machine")
    verts, faces = _two_overlapping_spheres()
    points = (torch.rand(5000, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 16.0
    cpu = ray_winding_numbers(points, verts, faces)
    gpu = ray_winding_numbers(points.cuda(), verts.cuda(), faces.cuda())
    assert torch.equal(gpu.cpu(), cpu)
