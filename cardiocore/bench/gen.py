"""``cardio bench gen``: sampling speed of CardioGen's fast samplers against MeshLDM's 1000-step
ancestral DDPM sampler, same model, same run, each with its 1-NNA.

Each sampler generates ``n`` meshes of one phase with :meth:`CardioGenModel.sample` (latent
sampling and VAE decoding, meshes returned on the CPU), all from the same seed, so they start
from the same noise. A last row times the VAE decoding of ``n`` latents alone: every sampler
pays it once, so with it a sampler of ``k`` steps can be at most ``T / k`` times faster than
the ``T``-step chain (20x at 50 of 1000 steps, only if decoding were free). Timing and peak
memory come from :mod:`cardiocore.bench.measure` and the rows follow its schema (``ratio``:
this row's time over the first fast sampler's). Every sampler's 1-NNA, COV and MMD are measured
on disjoint sets of ``m`` of the meshes it generated (by default every set the ``n`` meshes
hold: 6 of 150 at 1,000 meshes), each against the same ``m`` reference meshes (``m`` = the
smaller of ``n``, the reference set and ``nna_size``;
:func:`cardiocore.gen.evaluate.generative_scores_per_set`), and averaged: with 150 references
one set's 1-NNA has a standard deviation of 2 to 5 points from one draw of samples to the next
(CAP ED test split, bundled model), as large as the 2-point gap the target allows.
``one_nna_se_pts`` is the standard error of that mean over the generated sets (the reference set
is shared, so samplers are compared on the same references) and ``one_nna_gap_se_pts`` that of a
fast sampler's gap to DDPM (the two standard errors combined as if independent).
The quality of a fast sampler is read beside its speed-up, never instead of it.

Targets (issue "CardioGen", Speed): a fast sampler >= 20x faster than the 1000-step sampler with
1-NNA within 2 points of it; <= 15 s per 1,000 meshes on 2 CPU cores, <= 0.5 s on an H100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cardiocore.bench.core import format_rows
from cardiocore.bench.measure import Row, add_ratios, benchmark_row, median_seconds, peak_memory_mb
from cardiocore.errors import CardioInputError
from cardiocore.gen.evaluate import equal_size, generative_scores_per_set
from cardiocore.train.device import select_device

if TYPE_CHECKING:
    from cardiocore.gen.model import CardioGenModel

GEN_TARGET_S = {"cpu": 15.0, "cuda": 0.5}
"""Seconds allowed to sample 1,000 meshes with the fast sampler (2 CPU cores; one H100)."""
TARGET_N = 1000
SPEEDUP_TARGET = 20.0
"""The fast sampler must be at least this many times faster than the 1000-step sampler ..."""
ONE_NNA_GAP_TARGET_PTS = 2.0
"""... with a 1-NNA within this many percentage points of the 1000-step sampler's."""
FAST_SAMPLERS = ("ddim", "plms")
DEFAULT_STEPS = (50, 20)
"""Step counts of the fast samplers (each sampler at each count)."""
QUICK_N = 16
"""Meshes per method in ``quick`` mode (smoke tests)."""
NO_QUALITY = {"one_nna_percent": None, "one_nna_se_pts": None, "coverage_percent": None, "mmd_mm": None,
              "nna_set": None, "nna_sets": None}
"""The quality keys of a row without a reference set (or of the decode-only row)."""

TARGETS_LINE = (
    f"targets: fast sampler >= {SPEEDUP_TARGET:g}x faster than the 1000-step DDPM with 1-NNA within "
    f"{ONE_NNA_GAP_TARGET_PTS:g} points of it; <= {GEN_TARGET_S['cpu']:g} s per {TARGET_N:,} meshes on 2 CPU "
    f"cores, <= {GEN_TARGET_S['cuda']:g} s on an H100"
)


