"""Taubin low-pass smoothing of triangle meshes: lambda | mu steps, and the windowed-sinc filter.

Both act on vertex positions through the uniform umbrella operator
``K x_i = x_i - mean_{j ~ i} x_j``, whose eigenvalues (surface "frequencies") k lie in [0, 2];
a filter scales each frequency component by a transfer function f(k) with f(0) close to 1, so
the shape and its enclosed volume (low frequencies) are kept while voxel staircases and noise
(high frequencies) are removed.

- :func:`taubin_smooth` (Taubin 1995): each iteration applies ``x -= lambda K x`` then
  ``x -= mu K x`` with ``mu < -lambda``, i.e. f(k) = ((1 - lambda k)(1 - mu k))^N, equal to 1
  at k = 0 and at the pass band ``k_PB = 1/lambda + 1/mu``.
- :func:`windowed_sinc_smooth` (Taubin, Zhang & Golub 1996, "Optimal surface smoothing as filter
  design"): f is a Hamming-windowed Chebyshev expansion of order N of the ideal low-pass filter
  with cut-off k_PB, evaluated with the three-term recurrence (one umbrella step per order). This
  is VTK's ``vtkWindowedSincPolyDataFilter``, which Slicer uses to smooth closed surfaces made
  from segments: :func:`slicer_smoothing_parameters` maps Slicer's "Smoothing factor" s to its
  settings (N = 20, k_PB = 10^(-4 s); the default s = 0.5 gives k_PB = 0.01).

Boundary vertices stay fixed in both (Slicer turns boundary smoothing off); closed surfaces have
none. Positions are filtered in float64, relative to the bounding-box centre (VTK's
NormalizeCoordinates; the windowed sinc's f(0) is only approximately 1, so the centre matters).
"""

from __future__ import annotations

import math

import torch

from cardiocore.errors import CardioInputError
from cardiocore.geometry.laplacian import uniform_laplacian
from cardiocore.geometry.mesh import ArrayLike, as_mesh, boundary_edges

SLICER_ITERATIONS = 20
"""Chebyshev order of Slicer's closed-surface smoothing (vtkWindowedSincPolyDataFilter)."""


def slicer_smoothing_parameters(smoothing_factor: float) -> dict[str, float | int]:
    """Settings of :func:`windowed_sinc_smooth` equal to Slicer's closed-surface "Smoothing factor".

    Args:
        smoothing_factor: s in [0, 1]; Slicer's default is 0.5.

    Returns:
        ``{"iterations": 20, "pass_band": 10 ** (-4 s)}``, or 0 iterations for s = 0 (Slicer
        skips smoothing then).
    """
    if not 0.0 <= smoothing_factor <= 1.0:
        raise CardioInputError("smoothing_factor", f"must lie in [0, 1], got {smoothing_factor}")
    iterations = SLICER_ITERATIONS if smoothing_factor > 0 else 0
    return {"iterations": iterations, "pass_band": 10.0 ** (-4.0 * smoothing_factor)}


