"""One training loop for every method: AMP, gradient clipping, checkpoints, exact resume, DDP.

A method supplies a model, an optimizer, a dataset and either

- ``loss_fn(model, batch) -> loss`` or ``-> (loss, {"name": value})``: the loop runs the forward
  pass under autocast, the backward pass (with a grad scaler for float16), clipping, the
  optimizer and scheduler steps; or
- ``step_fn(context, batch) -> {"name": value}``: full control for methods with several losses
  or optimizers, using ``StepContext.autocast()``, ``.backward(loss)`` and ``.optimizer_step()``.

``Trainer.fit(resume=True)`` continues from ``checkpoint_dir/last.pt``: parameters, optimizer,
scheduler, grad scaler, sample order (epoch and position in it) and every RNG, so the resumed
run ends exactly where an uninterrupted one would. ``should_stop`` (a callable or a
``threading.Event``), SIGINT and SIGTERM stop the run cleanly after the current step with a
checkpoint. Launched by ``torchrun`` the same code trains data-parallel: the global
``batch_size`` is split over the ranks, gradients are averaged by DDP, metrics are averaged
over ranks, and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

import cardiocore
from cardiocore.errors import CardioInputError
from cardiocore.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointFolder,
    capture_rng_state,
    restore_rng_state,
)
from cardiocore.train.data import EpochBatches, move_to_device, validation_loader
from cardiocore.train.device import AMP_MODES, AmpPolicy, amp_policy, seed_everything
from cardiocore.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    teardown,
    wrap_model,
)
from cardiocore.train.progress import ProgressCallback, ProgressReporter

Metrics = dict[str, float]
LossOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]

# TrainConfig fields that may change between a run and its resumption (they do not change
# what the run computes, only how long it runs, where and how it reports).
RESUMABLE_FIELDS = frozenset(
    {
        "max_steps",
        "epochs",
        "checkpoint_dir",
        "checkpoint_every",
        "val_every",
        "log_every",
        "device",
        "num_workers",
        "show_progress",
        "overwrite",
        "best_metric",
    }
)


@dataclass
class TrainConfig:
    """How to train. Exactly one of ``max_steps`` and ``epochs`` sets the length.

    batch_size: GLOBAL samples per optimizer step, divided evenly among the ranks.
    amp: "auto" (bfloat16/float16 on CUDA, off elsewhere), "off", "bf16" or "fp16".
    grad_clip_norm: clip the global gradient 2-norm to this value (None: no clipping).
    checkpoint_dir: folder for ``last.pt``/``best.pt`` (None: no checkpoints, no resume).
    checkpoint_every: also checkpoint every this many steps (the end of a run, a stop and a new
        best validation score always checkpoint).
    val_every: validate every this many steps (None: at the end of each epoch).
    best_metric: validation metric, lower is better, that decides ``best.pt``.
    log_every: record the training metrics in the history every this many steps.
    seed: seeds model-side randomness (rank r uses seed + r) and the sample order.
    device: "auto", "cpu", "cuda", "cuda:1", "mps" (the CARDIO_DEVICE variable overrides "auto").
    run_config: the method's own settings (architecture, loss weights...), JSON-compatible;
        stored in checkpoints and compared when resuming or reusing a checkpoint folder.
    overwrite: allow replacing checkpoints written by a run with a different configuration.
    ema_decay: keep an exponential moving average of the parameters and buffers, updated after
        every optimizer step with this decay (e.g. 0.999, an average over about the last 1,000
        steps), warmed up as min(decay, (1 + n) / (10 + n)) after n updates so that short runs
        average their last n / 9 steps rather than their initial weights; validation, and so
        ``best.pt``, then score the averaged weights, checkpoints hold both, and
        :func:`cardiocore.train.checkpoint.trained_weights` returns the average.
        None: no average.
    """

    batch_size: int
    max_steps: int | None = None
    epochs: int | None = None
    amp: str = "auto"
    grad_clip_norm: float | None = None
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int | None = None
    val_every: int | None = None
    best_metric: str = "val/loss"
    log_every: int = 10
    seed: int = 0
    device: str | None = "auto"
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = True
    show_progress: bool = True
    overwrite: bool = False
    run_config: dict[str, Any] = field(default_factory=dict)
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise CardioInputError("TrainConfig", "give exactly one of max_steps and epochs")
        for name in ("batch_size", "max_steps", "epochs", "checkpoint_every", "val_every", "log_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise CardioInputError(f"TrainConfig.{name}", f"must be a positive integer, got {value!r}")
        if self.num_workers < 0:
            raise CardioInputError("TrainConfig.num_workers", f"must be >= 0, got {self.num_workers}")
        if str(self.amp).lower() not in AMP_MODES:
            raise CardioInputError("TrainConfig.amp", f"{self.amp!r} is not one of {', '.join(AMP_MODES)}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise CardioInputError("TrainConfig.grad_clip_norm", f"must be positive, got {self.grad_clip_norm}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise CardioInputError("TrainConfig.ema_decay", f"must lie strictly between 0 and 1, got {self.ema_decay}")
        try:
            json.dumps(self.run_config)
        except TypeError as error:
            raise CardioInputError("TrainConfig.run_config", f"is not JSON-compatible ({error})") from error

    def identity(self) -> dict[str, Any]:
        """The settings that determine the run's results (compared on resume), as plain values."""
        values = {
            item.name: getattr(self, item.name)
            for item in dataclasses.fields(self)
            if item.name not in RESUMABLE_FIELDS
        }
        values["run_config"] = json.loads(json.dumps(values["run_config"]))
        if values["ema_decay"] is None:  # absent, as in checkpoints written before the option existed
            del values["ema_decay"]
        return values


