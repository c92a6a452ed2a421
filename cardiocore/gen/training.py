"""Train a CardioGen model on a cohort in correspondence: the VAE, then the latent diffusion models.

Stages, each a :class:`cardiocore.train.loop.Trainer` run with its own checkpoint folder under
``out_dir`` (so an interrupted run resumes where it stopped, stage by stage):

1. split the cohort by subject (train / validation / test; ED and ES of a subject together;
   stratified by EDV and EF);
2. ``vae``: the mesh VAE on the training shapes of both phases (the validation split picks the
   best checkpoint by mean per-vertex error in mm);
3. ``diffusion-ED``, ``diffusion-ES``: one unconditional latent diffusion model per phase on the
   VAE's posterior means of that phase (MeshLDM), kept as the moving average of their weights;
4. ``diffusion-conditional``: one model on all latents with the phase label and the subject's EDV
   (ml) and EF (%) as conditions, each dropped at random for classifier-free guidance;
5. the result, ``out_dir/model.pt`` (:class:`cardiocore.gen.model.CardioGenModel`), with a model
   card (data, split, validation figures) and the training cohort's clinical distribution.

``vae_from`` skips stage 2 and trains the diffusion models on the latents of an existing model's
VAE (same cohort and split), e.g. to retrain them with other settings.

EDV and EF come from the meshes themselves (cavity volume of the base-closed endocardium), so
any cohort with ED and ES of the same subjects can condition on them; subjects with one phase
only get NaN (unknown) conditions.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import math
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cardiocore
from cardiocore.errors import CardioInputError
from cardiocore.gen.clinical import lv_shape_indices, surface_volumes_ml
from cardiocore.gen.data import ShapeCohort, ShapeDataset, ShapeNormalizer, split_by_subject
from cardiocore.gen.denoiser import LatentDenoiser
from cardiocore.gen.diffusion import PHASE_NAMES, LatentDataset, LatentDiffusion, latent_diffusion_loss
from cardiocore.gen.model import CONDITION_NAMES, DIFFUSION_KEYS, CardioGenModel, build_vae
from cardiocore.gen.pose import (
    SCATTERED_DEGREES,
    SCATTERED_MM,
    aligned_cohort,
    key_items,
    pose_spread,
    procrustes_reference,
)
from cardiocore.gen.vae import KLAnnealing, MeshVAE, VAEObjective
from cardiocore.geometry.hierarchy import MeshHierarchy
from cardiocore.train.checkpoint import json_ready, load_checkpoint, trained_weights
from cardiocore.train.loop import TrainConfig, Trainer, TrainResult

GenProgress = Callable[[str, int, int, Mapping[str, float]], None]
"""``progress(stage, step, total, metrics)`` after each optimizer step."""

MODEL_FILE = "model.pt"
MIN_TRAIN_SUBJECTS = 8


VAE_FIELDS = (
    "channels", "latent_dim", "cheb_k", "factors", "vae_steps", "vae_batch", "vae_lr", "logvar_init",
    "split", "split_seed", "stratify_split", "seed", "align",
)
VAE_FIELDS_ADDED_LATER = {"stratify_split": False, "align": False}
"""VAE settings that older model cards lack, with the value those runs had."""
DIFFUSION_FIELDS = (
    "diffusion_steps", "diffusion_batch", "diffusion_lr", "hidden", "layers", "timesteps", "condition_dropout",
    "diffusion_ema",
)


@dataclass
class GenTrainingSpec:
    """Architecture and schedule of a CardioGen training run (defaults: the bundled cardiogen-cap
    1.0.0's architecture and schedule; it predates ``diffusion_ema``, ``stratify_split``, the
    70/10/20 split and condition dropout 0.3, and was trained with None, False, 80/10/10 and 0.1).

    VAE: ChebConv ``channels`` per level over a quadric-decimation hierarchy (``factors``: vertex
    reduction per level), ``latent_dim``, filter size ``cheb_k``; Adam at ``vae_lr`` with cosine
    decay over ``vae_steps`` steps of ``vae_batch`` shapes; KL weight annealed 1e-4 -> 1e-3 over
    the first half. ``logvar_init``: initial posterior log-variance (a narrow posterior at the
    start keeps early training from being drowned in sampling noise; the KL term then sets it).
    Diffusion: ``layers`` FiLM residual layers of width ``hidden``, ``timesteps`` linear-beta
    DDPM steps, Adam at ``diffusion_lr`` with cosine decay over ``diffusion_steps`` steps of
    ``diffusion_batch`` latents, condition dropout ``condition_dropout`` (0.3: virtual subjects
    use the "phase and EDV, EF unknown" combination, which 0.1 drew for 7 % of the training
    items and left ES given EDV too narrow, EF SD ratio 0.76; 0.3 draws it for 10 %); the
    diffusion models kept are the moving average of their weights with decay ``diffusion_ema``
    (None: the last weights), which varies less from run to run than the weights of any single
    step.
    Split: subjects shared out by the fractions ``split`` (train, validation, test) with
    ``split_seed``, stratified by their EDV and EF when ``stratify_split`` (so that the test part
    is a fair sample of the cohort's volumes; see :func:`split_as_recorded`).
    Pose: with ``align``, every subject is first moved rigidly onto the Procrustes mean of the
    training subjects' ED shapes (ED and ES together; :mod:`cardiocore.gen.pose`), for cohorts whose
    meshes lie in their own frames; the model keeps that mean, and generates in its frame (that of
    the first training subject).
    """

    channels: tuple[int, ...] = (3, 16, 16, 32, 32)
    latent_dim: int = 16
    cheb_k: int = 6
    factors: tuple[int, ...] = (4, 4, 4, 4)
    vae_steps: int = 6000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    logvar_init: float = -6.0
    diffusion_steps: int = 12000
    diffusion_batch: int = 256
    diffusion_lr: float = 1e-3
    hidden: int = 128
    layers: int = 6
    timesteps: int = 1000
    condition_dropout: float = 0.3
    diffusion_ema: float | None = 0.999
    split: tuple[float, ...] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    stratify_split: bool = True
    seed: int = 0
    align: bool = False
    models: tuple[str, ...] = DIFFUSION_KEYS
    device: str = "auto"
    reference_per_phase: int = 300

    @classmethod
    def tiny(cls) -> GenTrainingSpec:
        """Seconds on a CPU, for tests and demos: small network, few steps."""
        return cls(
            channels=(3, 8, 8), cheb_k=3, factors=(4, 4), latent_dim=8, vae_steps=60, vae_batch=8,
            diffusion_steps=80, diffusion_batch=32, hidden=32, layers=2, timesteps=100, reference_per_phase=20,
        )

    def scaled(self, factor: float) -> GenTrainingSpec:
        """The same run with every step count multiplied by ``factor`` (at least 1 step)."""
        if not factor > 0:
            raise CardioInputError("steps scale", f"must be positive, got {factor}")
        return dataclasses.replace(
            self,
            vae_steps=max(1, round(self.vae_steps * factor)),
            diffusion_steps=max(1, round(self.diffusion_steps * factor)),
        )

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))

    def stage_identity(self, stage: str) -> dict[str, Any]:
        """The settings that decide stage ``stage``'s result ("vae" or "diffusion"); a diffusion
        stage also depends on the VAE's. Other settings may change without invalidating it."""
        fields = list(VAE_FIELDS) if stage == "vae" else [*VAE_FIELDS, *DIFFUSION_FIELDS]
        values = self.to_dict()
        return {name: values[name] for name in fields}


@dataclass
class TrainedGen:
    """Outcome of :func:`train_cardiogen`: ``model`` is None when the run was stopped early."""

    model_path: Path | None
    model: CardioGenModel | None
    splits: dict[str, ShapeCohort]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return self.model is None


def _check_cohort(cohort: ShapeCohort, spec: GenTrainingSpec) -> None:
    if "endocardium" not in cohort.regions or "epicardium" not in cohort.regions:
        raise CardioInputError(
            "cohort", "needs 'endocardium' and 'epicardium' vertex regions (LV meshes with both surfaces)"
        )
    n_subjects = len(set(cohort.subject_ids))
    needed = math.ceil(MIN_TRAIN_SUBJECTS / spec.split[0])
    if n_subjects < needed:
        raise CardioInputError(
            "cohort",
            f"has {n_subjects} subjects; a {spec.split[0]:.0%} training split needs at least {needed} "
            f"(>= {MIN_TRAIN_SUBJECTS} training subjects)",
            "add subjects",
        )
    missing = [key for key in spec.models if key in PHASE_NAMES and key not in cohort.phases]
    if missing:
        raise CardioInputError("cohort", f"has no {missing} shapes for the models {list(spec.models)}")


def subject_conditions(cohort: ShapeCohort) -> torch.Tensor:
    """(N, 2) conditions per item: its subject's EDV (ml) and EF (%); NaN where a phase is missing."""
    endo_verts, endo_faces = cohort.region_mesh("endocardium", cohort.verts.double())
    cavity = torch.from_numpy(surface_volumes_ml(endo_verts, endo_faces))
    by_subject: dict[str, dict[str, float]] = {}
    for subject, phase, volume in zip(cohort.subject_ids, cohort.phases, cavity.tolist()):
        by_subject.setdefault(subject, {})[phase] = volume
    rows = []
    for subject in cohort.subject_ids:
        volumes = by_subject[subject]
        edv, esv = volumes.get("ED", math.nan), volumes.get("ES", math.nan)
        ef = 100.0 * (edv - esv) / edv if edv > 0 and not math.isnan(esv) else math.nan
        rows.append((edv, ef))
    return torch.tensor(rows, dtype=torch.float32)


def split_record(spec: GenTrainingSpec) -> dict[str, Any]:
    """How ``spec`` splits a cohort, as recorded in the model card (see :func:`split_as_recorded`)."""
    record: dict[str, Any] = {"fractions": list(spec.split), "seed": spec.split_seed, "by": "subject"}
    if spec.stratify_split:
        record["stratified_by"] = list(CONDITION_NAMES)
    return record


def split_as_recorded(cohort: ShapeCohort, record: Mapping[str, Any]) -> tuple[ShapeCohort, ...]:
    """The parts (train, validation, test) of ``cohort`` that a model card's ``split`` record
    describes: its fractions and seed, stratified by the subjects' EDV and EF where it says so
    (cards without ``stratified_by`` were split at random)."""
    stratified_by = record.get("stratified_by")
    if stratified_by is not None and list(stratified_by) != list(CONDITION_NAMES):
        raise CardioInputError(
            "split", f"is stratified by {stratified_by}; this version stratifies by {list(CONDITION_NAMES)} only"
        )
    strata = subject_conditions(cohort) if stratified_by else None
    return split_by_subject(cohort, record.get("fractions", (0.8, 0.1, 0.1)), record.get("seed", 0), strata)


def _reference_distribution(cohort: ShapeCohort, per_phase: int, seed: int) -> dict[str, np.ndarray]:
    """Clinical indices of up to ``per_phase`` training items per phase, plus "phase" (0 ED, 1 ES)."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for label in PHASE_NAMES:
        items = [i for i, p in enumerate(cohort.phases) if p == label]
        order = torch.randperm(len(items), generator=generator)[:per_phase].tolist()
        chosen.extend(sorted(items[k] for k in order))
    columns = lv_shape_indices(cohort.verts[chosen], cohort.faces, cohort.regions)
    columns["phase"] = np.array([PHASE_NAMES.index(cohort.phases[i]) for i in chosen], dtype=np.float64)
    return columns


class _StageRunner:
    """Runs one Trainer stage with the shared device, progress, stop and resume settings."""

    def __init__(
        self, out_dir: Path, spec: GenTrainingSpec, resume: bool, overwrite: bool,
        progress: GenProgress | None, should_stop: Callable[[], bool] | threading.Event | None,
    ) -> None:
        self.out_dir, self.spec, self.resume, self.overwrite = out_dir, spec, resume, overwrite
        self.progress, self.should_stop = progress, should_stop

    def run(
        self, stage: str, model: torch.nn.Module, loss_fn: Callable, train: Any, val: Any,
        steps: int, batch: int, lr: float, best_metric: str, run_config: dict[str, Any],
        ema_decay: float | None = None,
    ) -> TrainResult:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr * 0.02)
        config = TrainConfig(
            batch_size=min(batch, len(train)),
            max_steps=steps,
            checkpoint_dir=self.out_dir / stage,
            val_every=max(1, steps // 20),
            best_metric=best_metric,
            log_every=max(1, steps // 100),
            seed=self.spec.seed,
            device=self.spec.device,
            grad_clip_norm=1.0,
            show_progress=self.progress is None,
            overwrite=self.overwrite,
            run_config=json_ready(run_config),
            ema_decay=ema_decay,
        )
        report = self.progress
        callback = None if report is None else functools.partial(report, stage)
        trainer = Trainer(
            model, optimizer, loss_fn, train, val, config=config, scheduler=scheduler,
            progress_callback=callback, should_stop=self.should_stop,
        )
        try:
            return trainer.fit(resume=self.resume)
        except torch.OutOfMemoryError as error:
            raise CardioInputError(
                f"training stage {stage!r}",
                f"ran out of GPU memory with batches of {config.batch_size} ({error})",
                "train with --device cpu (resume with --resume), or on a GPU with more memory",
            ) from error

    def load_best(self, stage: str, model: torch.nn.Module) -> None:
        """Load the stage's best validation checkpoint (else its last) into ``model`` (its moving
        average of the weights when the stage kept one)."""
        folder = self.out_dir / stage
        path = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
        model.load_state_dict(trained_weights(load_checkpoint(path)))


def train_cardiogen(
    cohort: ShapeCohort,
    out_dir: str | os.PathLike,
    spec: GenTrainingSpec | None = None,
    *,
    name: str = "user",
    data_description: str = "",
    data_license: str = "",
    resume: bool = False,
    overwrite: bool = False,
    progress: GenProgress | None = None,
    should_stop: Callable[[], bool] | threading.Event | None = None,
    vae_from: CardioGenModel | None = None,
) -> TrainedGen:
    """Train the VAE and the latent diffusion models of ``spec.models`` on ``cohort``; see module doc.

    Args:
        cohort: LV meshes in correspondence with "endocardium"/"epicardium" regions, ED and/or ES.
        out_dir: folder for the stage checkpoints and ``model.pt``.
        spec: architecture and schedule (default :class:`GenTrainingSpec`).
        name, data_description, data_license: recorded in the model card.
        resume: continue an interrupted run from the checkpoints in ``out_dir``.
        overwrite: replace checkpoints and a ``model.pt`` of a different run in ``out_dir``.
        progress: ``progress(stage, step, total, metrics)`` (None: a progress bar on stderr).
        should_stop: a callable or ``threading.Event``; when set the current stage checkpoints
            and the function returns a :class:`TrainedGen` with ``model`` None (resume later).
        vae_from: a trained model whose VAE to keep: only the diffusion models are trained, on
            its latents, with its VAE settings and split (the cohort must be the one it was
            trained on: same vertices, faces and split sizes).

    Returns:
        :class:`TrainedGen` with the model, its file, the splits and validation figures.
    """
    spec = spec or GenTrainingSpec()
    if vae_from is not None:
        spec = _with_vae_settings_of(vae_from, spec)
    unknown = sorted(set(spec.models) - set(DIFFUSION_KEYS))
    if unknown or not spec.models:
        raise CardioInputError("models", f"must be some of {DIFFUSION_KEYS}, got {list(spec.models)}")
    _check_cohort(cohort, spec)
    out = Path(out_dir)
    model_path = out / MODEL_FILE
    if model_path.exists() and not (resume or overwrite):
        raise CardioInputError(str(model_path), "already exists", "pass resume/overwrite or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    recorded_split = split_record(spec)
    splits = dict(zip(("train", "val", "test"), split_as_recorded(cohort, recorded_split)))
    alignment = _alignment(spec, splits["train"], vae_from)
    if alignment is not None:
        splits = {part: aligned_cohort(c, alignment) for part, c in splits.items()}
    train_set, val_set = splits["train"], splits.get("val")
    runner = _StageRunner(out, spec, resume, overwrite, progress, should_stop)
    data_identity = {"n_items": len(cohort), "n_vertices": cohort.n_vertices}

    torch.manual_seed(spec.seed)
    if vae_from is None:
        vae = _train_vae(runner, spec, cohort, train_set, val_set, data_identity)
        if vae is None:
            return TrainedGen(None, None, splits)
    else:
        vae = _reused_vae(vae_from, cohort, splits)
    vae.eval()
    latents = vae.encode_shapes(train_set.verts)[0].cpu()
    val_latents = vae.encode_shapes(val_set.verts)[0].cpu() if val_set is not None else None
    metrics: dict[str, float] = {}
    if val_set is not None:
        error = torch.linalg.vector_norm(vae.reconstruct(val_set.verts).cpu() - val_set.verts, dim=-1).mean()
        metrics["val_vertex_error_mm"] = float(error)

    diffusion: dict[str, LatentDiffusion] = {}
    conditions = subject_conditions(train_set)
    val_conditions = subject_conditions(val_set) if val_set is not None else None
    for key in spec.models:
        model, train_data, val_data = _diffusion_stage(
            key, spec, latents, train_set, conditions, val_latents, val_set, val_conditions
        )
        result = runner.run(
            f"diffusion-{key}", model, latent_diffusion_loss, train_data, val_data, spec.diffusion_steps,
            spec.diffusion_batch, spec.diffusion_lr, "val/loss",
            {**data_identity, "spec": spec.stage_identity("diffusion"), "model": key}, spec.diffusion_ema,
        )
        if result.stopped_early:
            return TrainedGen(None, None, splits)
        runner.load_best(f"diffusion-{key}", model)
        diffusion[key] = model.eval()
        if result.best_metric is not None:
            metrics[f"val_diffusion_loss_{key}"] = float(result.best_metric)

    card = {
        "name": name,
        "created": datetime.date.today().isoformat(),
        "cardiocore_version": cardiocore.__version__,
        "training_data": data_description or f"{len(set(cohort.subject_ids))} subjects",
        "data_license": data_license,
        "split": {**recorded_split, **{part: len(set(c.subject_ids)) for part, c in splits.items()}},
        "spec": spec.to_dict(),
        "conditions": list(CONDITION_NAMES),
        "metrics": metrics,
        **({} if vae_from is None else {"vae_from": f"{vae_from.card.get('name')} ({vae_from.card.get('created')})"}),
    }
    reference = _reference_distribution(train_set, spec.reference_per_phase, spec.seed)
    trained = CardioGenModel(vae.cpu(), {k: m.cpu() for k, m in diffusion.items()}, cohort.regions, card, reference,
                             alignment)
    trained.save(model_path, overwrite=True)
    return TrainedGen(model_path, trained, splits, metrics)


def _alignment(spec: GenTrainingSpec, train_set: ShapeCohort, vae_from: CardioGenModel | None) -> torch.Tensor | None:
    """The reference shape (V, 3) mm the cohort is aligned to (``spec.align``: the Procrustes mean of
    the training subjects' key shapes, or the reused VAE's own), else None, with a warning when the
    training meshes look like they lie in their own frames (:data:`~cardiocore.gen.pose.SCATTERED_DEGREES`)."""
    if not spec.align:
        degrees, mm = pose_spread(train_set)
        if degrees > SCATTERED_DEGREES or mm > SCATTERED_MM:
            warnings.warn(
                f"the training subjects' orientations differ by {degrees:.0f} degrees and their centres by {mm:.0f} mm "
                "(medians): the meshes seem to lie in their own frames (e.g. each patient's scanner frame), and the "
                "model would spend itself on where they lie instead of their shapes. Train with align "
                "(cardio gen train --align)",
                stacklevel=3,
            )
        return None
    if vae_from is not None and vae_from.alignment is not None:
        return vae_from.alignment
    return procrustes_reference(train_set.verts[key_items(train_set)])


def _train_vae(
    runner: _StageRunner, spec: GenTrainingSpec, cohort: ShapeCohort, train_set: ShapeCohort,
    val_set: ShapeCohort | None, data_identity: dict[str, Any],
) -> MeshVAE | None:
    """The VAE stage: the best validation VAE, or None when the run was stopped (resume later)."""
    hierarchy = MeshHierarchy.build(train_set.mean_shape(), cohort.faces, factors=spec.factors)
    vae = build_vae(hierarchy, ShapeNormalizer.fit(train_set.verts), spec.channels, spec.latent_dim, spec.cheb_k)
    torch.nn.init.constant_(vae.to_logvar.bias, spec.logvar_init)
    val_shapes = ShapeDataset(val_set, vae.normalizer) if val_set is not None else None
    result = runner.run(
        "vae", vae, VAEObjective(KLAnnealing(1e-4, 1e-3, max(1, spec.vae_steps // 2))),
        ShapeDataset(train_set, vae.normalizer), val_shapes, spec.vae_steps, spec.vae_batch, spec.vae_lr,
        "val/vertex_error_mm" if val_shapes is not None else "val/loss",
        {**data_identity, "spec": spec.stage_identity("vae")},
    )
    if result.stopped_early:
        return None
    runner.load_best("vae", vae)
    return vae


def _with_vae_settings_of(model: CardioGenModel, spec: GenTrainingSpec) -> GenTrainingSpec:
    """``spec`` with the VAE settings and split of the run that trained ``model``."""
    recorded = model.card.get("spec")
    trained = {**VAE_FIELDS_ADDED_LATER, **recorded} if isinstance(recorded, Mapping) else {}
    if any(name not in trained for name in VAE_FIELDS):
        raise CardioInputError(
            "vae_from", f"model {model.card.get('name')!r} does not record the settings its VAE was trained with",
            "train the whole model instead",
        )
    return dataclasses.replace(
        spec, **{name: tuple(trained[name]) if isinstance(trained[name], list) else trained[name] for name in VAE_FIELDS}
    )


def _reused_vae(model: CardioGenModel, cohort: ShapeCohort, splits: Mapping[str, ShapeCohort]) -> MeshVAE:
    """A copy of ``model``'s VAE, after checking that ``cohort`` and its split are the ones it saw."""
    name = f"model {model.card.get('name')!r}"
    if model.n_vertices != cohort.n_vertices or not torch.equal(model.faces.cpu(), torch.as_tensor(cohort.faces).cpu()):
        raise CardioInputError(
            "vae_from", f"{name} has {model.n_vertices} vertices and other faces than this cohort ({cohort.n_vertices})",
            "reuse a VAE trained on this cohort's template",
        )
    recorded = model.card.get("split", {})
    sizes = {part: len(set(c.subject_ids)) for part, c in splits.items()}
    if any(recorded.get(part) != size for part, size in sizes.items()):
        raise CardioInputError(
            "vae_from", f"{name} was trained on a split of {recorded} subjects, and this cohort splits into {sizes}",
            "give the cohort the VAE was trained on, so that its held-out subjects stay held out",
        )
    return copy.deepcopy(model.vae).cpu()


