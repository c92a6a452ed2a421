"""Voxelization of closed meshes by ray crossings against the generalized winding number."""

from __future__ import annotations

import math

import pytest
import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import is_closed_and_oriented
from cardiocore.geometry.primitives import box_mesh, icosphere, torus
from cardiocore.geometry.voxelize import voxelize_mesh


def _oblique_grid(center: tuple[float, float, float], mirrored: bool) -> torch.Tensor:
    """An oblique, anisotropic IJK-to-RAS matrix (4, 4) centred on ``center`` at voxel (20, 18, 15);
    ``mirrored`` flips the I axis (a left-handed grid, negative determinant, as many scanners
    store it)."""
    a, b = 0.5, 0.35
    rot_z = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                         dtype=torch.float64)
    rot_x = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]],
                         dtype=torch.float64)
    spacing = torch.tensor([-0.8 if mirrored else 0.8, 0.95, 1.3], dtype=torch.float64)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = rot_z @ rot_x * spacing
    matrix[:3, 3] = torch.tensor(center, dtype=torch.float64) - matrix[:3, :3] @ torch.tensor(
        [20.0, 18.0, 15.0], dtype=torch.float64)
    return matrix


def _two_overlapping_spheres() -> tuple[torch.Tensor, torch.Tensor]:
    """One closed but self-intersecting surface: two icospheres (radius 6 mm) 5 mm apart, whose
    overlap has winding number 2."""
    verts_a, faces = icosphere(3, radius=6.0, center=(0.0, 0.0, 0.0))
    verts_b, _ = icosphere(3, radius=6.0, center=(5.0, 1.0, -1.0))
    return torch.cat([verts_a, verts_b]), torch.cat([faces, faces + verts_a.shape[0]])


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("shape_name", ["sphere", "torus", "overlapping spheres"])
def test_rays_match_the_exact_winding_number_on_oblique_grids(shape_name, mirrored):
    verts, faces = {
        "sphere": lambda: icosphere(3, radius=9.0, center=(1.0, -2.0, 3.0)),
        "torus": lambda: torus(R=9.0, r=3.5),
        "overlapping spheres": _two_overlapping_spheres,
    }[shape_name]()
    matrix = _oblique_grid(tuple(verts.mean(dim=0).tolist()), mirrored)
    rays = voxelize_mesh(verts, faces, (42, 38, 30), matrix, method="rays")
    exact = voxelize_mesh(verts, faces, (42, 38, 30), matrix, method="exact")
    assert rays.sum() > 500
    assert torch.equal(rays, exact)
    assert torch.equal(voxelize_mesh(verts, faces, (42, 38, 30), matrix), rays)  # "auto" takes the rays


def test_rays_through_vertices_and_shared_edges_count_once():
    """A box whose corners and face diagonals lie exactly on the lattice: rays through shared
    edges and vertices must neither miss a face nor count one twice (no streaks)."""
    verts, faces = box_mesh(size=(4.0, 6.0, 4.0), center=(5.0, 6.0, 5.0))  # x 3..7, y 3..9, z 3..7
    mask = voxelize_mesh(verts, faces, (11, 13, 11), torch.eye(4), method="rays")
    closed_box = torch.zeros(11, 13, 11, dtype=torch.bool)
    closed_box[3:8, 3:10, 3:8] = True
    assert mask[4:7, 4:9, 4:7].all()  # every centre strictly inside
    assert not mask[~closed_box].any()  # a ray counted wrongly would leave a streak outside
    # Centres on the faces K = 3 and K = 7 lie on the surface: those of the lower face count as
    # inside (the ray starts on the entry face and crosses only the exit), none of the upper.
    assert mask[4:7, 4:9, 3].all() and not mask[:, :, 7].any()


def test_inverted_mesh_is_empty_and_open_mesh_falls_back_to_the_winding_number():
    verts, faces = icosphere(3, radius=5.0)
    grid = torch.eye(4, dtype=torch.float64)
    grid[:3, 3] = -8.0
    assert not voxelize_mesh(verts, faces.flip(1), (17, 17, 17), grid, method="rays").any()
    cap = faces[verts[faces].mean(dim=1)[:, 2] > -4.8]  # the sphere with a small hole at the bottom
    assert is_closed_and_oriented(faces) and not is_closed_and_oriented(cap)
    with pytest.raises(CardioInputError, match="closed"):
        voxelize_mesh(verts, cap, (17, 17, 17), grid, method="rays")
    # The winding number forgives the hole: almost the whole ball is still inside.
    auto = voxelize_mesh(verts, cap, (17, 17, 17), grid)
    full = voxelize_mesh(verts, faces, (17, 17, 17), grid)
    assert (auto ^ full).sum() <= 0.02 * full.sum()
    with pytest.raises(CardioInputError, match="method"):
        voxelize_mesh(verts, faces, (17, 17, 17), grid, method="scanline")


def test_large_grids_are_processed_in_slabs_with_the_same_result(monkeypatch):
    import cardiocore.geometry.voxelize as voxelize

    verts, faces = torus(R=9.0, r=3.5)
    matrix = _oblique_grid(tuple(verts.mean(dim=0).tolist()), mirrored=True)
    whole = voxelize_mesh(verts, faces, (42, 38, 30), matrix, method="rays")
    monkeypatch.setattr(voxelize, "_CHUNK", 2000)  # many face chunks and one-row slabs
    assert torch.equal(voxelize_mesh(verts, faces, (42, 38, 30), matrix, method="rays"), whole)


@pytest.mark.cuda
def test_rays_on_cuda_match_cpu():
    verts, faces = torus(R=9.0, r=3.5)
    matrix = _oblique_grid(tuple(verts.mean(dim=0).tolist()), mirrored=True)
    cpu = voxelize_mesh(verts, faces, (42, 38, 30), matrix, method="rays")
    gpu = voxelize_mesh(verts.cuda(), faces.cuda(), (42, 38, 30), matrix, method="rays")
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