def run_gen_benchmarks(
    model: CardioGenModel,
    reference_verts: torch.Tensor | np.ndarray | None = None,
    n: int = TARGET_N,
    device: str = "auto",
    quick: bool = False,
    *,
    steps: int | Sequence[int] = DEFAULT_STEPS,
    samplers: Sequence[str] = FAST_SAMPLERS,
    repeats: int = 3,
    nna_size: int | None = None,
    nna_sets: int | None = None,
    phase: str = "ED",
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> list[Row]:
    """Time DDIM and PLMS at each of ``steps``, the ancestral DDPM over the whole chain, and the
    VAE decoding alone.

    Args:
        model: a trained CardioGen model (moved to ``device`` for the run, then moved back).
        reference_verts: real meshes (R, V, 3) mm of ``phase`` in the model's template (e.g. the
            held-out split); None: no 1-NNA.
        n: meshes per timed call (1,000 is the target's size).
        device: "auto", "cpu", "cuda", ...
        quick: smoke test: ``QUICK_N`` meshes, one timed run, 1-NNA on at most 8 meshes.
        steps: step counts of the fast samplers.
        samplers: the fast samplers to run (a subset of ``FAST_SAMPLERS``).
        repeats: timed runs of each fast sampler and of the decoding after one warm-up (the DDPM
            sampler runs once, after them).
        nna_size: at most this many meshes per set for 1-NNA (None: up to ``n`` and R).
        nna_sets: at most this many disjoint generated sets are scored and averaged (fewer when
            ``n`` holds fewer sets of that size); None: every set ``n`` holds.
        phase: the phase to sample ("ED" as in the issue).
        seed: one seed for every sampler (same initial noise).
        progress: called with a line of text before each method.

    Returns:
        Rows in the schema of :mod:`cardiocore.bench.measure`: the fast samplers (the first is
        ``ratio`` 1.0), the DDPM sampler, then "VAE decode only". Extra keys: ``sampler``,
        ``steps``, ``threads``, ``one_nna_percent``, ``coverage_percent``, ``mmd_mm`` (means over
        the sets), ``one_nna_se_pts``, ``nna_set`` (meshes per set), ``nna_sets``, and on the
        fast rows ``speedup_vs_ddpm``, ``chain_speedup_vs_ddpm`` (the same with the decode-only
        time taken off both, i.e. the latent chains' ratio; None when the difference is not
        positive), ``one_nna_gap_pts`` (this 1-NNA minus DDPM's, points), ``one_nna_gap_se_pts``
        and ``meets_targets`` (speed-up, 1-NNA gap and, at 1,000 meshes, time; None when a figure
        is missing).
    """
    step_counts = [int(s) for s in ([steps] if isinstance(steps, int) else steps)]
    if quick:
        n, repeats, nna_size = min(int(n), QUICK_N), 1, min(nna_size or 8, 8)
    if not isinstance(n, int) or n < 1:
        raise CardioInputError("n", f"must be a positive number of meshes, got {n!r}")
    if nna_sets is not None and nna_sets < 1:
        raise CardioInputError("nna_sets", f"must be at least 1, got {nna_sets}")
    unknown = [s for s in samplers if s not in FAST_SAMPLERS]
    if unknown or not samplers:
        raise CardioInputError("samplers", f"must be some of {', '.join(FAST_SAMPLERS)}, got {list(samplers)}")
    if repeats < 1 or not step_counts:
        raise CardioInputError("repeats/steps", f"need repeats >= 1 and a step count, got {repeats}, {steps}")
    reference = _reference(model, reference_verts)
    dev = select_device(device)
    home = next(model.parameters()).device
    model.to(dev)
    try:
        quality = _Quality(reference, nna_size, nna_sets, seed, dev)
        rows = _measure(model, quality, n, dev, step_counts, tuple(samplers), repeats, phase, seed, progress)
    finally:
        model.to(home)
    return _add_targets(rows, dev, n)


def _reference(model: CardioGenModel, reference_verts: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    if reference_verts is None:
        return None
    reference = torch.as_tensor(reference_verts).detach().float().cpu()
    if reference.dim() != 3 or tuple(reference.shape[1:]) != (model.n_vertices, 3) or reference.shape[0] < 2:
        raise CardioInputError(
            "reference meshes",
            f"must be (R >= 2, {model.n_vertices}, 3) in the model's template, got {tuple(reference.shape)}",
        )
    return reference


def _measure(
    model: CardioGenModel, quality: _Quality, n: int, dev: torch.device, step_counts: list[int],
    samplers: tuple[str, ...], repeats: int, phase: str, seed: int, progress: Callable[[str], None],
) -> list[Row]:
    """One row per sampler (timed runs, then one peak-memory run whose meshes give the 1-NNA),
    then the decoding alone."""
    chain = model.diffusion[phase if phase in model.diffusion else "conditional"].num_train_timesteps
    plan = [(f"{s.upper()} {k} steps", s, k, repeats, 1) for k in step_counts for s in samplers]
    plan.append((f"DDPM {chain} steps (MeshLDM ancestral)", "ddpm", None, 1, 0))
    size = f"{n:,} {phase} meshes of {model.n_vertices:,} vertices"
    threads = torch.get_num_threads()
    rows = []
    for method, sampler, steps, method_repeats, warmup in plan:
        progress(f"{method}: {n:,} meshes on {dev} ...")
        kept: list[torch.Tensor] = []

        def sample() -> torch.Tensor:
            return model.sample(n, phase, seed=seed, steps=steps, sampler=sampler)

        def sample_keeping() -> None:
            kept.clear()  # the previous call's meshes are not part of this call's peak
            kept.append(sample())

        seconds = median_seconds(sample, dev, method_repeats, warmup=warmup)
        peak = peak_memory_mb(sample_keeping, dev)
        scores = quality.scores(model, kept[0])
        rows.append(benchmark_row("gen sampling", method, dev, size, seconds, peak, None,
                                  "latent sampling + VAE decode, meshes copied to the CPU",
                                  sampler=sampler, steps=steps or chain, threads=threads, **scores))
    progress(f"VAE decode only: {n:,} latents on {dev} ...")
    latents = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed)).to(dev)

    def decode() -> torch.Tensor:
        return model.decode(latents)

    rows.append(benchmark_row("gen sampling", "VAE decode only", dev, size, median_seconds(decode, dev, repeats),
                              peak_memory_mb(decode, dev), None, "included once in every sampler's time",
                              sampler=None, steps=0, threads=threads, **NO_QUALITY))
    return add_ratios(rows)