class _Umbrella:
    """The umbrella operator ``K x = x - mean of neighbours`` of one mesh, on float64 positions,
    with the mask of the vertices that may move."""

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, keep_boundary: bool) -> None:
        n_verts = verts.shape[0]
        lap = uniform_laplacian(faces, n_verts).to(device=verts.device, dtype=torch.float64)
        index = lap.indices()
        on_diagonal = index[0] == index[1]
        degree = verts.new_zeros(n_verts, dtype=torch.float64)
        degree = degree.index_add(0, index[0, on_diagonal], lap.values()[on_diagonal])
        self.movable = degree > 0
        if keep_boundary:
            self.movable[boundary_edges(faces).reshape(-1).to(verts.device)] = False
        self._lap = lap
        self._inverse_degree = (1.0 / degree.clamp_min(1.0)).unsqueeze(-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._inverse_degree * torch.sparse.mm(self._lap, x)  # L x = degree (x - mean)


def _prepare(
    verts: ArrayLike, faces: ArrayLike, iterations: int, keep_boundary: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Umbrella]:
    """Validated mesh, float64 positions relative to the box centre, that centre, the operator."""
    verts_t, faces_t = as_mesh(verts, faces, name="smoothing mesh")
    if iterations < 0:
        raise CardioInputError("iterations", f"must be >= 0, got {iterations}")
    points = verts_t.detach().double()
    centre = 0.5 * (points.amin(dim=0) + points.amax(dim=0))
    return verts_t, points - centre, centre, _Umbrella(points, faces_t, keep_boundary)


def _finish(verts: torch.Tensor, smoothed: torch.Tensor, centre: torch.Tensor, umbrella: _Umbrella) -> torch.Tensor:
    """Smoothed positions back in place, fixed vertices restored, in the input's dtype."""
    result = torch.where(umbrella.movable.unsqueeze(-1), smoothed + centre, verts.detach().double())
    return result.to(verts.dtype)


def taubin_smooth(
    verts: ArrayLike,
    faces: ArrayLike,
    iterations: int = SLICER_ITERATIONS,
    lam: float = 0.5,
    pass_band: float = 0.1,
    keep_boundary: bool = True,
) -> torch.Tensor:
    """Smooth a mesh by Taubin's lambda | mu steps (module docstring).

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64; the topology is unchanged.
        iterations: number of lambda-then-mu double steps (>= 0).
        lam: positive step lambda in (0, 1).
        pass_band: k_PB in (0, 1/lambda); mu = 1 / (k_PB - 1/lambda) < -lambda.
        keep_boundary: leave the vertices of boundary edges fixed.

    Returns:
        Smoothed vertices (V, 3) with the dtype and device of ``verts`` (no autograd graph).

    Raises:
        MeshError: invalid mesh. CardioInputError: parameters out of range.
    """
    if not 0.0 < lam < 1.0:
        raise CardioInputError("lam", f"must lie in (0, 1), got {lam}")
    if not 0.0 < pass_band < 1.0 / lam:
        raise CardioInputError("pass_band", f"must lie in (0, 1/lam = {1.0 / lam:g}), got {pass_band}")
    verts_t, x, centre, umbrella = _prepare(verts, faces, iterations, keep_boundary)
    mu = 1.0 / (pass_band - 1.0 / lam)
    for _ in range(iterations):
        for step in (lam, mu):
            x = x - step * umbrella(x)
    return _finish(verts_t, x, centre, umbrella)


def windowed_sinc_coefficients(iterations: int, pass_band: float) -> list[float]:
    """Coefficients c_0..c_N of the windowed-sinc filter f(k) = sum_i c_i T_i(1 - k/2).

    Hamming-windowed Chebyshev coefficients of the ideal low-pass filter with its cut-off shifted
    by sigma, where sigma solves f(k_PB) = 1 (Newton's method), as in VTK.

    Args:
        iterations: Chebyshev order N >= 1.
        pass_band: k_PB in (0, 2).
    """
    theta = math.acos(1.0 - 0.5 * pass_band)
    orders = range(1, iterations + 1)
    window = [0.54 + 0.46 * math.cos(i * math.pi / (iterations + 1)) for i in range(iterations + 1)]

    def coefficients(sigma: float) -> list[float]:
        angle = theta + sigma
        return [window[0] * angle / math.pi] + [2.0 * window[i] * math.sin(i * angle) / (i * math.pi) for i in orders]

    sigma = 0.0
    for _ in range(100):
        value = sum(c * math.cos(i * theta) for i, c in enumerate(coefficients(sigma))) - 1.0
        if abs(value) < 1e-9:
            break
        slope = window[0] / math.pi + sum(
            2.0 * window[i] * math.cos(i * (theta + sigma)) * math.cos(i * theta) / math.pi for i in orders
        )
        sigma -= value / slope
    return coefficients(sigma)


def windowed_sinc_smooth(
    verts: ArrayLike,
    faces: ArrayLike,
    iterations: int = SLICER_ITERATIONS,
    pass_band: float = 0.1,
    keep_boundary: bool = True,
) -> torch.Tensor:
    """Smooth a mesh with Taubin's windowed-sinc low-pass filter (VTK's, used by Slicer).

    Args:
        verts: vertex positions (V, 3), mm.
        faces: triangles (F, 3) int64; the topology is unchanged.
        iterations: Chebyshev order N (>= 0; 0 returns the input); one umbrella step each.
        pass_band: cut-off k_PB in (0, 2); smaller smooths more (Slicer: 10^(-4 s)).
        keep_boundary: leave the vertices of boundary edges fixed.

    Returns:
        Smoothed vertices (V, 3) with the dtype and device of ``verts`` (no autograd graph).

    Raises:
        MeshError: invalid mesh. CardioInputError: parameters out of range.
    """
    if not 0.0 < pass_band < 2.0:
        raise CardioInputError("pass_band", f"must lie in (0, 2), got {pass_band}")
    verts_t, x0, centre, umbrella = _prepare(verts, faces, iterations, keep_boundary)
    if iterations == 0:
        return verts_t.detach().clone()
    c = windowed_sinc_coefficients(iterations, pass_band)
    x1 = x0 - 0.5 * umbrella(x0)  # T_1(M) x with M = I - K/2
    smoothed = c[0] * x0 + c[1] * x1
    for order in range(2, iterations + 1):
        x0, x1 = x1, 2.0 * (x1 - 0.5 * umbrella(x1)) - x0  # T_{i+1} = 2 M T_i - T_{i-1}
        smoothed = smoothed + c[order] * x1
    return _finish(verts_t, smoothed, centre, umbrella)
