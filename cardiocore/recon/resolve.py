"""The last step of a reconstruction: make the meshes obey the rules exactly and untangle them.

The MIE loss (:mod:`cardiocore.recon.mie`) removes most violations during the fit, but a soft
occupancy cannot guarantee zero overlap, and free vertex offsets can fold a surface. This step
works on the finished meshes, and moves only the vertices that are wrong:

1. **Separation**, ``rounds`` times or until nothing moves: for every rule and each of its two
   meshes, the vertices that break it (``A disjoint B``: a vertex of A inside B or of B inside A;
   ``A inside B``: a vertex of A outside B) are moved to the nearest point of the other surface
   and ``margin_mm`` beyond it, on the allowed side. Inside/outside is the exact winding number
   (:func:`cardiocore.geometry.winding.inside_mesh`; counted by ray crossings for closed meshes,
   the solid-angle sum otherwise), the nearest point the exact point-to-mesh
   projection (:func:`cardiocore.geometry.distance.closest_points_on_mesh`).
2. **Untangling** of each mesh (:func:`cardiocore.geometry.untangle.untangle`): the
   neighbourhoods of self-intersections are relaxed until none is left; the meshes at once, in
   threads (as many as ``torch.get_num_threads()``).

On the MM-WHS label maps it brings the worst rule's volume violation rate from about 0.7 % to
about 0.1 % and the self-intersections to zero, for a Dice change below 0.01 (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from cardiocore.geometry.distance import closest_points_on_mesh
from cardiocore.geometry.mesh import is_closed_and_oriented
from cardiocore.geometry.untangle import untangle
from cardiocore.geometry.winding import inside_mesh
from cardiocore.recon.rules import Rule

Mesh = tuple[torch.Tensor, torch.Tensor]
DEFAULT_MARGIN_MM = 0.3
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class ResolveReport:
    """What :func:`resolve_meshes` did: vertices moved per separation round, and the
    self-intersecting face pairs left per structure (0 when untangled)."""

    moved_per_round: tuple[int, ...]
    self_intersections_left: dict[str, int]


def _push(moving: torch.Tensor, other: Mesh, want_inside: bool, margin_mm: float) -> int:
    """Move the vertices of ``moving`` (in place) that are on the wrong side of ``other`` to its
    surface plus ``margin_mm`` on the right side; returns how many moved."""
    verts, faces = other
    inside = inside_mesh(moving, verts, faces, method="rays" if is_closed_and_oriented(faces) else "exact")
    wrong = inside if not want_inside else ~inside
    if not bool(wrong.any()):
        return 0
    nearest = closest_points_on_mesh(moving[wrong], verts, faces).closest
    # From the surface towards the wrong-side vertex: the wrong side; step the other way.
    towards_wrong = torch.nn.functional.normalize(moving[wrong] - nearest, dim=1)
    moving[wrong] = nearest - margin_mm * towards_wrong
    return int(wrong.sum())


def resolve_meshes(
    meshes: Sequence[Mesh],
    names: Sequence[str],
    rules: Sequence[Rule],
    margin_mm: float = DEFAULT_MARGIN_MM,
    rounds: int = DEFAULT_ROUNDS,
) -> tuple[list[Mesh], ResolveReport]:
    """Separate the meshes by the rules, then untangle each (module docstring).

    Args:
        meshes: per structure (verts (V_s, 3) mm, faces (F_s, 3) int64), closed and outward.
        names: structure names aligned with ``meshes``; rules naming others are skipped.
        rules: the rules to enforce.
        margin_mm: how far beyond the other surface a moved vertex lands.
        rounds: most separation rounds (a move can create a new violation with a third mesh).

    Returns:
        The new meshes (same faces, new vertex tensors without autograd graph) and a report.
    """
    verts = [v.detach().clone() for v, _ in meshes]
    faces = [f for _, f in meshes]
    index = {name: s for s, name in enumerate(names)}
    applicable = [r for r in rules if r.a in index and r.b in index]
    # A rule whose last check moved nothing is skipped while neither of its meshes changes (the
    # check would move nothing again); every move raises its mesh's version.
    version = [0] * len(verts)
    clean: dict[int, tuple[int, int]] = {}
    moved_per_round = []
    for _ in range(rounds):
        moved = 0
        for r, rule in enumerate(applicable):
            a, b = index[rule.a], index[rule.b]
            if clean.get(r) == (version[a], version[b]):
                continue
            moved_a = _push(verts[a], (verts[b], faces[b]), rule.kind == "inside", margin_mm)
            version[a] += moved_a > 0
            moved_b = _push(verts[b], (verts[a], faces[a]), False, margin_mm) if rule.kind == "disjoint" else 0
            version[b] += moved_b > 0
            if moved_a + moved_b == 0:
                clean[r] = (version[a], version[b])
            moved += moved_a + moved_b
        moved_per_round.append(moved)
        if moved == 0:
            break
    # The meshes untangle independently: in threads (numpy, SciPy and torch release the GIL in
    # their kernels), as many as torch may use, which gives the same meshes in less time.
    with ThreadPoolExecutor(max_workers=max(1, min(len(verts), torch.get_num_threads()))) as pool:
        untangled = list(pool.map(untangle, verts, faces))
    verts = [v for v, _ in untangled]
    left = {name: count for name, (_, count) in zip(names, untangled, strict=True)}
    return list(zip(verts, faces, strict=True)), ResolveReport(tuple(moved_per_round), left)