class _Quality:
    """1-NNA, COV (%) and MMD (mm) of generated meshes against one fixed reference set: the
    mean over up to ``sets`` disjoint sets of ``m`` generated meshes (module docstring)."""

    def __init__(self, reference: torch.Tensor | None, size: int | None, sets: int | None, seed: int,
                 dev: torch.device) -> None:
        self.reference, self.size, self.sets, self.seed, self.dev = reference, size, sets, seed, dev

    def scores(self, model: CardioGenModel, samples: torch.Tensor) -> dict[str, float | int | None]:
        if self.reference is None:
            return dict(NO_QUALITY)
        m = min(samples.shape[0], self.reference.shape[0], self.size or samples.shape[0])
        _, real = equal_size(samples[:m], self.reference, self.seed)
        n_sets = max(1, min(self.sets or samples.shape[0], samples.shape[0] // m))
        sets = list(samples[:n_sets * m].split(m))
        per_set = generative_scores_per_set(sets, real, model.faces, seed=self.seed, device=self.dev)
        one_nna = np.array([100.0 * s.one_nna for s in per_set])
        return {"one_nna_percent": float(one_nna.mean()),
                "one_nna_se_pts": float(one_nna.std(ddof=1) / np.sqrt(n_sets)) if n_sets > 1 else None,
                "coverage_percent": float(np.mean([100.0 * s.coverage for s in per_set])),
                "mmd_mm": float(np.mean([s.mmd_mm for s in per_set])), "nna_set": m, "nna_sets": n_sets}


def _add_targets(rows: list[Row], dev: torch.device, n: int) -> list[Row]:
    """Targets beside the fast rows: time (at 1,000 meshes), speed-up and 1-NNA gap to DDPM."""
    ddpm = next(row for row in rows if row["sampler"] == "ddpm")
    decode_s = rows[-1]["median_s"]
    for row in rows:
        fast = row["sampler"] in FAST_SAMPLERS
        row["speedup_vs_ddpm"] = ddpm["median_s"] / row["median_s"] if fast else None
        chain_s = row["median_s"] - decode_s
        row["chain_speedup_vs_ddpm"] = (ddpm["median_s"] - decode_s) / chain_s if fast and chain_s > 0 else None
        row["one_nna_gap_pts"] = row["one_nna_gap_se_pts"] = row["meets_targets"] = None
        if not fast:
            continue
        row["target_s"] = GEN_TARGET_S.get(dev.type) if n == TARGET_N else None
        if row["one_nna_percent"] is not None and ddpm["one_nna_percent"] is not None:
            row["one_nna_gap_pts"] = row["one_nna_percent"] - ddpm["one_nna_percent"]
            if row["one_nna_se_pts"] is not None and ddpm["one_nna_se_pts"] is not None:
                row["one_nna_gap_se_pts"] = float(np.hypot(row["one_nna_se_pts"], ddpm["one_nna_se_pts"]))
            checks = [row["speedup_vs_ddpm"] >= SPEEDUP_TARGET, abs(row["one_nna_gap_pts"]) <= ONE_NNA_GAP_TARGET_PTS]
            if row["target_s"] is not None:
                checks.append(row["median_s"] <= row["target_s"])
            row["meets_targets"] = all(checks)
    return rows


def format_gen_rows(rows: list[Row]) -> str:
    """The rows as an aligned table (:func:`cardiocore.bench.core.format_rows`) and the targets."""
    return f"{format_rows(rows)}\n{TARGETS_LINE}"
