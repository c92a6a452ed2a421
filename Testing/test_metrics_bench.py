"""The Chamfer benchmarks run end to end on tiny problems and report honest, complete rows."""

from __future__ import annotations

import sys

import pytest

from cardiocore.bench.chamfer import bench_chamfer, bench_memory_scaling, bench_pairwise

KEYS = {"benchmark", "method", "device", "size", "median_s", "target_s", "ratio", "peak_mb", "note"}


def test_bench_chamfer_rows() -> None:
    rows = bench_chamfer(device="cpu", n=500, repeats=2)
    assert [row["method"] for row in rows] == [
        "ours", "ours (brute force)", "dense torch.cdist", "scipy cKDTree"
    ]
    for row in rows:
        assert KEYS <= row.keys()
        assert row["median_s"] > 0 and row["target_s"] is None  # no CPU target is stated
    assert rows[0]["ratio"] == 1.0


def test_bench_pairwise_extrapolates_and_labels() -> None:
    rows = bench_pairwise(device="cpu", n_shapes=8, n_points=64, measured_shapes=4, repeats=1)
    measured = [row for row in rows if "extrapolated" not in row["method"]]
    extrapolated = [row for row in rows if "extrapolated" in row["method"]]
    assert len(measured) == len(extrapolated) == 3
    for low, high in zip(measured, extrapolated):
        assert high["median_s"] == pytest.approx(low["median_s"] * 4)
        assert "measured at 4 x 4" in high["note"] and high["size"].startswith("8 x 8")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is read from /proc")
def test_brute_force_memory_grows_linearly_and_dense_quadratically() -> None:
    rows = bench_memory_scaling(device="cpu", sizes=(2_500, 5_000), dense_up_to=5_000)
    peak = {(row["method"], row["size"]): row["peak_mb"] for row in rows}

    def growth(method: str) -> float:
        return peak[(method, "5,000 vs 5,000 points")] / peak[(method, "2,500 vs 2,500 points")]

    brute_ratio, dense_ratio = growth("ours (brute force)"), growth("dense torch.cdist")
    assert 1.6 < brute_ratio < 2.5  # chunk x n block: doubling n doubles it
    assert dense_ratio > 3.2  # n x n matrix: doubling n quadruples it