@dataclass
class TrainResult:
    """What ``Trainer.fit`` did: where it stopped, why, and the metrics it recorded."""

    step: int
    epoch: int
    stopped_early: bool
    history: list[Metrics]
    checkpoint: Path | None
    best_metric: float | None


@dataclass
class _Position:
    """Where the run is: optimizer steps done, current epoch, global batches done in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class StepContext:
    """The tools a ``step_fn`` uses so that AMP, clipping, DDP and schedulers stay uniform.

    ``model`` is the (DDP-wrapped when distributed) model to call; ``raw_model`` the bare module.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        amp: AmpPolicy,
        scaler: torch.amp.GradScaler,
        grad_clip_norm: float | None,
        device: torch.device,
    ) -> None:
        self.model = model
        self.raw_model = raw_model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.amp = amp
        self.scaler = scaler
        self.grad_clip_norm = grad_clip_norm
        self.device = device

    def autocast(self) -> torch.autocast:
        """Context for forward passes (mixed precision when the policy enables it)."""
        return self.amp.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled when a float16 grad scaler is in use)."""
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> float | None:
        """Unscale, clip (if configured), step the optimizer and scheduler, zero the gradients.

        Returns the gradient norm before clipping when clipping is on, else None.
        """
        grad_norm = None
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.grad_clip_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return grad_norm


def _as_float(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _split_loss_output(output: LossOutput) -> tuple[torch.Tensor, Mapping[str, Any]]:
    if isinstance(output, tuple):
        loss, metrics = output
        return loss, metrics
    return output, {}


def _warmed_up_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """``AveragedModel`` update: exponential moving average at min(decay, (1 + n) / (10 + n))."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for average, value in zip(averaged, current):
                if average.is_floating_point():
                    average.lerp_(value.to(average.dtype), weight)
                else:  # counters such as BatchNorm's num_batches_tracked follow the model
                    average.copy_(value)

    return update


