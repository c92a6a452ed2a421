"""Faces grouped by size, for the KD-tree searches whose reach a face's size sets.

A search for faces within a face's radius of something has to reach as far as the largest face
can; one stretched triangle then widens the search for all of them. Grouping faces by octave of
their bounding-sphere radius keeps each group's largest radius within 2x of all of its members'.
"""

from __future__ import annotations

import numpy as np


def octave_groups(radius: np.ndarray, octaves: int) -> list[np.ndarray]:
    """Indices (into ``radius`` (F,), mm) grouped by octave below the largest radius: group k holds
    the radii in (largest / 2**(k+1), largest / 2**k], and the last of ``octaves`` groups also
    everything smaller (zero radii included). Empty groups are left out; largest first."""
    largest = radius.max(initial=0.0)
    if largest == 0:
        return [np.arange(radius.shape[0])]
    with np.errstate(divide="ignore"):
        octave = np.clip(np.floor(-np.log2(radius / largest)), 0, octaves - 1)
    return [np.flatnonzero(octave == k) for k in np.unique(octave)]
