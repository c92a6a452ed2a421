"""Point-set distances: the project's ONE Chamfer convention.

Convention (used everywhere in CardioShape, including the generative metrics):

    CD(A, B) = 0.5 * ( mean_{a in A} min_{b in B} |a - b|  +  mean_{b in B} min_{a in A} |a - b| )

i.e. the **unsquared, symmetric mean of nearest-neighbour Euclidean distances, in mm**. Meshes
are compared on ``CHAMFER_POINTS`` = 2,048 area-uniform surface samples per mesh
(:func:`mesh_chamfer`). The Hausdorff distance is the symmetric maximum of the same
nearest-neighbour distances.

Nearest neighbours are found either with a chunked brute-force search (torch, CPU or CUDA; it
never holds more than ``chunk_size x len(b)`` squared distances, so memory grows linearly in the
number of points) or with SciPy's ``cKDTree`` (CPU). Either way the returned distances are
recomputed exactly as ``|a - b[nearest]|`` in torch, so they are precise (no cancellation from
the ``|a|^2 - 2ab + |b|^2`` expansion) and differentiable with respect to both point sets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from cardiocore.errors import CardioInputError
from cardiocore.geometry.value_checks import values_checked

ArrayLike = torch.Tensor | np.ndarray
Method = Literal["auto", "brute", "kdtree"]

CHAMFER_POINTS = 2048
"""Surface points sampled per mesh for evaluation Chamfer distances."""

DEFAULT_CHUNK = {"cpu": 2048, "cuda": 8192}
"""Query points per brute-force block by device: a block holds ``chunk x len(b)`` distances."""

_PAIR_BLOCK_ELEMENTS = {"cpu": 2**23, "cuda": 2**28}
"""Squared distances held at once by :func:`pairwise_chamfer` (32 MiB on CPU, 1 GiB on CUDA, fp32)."""


def _as_points(points: ArrayLike, name: str, batched: bool = False) -> torch.Tensor:
    """Validate a point set (P, 3), or a batch of them (N, P, 3), as a float tensor."""
    points_t = torch.as_tensor(points)
    if not torch.is_floating_point(points_t):
        points_t = points_t.to(torch.get_default_dtype())
    expected_dim = 3 if batched else 2
    if points_t.dim() != expected_dim or points_t.shape[-1] != 3:
        shape = "(N, P, 3)" if batched else "(P, 3)"
        raise CardioInputError(name, f"must have shape {shape}, got {tuple(points_t.shape)}")
    if points_t.shape[-2] == 0 or (batched and points_t.shape[0] == 0):
        raise CardioInputError(name, "is empty", "distances need at least one point per set")
    if values_checked() and not bool(torch.isfinite(points_t.detach()).all()):
        raise CardioInputError(name, "has NaN or infinite coordinates")
    return points_t


def _same_device(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Put ``b`` on ``a``'s device and both in their promoted float dtype."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def _resolve_method(method: Method, device: torch.device) -> str:
    if method not in ("auto", "brute", "kdtree"):
        raise CardioInputError("method", f"unknown nearest-neighbour method {method!r}",
                               "use 'auto', 'brute' or 'kdtree'")
    if method == "auto":
        return "kdtree" if device.type == "cpu" else "brute"
    return method


def _lifted(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift points (..., P, 3) and (..., Q, 3) to 5-D so that one matmul gives squared distances.

    With a' = (a, |a|^2, 1) and b' = (-2 b, 1, |b|^2), a' . b' = |a - b|^2. Both sets are first
    centred on ``b``'s centroid to limit cancellation in the expansion.
    """
    origin = b.mean(dim=-2, keepdim=True)
    a_c, b_c = a - origin, b - origin
    a_sq, b_sq = (a_c * a_c).sum(-1, keepdim=True), (b_c * b_c).sum(-1, keepdim=True)
    return (
        torch.cat([a_c, a_sq, torch.ones_like(a_sq)], dim=-1),
        torch.cat([-2.0 * b_c, torch.ones_like(b_sq), b_sq], dim=-1),
    )