def _stop_check(should_stop: Callable[[], bool] | threading.Event | None) -> Callable[[], bool]:
    if should_stop is None:
        return lambda: False
    if isinstance(should_stop, threading.Event):
        return should_stop.is_set
    if not callable(should_stop):
        raise CardioInputError("should_stop", "must be a callable returning bool or a threading.Event")
    return should_stop


@contextlib.contextmanager
def _stop_on_signals(event: threading.Event) -> Iterator[None]:
    """While active, SIGINT/SIGTERM set ``event`` (a second signal interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt(f"signal {signum} received twice")
        event.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains ``model`` on ``train_data`` with ``optimizer`` as ``config`` says; see the module doc.

    ``train_data``/``val_data``: map-style datasets; ``collate_fn`` builds a batch from a list
    of samples (e.g. torch_geometric's ``Collater`` for graphs). ``val_fn(model, batch)``
    returns what ``loss_fn`` returns (default: ``loss_fn``); validation reports the mean over
    batches, with keys prefixed "val/". ``scheduler`` steps once per optimizer step.
    ``progress_callback(step, total, metrics)`` is called on rank 0 after each step.
    Metric names must be the same on every rank and every step (they are averaged over ranks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.nn.Module, Any], LossOutput] | None,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        config: TrainConfig,
        step_fn: Callable[[StepContext, Any], Mapping[str, Any]] | None = None,
        val_fn: Callable[[torch.nn.Module, Any], LossOutput] | None = None,
        scheduler: Any = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        progress_callback: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | threading.Event | None = None,
    ) -> None:
        if (loss_fn is None) == (step_fn is None):
            raise CardioInputError("Trainer", "give exactly one of loss_fn and step_fn")
        if val_data is not None and val_fn is None and loss_fn is None:
            raise CardioInputError("val_fn", "is needed to validate when training with step_fn")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.step_fn = step_fn
        self.val_fn = val_fn or loss_fn
        self.train_data = train_data
        self.val_data = val_data
        self.config = config
        self.scheduler = scheduler
        self.collate_fn = collate_fn
        self.progress_callback = progress_callback
        self._user_stop = _stop_check(should_stop)
        self._signal_stop = threading.Event()

    # ------------------------------------------------------------------ public entry point
    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``max_steps``/``epochs`` or a stop request; with ``resume`` continue from
        ``checkpoint_dir/last.pt`` when it exists (else start afresh)."""
        if resume and self.config.checkpoint_dir is None:
            raise CardioInputError("resume", "needs TrainConfig.checkpoint_dir to find the checkpoint")
        context = init_distributed(self.config.device)
        try:
            with _stop_on_signals(self._signal_stop):
                result = self._fit(context, resume)
        except BaseException:
            teardown(context, wait=False)  # other ranks may be gone: do not wait for them
            raise
        teardown(context)
        return result

    # ------------------------------------------------------------------ set-up
    def _fit(self, context: DistributedContext, resume: bool) -> TrainResult:
        config = self.config
        self._context = context
        if config.batch_size % context.world_size:
            raise CardioInputError(
                "TrainConfig.batch_size",
                f"{config.batch_size} cannot be split evenly over {context.world_size} processes",
                "use a multiple of the number of processes",
            )
        per_rank_batch = config.batch_size // context.world_size
        seed_everything(config.seed + context.rank)
        self.model.to(context.device)
        self._ema = (
            None if config.ema_decay is None
            else AveragedModel(self.model, multi_avg_fn=_warmed_up_ema(config.ema_decay), use_buffers=True)
        )
        self._amp = amp_policy(config.amp, context.device)
        self._scaler = torch.amp.GradScaler(context.device.type, enabled=self._amp.use_grad_scaler)
        train = EpochBatches(
            self.train_data,
            per_rank_batch,
            context,
            shuffle=config.shuffle,
            seed=config.seed,
            drop_last=config.drop_last,
            num_workers=config.num_workers,
            collate_fn=self.collate_fn,
        )
        self._val_loader = self._make_val_loader(per_rank_batch, context)
        total = config.max_steps if config.max_steps is not None else config.epochs * train.batches_per_epoch
        self._folder = (
            CheckpointFolder(config.checkpoint_dir, config.identity(), overwrite=config.overwrite)
            if config.checkpoint_dir is not None
            else None
        )
        self._history: list[Metrics] = []
        self._best: float | None = None
        self._last_checkpoint: Path | None = None
        position = _Position()
        if resume:
            position = self._restore(context)
        elif self._folder is not None:
            self._folder.check_writable()  # on every rank, so all fail together
        barrier(context)

        self._train_model = wrap_model(self.model, context)
        self._step_context = StepContext(
            self._train_model,
            self.model,
            self.optimizer,
            self.scheduler,
            self._amp,
            self._scaler,
            config.grad_clip_norm,
            context.device,
        )
        progress = ProgressReporter(
            total,
            position.step,
            show_bar=config.show_progress and context.is_main,
            callback=self.progress_callback if context.is_main else None,
        )
        try:
            stopped = self._run(train, position, total, progress)
        finally:
            progress.close()
        barrier(context)
        return TrainResult(
            step=position.step,
            epoch=position.epoch,
            stopped_early=stopped,
            history=list(self._history),
            checkpoint=self._last_checkpoint,
            best_metric=self._best,
        )

    def _make_val_loader(self, per_rank_batch: int, context: DistributedContext) -> DataLoader | None:
        if self.val_data is None:
            return None
        return validation_loader(self.val_data, per_rank_batch, context, self.config.num_workers, self.collate_fn)

    # ------------------------------------------------------------------ the loop
    def _run(self, train: EpochBatches, position: _Position, total: int, progress: ProgressReporter) -> bool:
        """Train from ``position`` to ``total`` steps; True when stopped early."""
        config = self.config
        while position.step < total:
            for batch in train.batches(position.epoch, position.batch_in_epoch):
                metrics, stop = self._train_step(batch)
                position.step += 1
                position.batch_in_epoch += 1
                epoch_done = position.batch_in_epoch == train.batches_per_epoch
                if position.step % config.log_every == 0 or position.step == total:
                    self._history.append({"step": position.step, "epoch": position.epoch, **metrics})
                progress.update(position.step, metrics)
                is_best = False
                validate_now = (position.step % config.val_every == 0) if config.val_every else epoch_done
                if self._val_loader is not None and (validate_now or position.step == total):
                    is_best = self._validate(position, progress)
                if epoch_done:
                    position.epoch += 1
                    position.batch_in_epoch = 0
                finished = stop or position.step >= total
                periodic = config.checkpoint_every is not None and position.step % config.checkpoint_every == 0
                if finished or periodic or is_best:
                    self._save(position, is_best)
                if finished:
                    if stop:
                        progress.write(f"stopped at step {position.step}; resume with fit(resume=True)")
                    return stop
                if epoch_done:
                    break
        return False

    def _train_step(self, batch: Any) -> tuple[Metrics, bool]:
        """One optimizer step; returns its metrics averaged over ranks and whether any rank
        (or the user) asked to stop."""
        self.model.train()
        batch = move_to_device(batch, self._context.device)
        if self.step_fn is not None:
            raw_metrics = dict(self.step_fn(self._step_context, batch))
        else:
            with self._step_context.autocast():
                loss, extra = _split_loss_output(self.loss_fn(self._train_model, batch))
            self._step_context.backward(loss)
            grad_norm = self._step_context.optimizer_step()
            raw_metrics = {"loss": loss, **extra}
            if grad_norm is not None:
                raw_metrics["grad_norm"] = grad_norm
        if self._ema is not None:
            self._ema.update_parameters(self.model)
        stop_here = self._user_stop() or self._signal_stop.is_set()
        names = sorted(raw_metrics)
        values = [_as_float(raw_metrics[name]) for name in names] + [1.0 if stop_here else 0.0]
        summed = all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self._context.device), self._context)
        summed = summed.tolist()
        world = self._context.world_size
        return {name: summed[i] / world for i, name in enumerate(names)}, summed[-1] > 0

    def _validate(self, position: _Position, progress: ProgressReporter) -> bool:
        """Mean validation metrics (of the averaged weights when ``ema_decay`` is set) over all
        batches of all ranks; True if a new best."""
        evaluated = self.model if self._ema is None else self._ema.module
        evaluated.eval()
        sums: dict[str, float] = {}
        batches = 0
        with torch.no_grad(), self._amp.autocast():
            for batch in self._val_loader:
                loss, extra = _split_loss_output(self.val_fn(evaluated, move_to_device(batch, self._context.device)))
                for name, value in {"loss": loss, **extra}.items():
                    sums[name] = sums.get(name, 0.0) + _as_float(value)
                batches += 1
        names = sorted(sums)
        local = torch.tensor(
            [sums[name] for name in names] + [batches], dtype=torch.float64, device=self._context.device
        )
        totals = all_reduce_sum(local, self._context).tolist()
        metrics = {f"val/{name}": totals[i] / max(totals[-1], 1) for i, name in enumerate(names)}
        self._history.append({"step": position.step, "epoch": position.epoch, **metrics})
        progress.write(f"step {position.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        score = metrics.get(self.config.best_metric)
        if score is None or math.isnan(score) or (self._best is not None and score >= self._best):
            return False
        self._best = score
        return True

    # ------------------------------------------------------------------ checkpoints
    def _save(self, position: _Position, is_best: bool) -> None:
        """Checkpoint on rank 0 (every rank contributes its RNG state)."""
        if self._folder is None:
            return
        rng_states = gather_objects(capture_rng_state(), self._context)
        if self._context.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "cardiocore_version": cardiocore.__version__,
                "step": position.step,
                "epoch": position.epoch,
                "batch_in_epoch": position.batch_in_epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "grad_scaler": self._scaler.state_dict() if self._scaler.is_enabled() else None,
                "rng": rng_states,
                "world_size": self._context.world_size,
                "config": self.config.identity(),
                "history": self._history,
                "best_metric": self._best,
                "ema": None if self._ema is None else {
                    "model": self._ema.module.state_dict(), "n_averaged": int(self._ema.n_averaged),
                },
            }
            self._last_checkpoint = self._folder.save(state, is_best=is_best)

    def _restore(self, context: DistributedContext) -> _Position:
        """Load ``last.pt`` (if any) into the model, optimizer, scheduler, scaler and RNGs."""
        barrier(context)
        state = self._folder.load_latest(map_location=context.device)
        if state is None:
            return _Position()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self._scaler.is_enabled() and state.get("grad_scaler") is not None:
            self._scaler.load_state_dict(state["grad_scaler"])
        if self._ema is not None:
            self._restore_average(state)
        rng_states = state.get("rng") or []
        if len(rng_states) == context.world_size:
            restore_rng_state(rng_states[context.rank])
        else:  # a different number of processes: same data order, fresh (but seeded) random streams
            seed_everything((self.config.seed + context.rank + 7919 * state["step"]) % 2**32)
        self._history = list(state.get("history") or [])
        self._best = state.get("best_metric")
        self._last_checkpoint = self._folder.last_path
        return _Position(step=state["step"], epoch=state["epoch"], batch_in_epoch=state.get("batch_in_epoch", 0))

    def _restore_average(self, state: Mapping[str, Any]) -> None:
        """Load the checkpoint's moving average into ``self._ema``."""
        average = state.get("ema")
        if average is None:
            raise CardioInputError(
                str(self._folder.last_path), "holds no moving average of the weights, and this run keeps one",
                "resume with the ema_decay the run started with, or start afresh",
            )
        self._ema.module.load_state_dict(average["model"])
        self._ema.n_averaged.fill_(int(average["n_averaged"]))
