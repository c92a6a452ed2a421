"""The shared timing and memory measures, and the Chamfer benchmarks end to end on tiny problems."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

from cardiocore.bench.chamfer import bench_chamfer, bench_memory_scaling, bench_pairwise
from cardiocore.bench.dispatch import DispatchCounter
from cardiocore.bench.measure import measure_methods, median_seconds, peak_memory_mb
from cardiocore.errors import CardioInputError

KEYS = {"benchmark", "method", "device", "size", "median_s", "target_s", "ratio", "peak_mb", "note"}
MIB_40M = 40e6 / 2**20  # a 40 MB block in MiB
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory needs Linux")


def test_median_seconds_counts_only_timed_calls() -> None:
    calls = []

    def sleep() -> None:
        calls.append(1)
        time.sleep(0.01 * len(calls))  # 10, 20, 30, 40 ms: median of the last three is 30 ms

    assert 0.03 <= median_seconds(sleep, "cpu", repeats=3) < 0.04  # sleep never ends early
    assert len(calls) == 4
    with pytest.raises(CardioInputError, match="repeats"):
        median_seconds(sleep, "cpu", repeats=0)


@linux_only
def test_peak_memory_sees_torch_numpy_and_a_peak_below_an_earlier_one() -> None:
    def torch_block() -> None:
        torch.ones(10_000_000).sum()  # 40 MB float32, freed on return

    def numpy_block() -> None:
        np.ones(5_000_000).sum()  # 40 MB float64, freed on return

    peak_memory_mb(lambda: torch.ones(50_000_000).sum(), "cpu")  # an earlier, larger 200 MB peak
    assert peak_memory_mb(torch_block, "cpu") == pytest.approx(MIB_40M, rel=0.05)
    assert peak_memory_mb(numpy_block, "cpu") == pytest.approx(MIB_40M, rel=0.05)
    assert peak_memory_mb(lambda: None, "cpu") < 0.5


def test_measure_methods_ratio_is_time_over_ours() -> None:
    rows = measure_methods("sleep", "n/a", "cpu", {"ours": lambda: time.sleep(0.01),
                                                   "peer": lambda: time.sleep(0.03)}, repeats=2)
    assert [row["method"] for row in rows] == ["ours", "peer"]
    assert all(KEYS <= row.keys() for row in rows)
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(rows[1]["median_s"] / rows[0]["median_s"])
    assert rows[1]["ratio"] > 2  # the peer sleeps three times as long


@pytest.mark.cuda
def test_cuda_peak_memory_is_the_allocation_delta() -> None:
    keep = torch.ones(1_000_000, device="cuda")  # allocated before: not counted
    assert peak_memory_mb(lambda: torch.ones(10_000_000, device="cuda").sum(), "cuda") == pytest.approx(
        MIB_40M, rel=0.02
    )
    assert median_seconds(lambda: keep.sum(), "cuda", repeats=3) > 0


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


@linux_only
def test_brute_force_memory_grows_linearly_and_dense_quadratically() -> None:
    rows = bench_memory_scaling(device="cpu", sizes=(2_500, 5_000), dense_up_to=5_000)
    peak = {(row["method"], row["size"]): row["peak_mb"] for row in rows}

    def growth(method: str) -> float:
        return peak[(method, "5,000 vs 5,000 points")] / peak[(method, "2,500 vs 2,500 points")]

    brute_ratio, dense_ratio = growth("ours (brute force)"), growth("dense torch.cdist")
    assert 1.6 < brute_ratio < 2.5  # chunk x n block: doubling n doubles it
    assert dense_ratio > 3.2  # n x n matrix: doubling n quadruples it


def _reads_back(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Two operations that wait for a GPU: a value read back and boolean-mask indexing."""
    if bool((values > 0).any()):
        return values[mask] * 2.0
    return values


def test_the_dispatch_counter_finds_the_waits_of_the_code_it_is_asked_about() -> None:
    values, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    with DispatchCounter(package="Testing") as counter:
        _reads_back(values, mask)
        values.view(2, 3).sum()  # a view and a launch, no wait
    assert [w.split(" in ")[0] for w in counter.waits] == ["aten._local_scalar_dense.default", "aten.index.Tensor"]
    assert all("_reads_back" in w for w in counter.waits)
    assert counter.dispatches == counter.launches + 1 and counter.by_op["aten.sum.default"] == 1
    with DispatchCounter() as elsewhere:  # the default package is cardiocore: this file's waits are not its own
        _reads_back(values, mask)
    assert elsewhere.waits == [] and elsewhere.launches > 0
