"""One way to time a benchmark, measure its peak memory and write its rows.

Every benchmark row is a dict with these keys, the columns ``cardio bench core`` prints (plus any
extra keys a benchmark adds):

- ``benchmark``, ``method``, ``device``, ``size`` (the problem size in words);
- ``median_s``: median wall time of the timed runs, seconds (CUDA synchronised);
- ``target_s``: the project's target for this figure (None where none is stated); printed beside
  the figure, never instead of it;
- ``ratio``: this row's ``median_s`` divided by the ``median_s`` of our method on the same
  problem, so ours is 1.0 and a peer with ratio 40 is 40 times slower than ours;
- ``peak_mb``: extra memory at the peak of one run, MiB (see :func:`peak_memory_mb`);
- ``note``: anything needed to read the row honestly (e.g. extrapolated or scaled figures).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cardiocore.errors import CardioInputError

Row = dict[str, Any]

SAMPLE_INTERVAL_S = 1e-4
"""Pause between two readings of the CPU peak-memory sampler, seconds."""

MIN_SAMPLED_S = 0.02
"""A CPU peak-memory measurement repeats the call until this long has passed, seconds."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device | str, repeats: int, warmup: int = 1
) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, seconds.

    On CUDA the device is synchronised before the clock starts and before it stops, so queued
    kernels are counted in the run that launched them.
    """
    if repeats < 1 or warmup < 0:
        raise CardioInputError(
            "repeats/warmup", f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}"
        )
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (all fields size_t)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]


def _glibc_heap_bytes() -> Callable[[], int] | None:
    """A function giving the bytes malloc has handed out and not freed, all arenas (glibc >= 2.33)."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + mmap-ed blocks

    return in_use


def _resident_bytes() -> Callable[[], int] | None:
    """A function giving this process's resident set size in bytes (Linux ``/proc``), else None."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    return lambda: int(statm.read_text().split()[1]) * page


_host_bytes = _glibc_heap_bytes() or _resident_bytes()


def _sampled_peak_bytes(fn: Callable[[], object], counter: Callable[[], int]) -> int:
    """Highest ``counter()`` above its starting value while ``fn`` runs, read by a sampler thread.

    ``fn`` is called again until ``MIN_SAMPLED_S`` has passed, so that a call shorter than a few
    sampling intervals is still seen at its peak (every call does the same work).
    """
    base = counter()
    peak = base
    started, stop = threading.Event(), threading.Event()

    def sample() -> None:
        nonlocal peak
        started.set()
        while not stop.is_set():
            peak = max(peak, counter())
            time.sleep(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started.wait()
    try:
        deadline = time.perf_counter() + MIN_SAMPLED_S
        fn()
        while time.perf_counter() < deadline:
            fn()
    finally:
        stop.set()
        sampler.join()
    return max(0, max(peak, counter()) - base)


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> float | None:
    """Extra memory at the peak of one call of ``fn``, MiB (``fn`` must do the same work each call).

    CUDA: ``torch.cuda.max_memory_allocated`` above the allocation on entry (device memory only;
    host work of a CUDA benchmark is not counted).

    CPU: the bytes glibc's malloc has handed out and not freed (``mallinfo2``: in-use heap chunks
    of every arena plus mmap-ed blocks) above the value on entry, read by a sampler thread about
    every 0.1 ms while ``fn`` runs; ``fn`` is called again until ``MIN_SAMPLED_S`` has passed (a
    slower call runs once) so that short calls are seen at their peak. torch's CPU allocator, NumPy
    and SciPy's C++ all allocate through malloc, so this sees them all. It counts live
    allocations, not pages: it needs no change to malloc's settings, does not depend on when glibc
    returns freed memory to the system, and sees a peak even when a larger one happened earlier
    in the process (which the process high-water mark ``VmHWM`` does not). A block that lives
    for less than a sampling interval can be missed, so the figure is a lower bound.

    Fallback where glibc has no ``mallinfo2`` (glibc < 2.33, musl): the resident set size from
    ``/proc/self/statm``, sampled the same way, which also counts freed memory the allocator
    keeps. None where neither is available (e.g. macOS).
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return None if _host_bytes is None else _sampled_peak_bytes(fn, _host_bytes) / 2**20
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    start = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - start) / 2**20


def benchmark_row(
    benchmark: str,
    method: str,
    device: torch.device | str,
    size: str,
    median_s: float,
    peak_mb: float | None,
    target_s: float | None = None,
    note: str = "",
    **extra: Any,
) -> Row:
    """One row with every common key (module docstring); ``ratio`` is left None for :func:`add_ratios`."""
    return {
        "benchmark": benchmark, "method": method, "device": str(device), "size": size,
        "median_s": median_s, "target_s": target_s, "ratio": None, "peak_mb": peak_mb, "note": note,
        **extra,
    }


def add_ratios(rows: list[Row]) -> list[Row]:
    """Set each row's ``ratio`` to its ``median_s`` over the first row's (ours); returns ``rows``."""
    ours = rows[0]["median_s"]
    for row in rows:
        row["ratio"] = row["median_s"] / ours
    return rows


def measure_methods(
    benchmark: str,
    size: str,
    device: torch.device | str,
    methods: dict[str, Callable[[], object]],
    repeats: int,
    target_s: float | None = None,
    notes: dict[str, str] | None = None,
) -> list[Row]:
    """Time (:func:`median_seconds`) and measure (:func:`peak_memory_mb`) each method on one problem.

    The first method is ours (ratio 1.0); ``notes`` maps a method to its ``note``.
    """
    notes = notes or {}
    return add_ratios([
        benchmark_row(benchmark, method, device, size, median_seconds(fn, device, repeats),
                      peak_memory_mb(fn, device), target_s, notes.get(method, ""))
        for method, fn in methods.items()
    ])