def _brute_nearest(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of each point's nearest neighbour in the other set, one chunked sweep.

    Returns ``(index_ab (P,), index_ba (Q,))``: for every row of ``a`` the nearest row of ``b``
    and vice versa. Each block holds ``chunk_size x Q`` squared distances; column minima are
    carried across blocks, so both directions cost one pass.
    """
    with torch.no_grad():
        a_lift, b_lift = _lifted(a, b)
        b_lift_t = b_lift.t()
        index_ab = torch.empty(a.shape[0], dtype=torch.int64, device=a.device)
        best_ba = torch.full((b.shape[0],), float("inf"), dtype=a.dtype, device=a.device)
        index_ba = torch.zeros(b.shape[0], dtype=torch.int64, device=a.device)
        for start in range(0, a.shape[0], chunk_size):
            sq = a_lift[start : start + chunk_size] @ b_lift_t  # (chunk, Q) squared distances
            index_ab[start : start + sq.shape[0]] = sq.argmin(dim=1)
            col_best, col_arg = sq.min(dim=0)
            better = col_best < best_ba
            best_ba = torch.where(better, col_best, best_ba)
            index_ba = torch.where(better, col_arg + start, index_ba)
            del sq  # free this block before the next one is allocated
    return index_ab, index_ba


def _kdtree_nearest(
    a: torch.Tensor, b: torch.Tensor, both_ways: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest-neighbour indices with SciPy KD-trees (all CPU cores); ``b -> a`` only if asked."""
    a_np = a.detach().cpu().numpy()
    b_np = b.detach().cpu().numpy()
    index_ab = torch.as_tensor(cKDTree(b_np).query(a_np, k=1, workers=-1)[1], device=a.device)
    if not both_ways:
        return index_ab, None
    index_ba = torch.as_tensor(cKDTree(a_np).query(b_np, k=1, workers=-1)[1], device=a.device)
    return index_ab, index_ba


def _nearest_indices(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int | None, method: Method, both_ways: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Index of each ``a`` point's nearest ``b`` point (P,), and the reverse (Q,) if asked."""
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK["cuda" if a.is_cuda else "cpu"]
    if chunk_size < 1:
        raise CardioInputError("chunk_size", f"must be a positive integer, got {chunk_size}")
    if _resolve_method(method, a.device) == "kdtree":
        return _kdtree_nearest(a, b, both_ways)
    return _brute_nearest(a, b, chunk_size)


def _nearest_both_ways(
    a: torch.Tensor, b: torch.Tensor, chunk_size: int | None, method: Method
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances ``(d_ab (P,), d_ba (Q,))`` from each point to the other set, mm."""
    index_ab, index_ba = _nearest_indices(a, b, chunk_size, method, both_ways=True)
    d_ab = torch.linalg.vector_norm(a - b.index_select(0, index_ab), dim=-1)
    d_ba = torch.linalg.vector_norm(b - a.index_select(0, index_ba), dim=-1)
    return d_ab, d_ba


def nearest_neighbour_distance(
    a: ArrayLike, b: ArrayLike, chunk_size: int | None = None, method: Method = "auto"
) -> torch.Tensor:
    """Euclidean distance from every point of ``a`` to its nearest point of ``b``.

    Args:
        a: query points (P, 3), mm.
        b: reference points (Q, 3), mm; moved to ``a``'s device.
        chunk_size: query points per brute-force block (memory ``chunk_size x Q`` floats);
            default ``DEFAULT_CHUNK`` for the device (2,048 on CPU, 8,192 on CUDA).
        method: ``"brute"`` (chunked torch, CPU or CUDA), ``"kdtree"`` (SciPy, CPU) or
            ``"auto"`` (KD-tree on CPU, brute force on CUDA).

    Returns:
        Distances (P,), mm, on ``a``'s device; differentiable with respect to ``a`` and ``b``.
    """
    a_t, b_t = _same_device(_as_points(a, "a"), _as_points(b, "b"))
    index_ab, _ = _nearest_indices(a_t, b_t, chunk_size, method, both_ways=False)
    return torch.linalg.vector_norm(a_t - b_t.index_select(0, index_ab), dim=-1)


def chamfer_distance(
    a: ArrayLike, b: ArrayLike, chunk_size: int | None = None, method: Method = "auto"
) -> torch.Tensor:
    """Symmetric unsquared Chamfer distance (the module convention), mm.

    ``0.5 * (mean_a min_b |a - b| + mean_b min_a |a - b|)``.

    Args:
        a: points (P, 3), mm.
        b: points (Q, 3), mm.
        chunk_size, method: as in :func:`nearest_neighbour_distance`.

    Returns:
        Scalar tensor, mm, on ``a``'s device; differentiable.
    """
    a_t, b_t = _same_device(_as_points(a, "a"), _as_points(b, "b"))
    d_ab, d_ba = _nearest_both_ways(a_t, b_t, chunk_size, method)
    return 0.5 * (d_ab.mean() + d_ba.mean())


def padded_chamfer(
    a: torch.Tensor, a_valid: torch.Tensor, b: torch.Tensor, b_valid: torch.Tensor, one_sided: bool = False
) -> torch.Tensor:
    """Chamfer distances (N,) mm of N pairs of point sets of different sizes in one batched
    brute-force pass (a few dozen kernels for all pairs: for a GPU loop).

    Each set is padded to a common size; padding rows are ignored (best padded with copies of a
    real point, which keeps the squared-distance expansion well centred). For a pair with no
    real point on a side the result is NaN.

    Args:
        a: (N, P, 3) mm and a_valid (N, P) bool, its real rows; b: (N, Q, 3) mm, b_valid (N, Q).
        one_sided: the mean distance from b's points to a only (outlines against vertices),
            instead of the symmetric ``0.5 * (mean_a min_b |a - b| + mean_b min_a |a - b|)``.

    Returns:
        (N,) on ``a``'s device; differentiable w.r.t. ``a`` and ``b`` (as :func:`chamfer_distance`:
        nearest pairs found without gradient, their exact distances with it).
    """
    if a.dim() != 3 or b.dim() != 3 or a.shape[-1] != 3 or b.shape[-1] != 3 or a.shape[0] != b.shape[0] \
            or a_valid.shape != a.shape[:2] or b_valid.shape != b.shape[:2]:
        raise CardioInputError("padded_chamfer", f"needs (N, P, 3) and (N, Q, 3) sets with (N, P) and (N, Q) masks, got "
                               f"{tuple(a.shape)}, {tuple(a_valid.shape)}, {tuple(b.shape)}, {tuple(b_valid.shape)}")
    with torch.no_grad():
        a_lift, b_lift = _lifted(a, b)
        squared = a_lift @ b_lift.mT  # (N, P, Q)
        index_ba = squared.masked_fill(~a_valid[:, :, None], float("inf")).argmin(dim=1)  # (N, Q)
        index_ab = None if one_sided else squared.masked_fill_(~b_valid[:, None, :], float("inf")).argmin(dim=2)
    d_ba = torch.linalg.vector_norm(b - a.gather(1, index_ba[..., None].expand(-1, -1, 3)), dim=-1)
    mean_ba = (d_ba * b_valid).sum(dim=1) / b_valid.sum(dim=1)
    if one_sided:
        return mean_ba
    d_ab = torch.linalg.vector_norm(a - b.gather(1, index_ab[..., None].expand(-1, -1, 3)), dim=-1)
    return 0.5 * ((d_ab * a_valid).sum(dim=1) / a_valid.sum(dim=1) + mean_ba)


def hausdorff_distance(
    a: ArrayLike, b: ArrayLike, chunk_size: int | None = None, method: Method = "auto"
) -> torch.Tensor:
    """Symmetric Hausdorff distance ``max(max_a min_b |a-b|, max_b min_a |a-b|)``, mm.

    Args:
        a: points (P, 3), mm.
        b: points (Q, 3), mm.
        chunk_size, method: as in :func:`nearest_neighbour_distance`.

    Returns:
        Scalar tensor, mm.
    """
    a_t, b_t = _same_device(_as_points(a, "a"), _as_points(b, "b"))
    d_ab, d_ba = _nearest_both_ways(a_t, b_t, chunk_size, method)
    return torch.maximum(d_ab.max(), d_ba.max())


def mesh_chamfer(
    verts_a: ArrayLike,
    faces_a: ArrayLike,
    verts_b: ArrayLike,
    faces_b: ArrayLike,
    n_points: int = CHAMFER_POINTS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Chamfer distance between two meshes on ``n_points`` area-uniform surface samples each.

    Args:
        verts_a, faces_a: first mesh, (V, 3) mm and (F, 3) int64.
        verts_b, faces_b: second mesh.
        n_points: samples per mesh (2,048 is the project's evaluation convention).
        generator: torch generator for reproducible sampling (on the vertices' device).

    Returns:
        Scalar tensor, mm.
    """
    from cardiocore.geometry.sampling import sample_surface

    points_a = sample_surface(verts_a, faces_a, n_points, generator=generator)[0]
    points_b = sample_surface(verts_b, faces_b, n_points, generator=generator)[0]
    return chamfer_distance(points_a, points_b)


def _pair_block_chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chamfer distances of aligned pairs ``a[k]`` (K, P, 3) vs ``b[k]`` (K, Q, 3) -> (K,)."""
    a_lift, b_lift = _lifted(a, b)
    sq = torch.bmm(a_lift, b_lift.transpose(1, 2))  # (K, P, Q) squared distances
    index_ab = sq.argmin(dim=2)  # (K, P)
    index_ba = sq.argmin(dim=1)  # (K, Q)
    del sq
    nearest_b = torch.gather(b, 1, index_ab.unsqueeze(-1).expand(-1, -1, 3))
    nearest_a = torch.gather(a, 1, index_ba.unsqueeze(-1).expand(-1, -1, 3))
    d_ab = torch.linalg.vector_norm(a - nearest_b, dim=-1).mean(dim=1)
    d_ba = torch.linalg.vector_norm(b - nearest_a, dim=-1).mean(dim=1)
    return 0.5 * (d_ab + d_ba)


def _pairwise_kdtree(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs Chamfer with one KD-tree per shape (CPU).

    The tree of each shape answers, in one multi-threaded query, the nearest-neighbour distances
    of every point of every shape of the other set, so the Python loop runs N + M times, not N M.
    When ``a`` and ``b`` are the same tensor the second pass is the transpose of the first and is
    not computed (half the time for a set against itself).
    """
    a_np = a.detach().cpu().numpy()
    b_np = b.detach().cpu().numpy()
    (n, p, _), (m, q, _) = a_np.shape, b_np.shape
    a_flat, b_flat = a_np.reshape(-1, 3), b_np.reshape(-1, 3)
    mean_ab = np.empty((n, m))  # mean over a's points of the distance to b
    for j, shape_b in enumerate(b_np):
        mean_ab[:, j] = cKDTree(shape_b).query(a_flat, k=1, workers=-1)[0].reshape(n, p).mean(axis=1)
    if a is b:
        mean_ba = mean_ab.T
    else:
        mean_ba = np.empty((n, m))
        for i, shape_a in enumerate(a_np):
            mean_ba[i, :] = cKDTree(shape_a).query(b_flat, k=1, workers=-1)[0].reshape(m, q).mean(axis=1)
    return torch.as_tensor(0.5 * (mean_ab + mean_ba), dtype=a.dtype, device=a.device)


def pairwise_chamfer(
    a: ArrayLike,
    b: ArrayLike,
    batch_size: int | None = None,
    method: Method = "auto",
) -> torch.Tensor:
    """Chamfer distance (module convention, mm) between every shape of ``a`` and every one of ``b``.

    Pairs are processed in flat blocks of ``batch_size`` pairs, each holding
    ``batch_size x P x Q`` squared distances, so memory is bounded whatever N and M are. The
    default block holds 2^23 distances on CPU (32 MiB) and 2^28 on CUDA (1 GiB in fp32).
    No gradients: this is an evaluation routine.

    Args:
        a: point sets (N, P, 3), mm.
        b: point sets (M, Q, 3), mm; moved to ``a``'s device.
        batch_size: pairs per block (default from the memory budget above).
        method: ``"brute"`` (batched torch, CPU or CUDA), ``"kdtree"`` (SciPy, CPU; one tree per
            shape, two queries per pair) or ``"auto"`` (KD-trees on CPU, brute force on CUDA).

    Returns:
        Distance matrix (N, M), mm, on ``a``'s device.
    """
    a_t, b_t = _same_device(_as_points(a, "a", batched=True), _as_points(b, "b", batched=True))
    if _resolve_method(method, a_t.device) == "kdtree":
        return _pairwise_kdtree(a_t, a_t if b is a else b_t)
    n, m = a_t.shape[0], b_t.shape[0]
    per_pair = a_t.shape[1] * b_t.shape[1]
    if batch_size is None:
        budget = _PAIR_BLOCK_ELEMENTS["cuda" if a_t.is_cuda else "cpu"]
        batch_size = max(1, budget // per_pair)
    if batch_size < 1:
        raise CardioInputError("batch_size", f"must be a positive integer, got {batch_size}")
    out = torch.empty(n * m, dtype=a_t.dtype, device=a_t.device)
    with torch.no_grad():
        for start in range(0, n * m, batch_size):
            stop = min(start + batch_size, n * m)
            pair = torch.arange(start, stop, device=a_t.device)
            out[start:stop] = _pair_block_chamfer(
                a_t.index_select(0, pair // m), b_t.index_select(0, pair % m)
            )
    return out.reshape(n, m)
