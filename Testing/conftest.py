"""Shared pytest fixtures: the public data folder and device markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CARDIOSHAPE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

if (os.cpu_count() or 1) <= 2 and "OMP_NUM_THREADS" not in os.environ:
    # On two cores torch's second OpenMP thread mostly spins against pytest's own work (and against
    # subprocess trainers): one thread ran the winding-number tests 4x faster on the CI-sized machine.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the public data (``../shared/data``); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def app():
    """The shared headless Slicer application on an empty scene, emptied again afterwards."""
    from cardiocore.mrml.app import slicer_app

    application = slicer_app()
    application.clear()
    yield application
    application.clear()


def shared_file(relative: str) -> Path:
    """One file under the public data folder, skipping the calling test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"public data file {path} is absent")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny_gen(tmp_path_factory):
    """A CardioGen model trained once per session on phantoms (see gen_helpers.train_tiny_model)."""
    from gen_helpers import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("tiny_gen"))
