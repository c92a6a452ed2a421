"""CardioGen test helpers: a phantom LV cohort (synthetic, known volumes) and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import torch

from cardiocore.gen.data import ShapeCohort
from cardiocore.gen.training import GenTrainingSpec, TrainedGen, train_cardiogen
from cardiocore.phantoms.lv import lv_cohort

GRID = {"n_circumferential": 16, "n_longitudinal": 8}  # 2 x 129 = 258 vertices per LV


def phantom_cohort(n_subjects: int, seed: int = 0) -> ShapeCohort:
    """ED and ES phantoms of ``n_subjects`` subjects (subject ids s0.., regions endo/epi, cavity_ml)."""
    pairs = lv_cohort(n_subjects, seed=seed, **GRID)
    meshes = [(phase.verts, phase.faces) for pair in pairs for phase in pair]
    n_endo = pairs[0][0].endo_verts.shape[0]
    return ShapeCohort.from_meshes(
        meshes,
        phases=["ED", "ES"] * n_subjects,
        subject_ids=[f"s{i}" for i in range(n_subjects) for _ in range(2)],
        regions={"endocardium": torch.arange(n_endo), "epicardium": torch.arange(n_endo, 2 * n_endo)},
        clinical={"cavity_ml": [phase.cavity_ml for pair in pairs for phase in pair]},
    )


def train_tiny_model(out_dir: Path, n_subjects: int = 24, **spec_changes) -> TrainedGen:
    """A CardioGen model trained in seconds on phantoms (GenTrainingSpec.tiny())."""
    spec = GenTrainingSpec.tiny()
    for name, value in spec_changes.items():
        setattr(spec, name, value)
    return train_cardiogen(phantom_cohort(n_subjects), out_dir, spec, name="tiny-phantom", progress=lambda *a: None)