def _diffusion_stage(
    key: str,
    spec: GenTrainingSpec,
    latents: torch.Tensor,
    train_set: ShapeCohort,
    conditions: torch.Tensor,
    val_latents: torch.Tensor | None,
    val_set: ShapeCohort | None,
    val_conditions: torch.Tensor | None,
) -> tuple[LatentDiffusion, LatentDataset, LatentDataset | None]:
    """The untrained model and its datasets for diffusion stage ``key``."""
    conditional = key == "conditional"
    denoiser = LatentDenoiser(
        latent_dim=spec.latent_dim, hidden=spec.hidden, n_layers=spec.layers,
        n_classes=len(PHASE_NAMES) if conditional else 0,
        n_conditions=len(CONDITION_NAMES) if conditional else 0,
        num_train_timesteps=spec.timesteps,
    )
    model = LatentDiffusion(denoiser, condition_dropout=spec.condition_dropout if conditional else 0.0)

    def dataset(z: torch.Tensor, cohort: ShapeCohort, values: torch.Tensor) -> LatentDataset:
        phase = torch.tensor([PHASE_NAMES.index(p) for p in cohort.phases])
        if conditional:
            return LatentDataset(z, phase, values)
        chosen = phase == PHASE_NAMES.index(key)
        return LatentDataset(z[chosen])

    train_data = dataset(latents, train_set, conditions)
    model.fit_normalisation(train_data.latents, conditions if conditional else None)
    val_data = dataset(val_latents, val_set, val_conditions) if val_set is not None else None
    return model, train_data, val_data

