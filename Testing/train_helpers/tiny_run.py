"""A tiny deterministic training run for Testing/test_train.py, in-process or as a subprocess.

As a script it trains once and saves the final parameters (rank 0), so a test can launch it
under torchrun-style environment variables (RANK, WORLD_SIZE, ...) or kill it part-way::

    python tiny_run.py --checkpoint-dir DIR --max-steps 20 --out params.pt [--kill-at 12 --signal KILL]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cardiocore.train.loop import TrainConfig, Trainer  # noqa: E402

N_SAMPLES = 40
IN_FEATURES = 4


def make_dataset(n_samples: int = N_SAMPLES) -> TensorDataset:
    """Inputs on a fixed grid and targets y = x . (1, -2, 0.5, 3) + 0.7 + 0.1 sin(3 x0)."""
    x = torch.linspace(-1.0, 1.0, n_samples * IN_FEATURES).reshape(n_samples, IN_FEATURES)
    x = x[torch.arange(n_samples).flip(0)] * torch.tensor([1.0, -0.5, 0.8, 0.3])
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.7 + 0.1 * torch.sin(3 * x[:, 0])
    return TensorDataset(x, y.unsqueeze(1))


def make_model(dropout: float) -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(IN_FEATURES, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def build_trainer(
    checkpoint_dir: str | Path | None,
    max_steps: int,
    dropout: float = 0.0,
    batch_size: int = 8,
    checkpoint_every: int | None = 5,
    with_scheduler: bool = True,
    loss_fn=mse_loss,
    ema_decay: float | None = None,
    overwrite: bool = False,
    **trainer_options,
) -> Trainer:
    """A trainer over ``make_dataset()`` with SGD + momentum and (optionally) a step scheduler."""
    model = make_model(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5) if with_scheduler else None
    config = TrainConfig(
        batch_size=batch_size,
        max_steps=max_steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        seed=3,
        device="cpu",
        show_progress=False,
        log_every=1,
        grad_clip_norm=5.0,
        run_config={"dropout": dropout, "hidden": 16},
        ema_decay=ema_decay,
        overwrite=overwrite,
    )
    return Trainer(model, optimizer, loss_fn, make_dataset(), config=config, scheduler=scheduler, **trainer_options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, help="send --signal to this process after this step")
    parser.add_argument("--signal", default="KILL", choices=("KILL", "TERM", "INT"))
    parser.add_argument("--out", help="where rank 0 saves the final parameters")
    args = parser.parse_args()

    def kill_at_step(step: int, total: int, metrics: dict) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), getattr(signal, f"SIG{args.signal}"))

    trainer = build_trainer(args.checkpoint_dir, args.max_steps, args.dropout, progress_callback=kill_at_step)
    result = trainer.fit(resume=args.resume)
    if args.out and int(os.environ.get("RANK", "0")) == 0:
        torch.save(
            {"params": trainer.model.state_dict(), "step": result.step, "stopped": result.stopped_early}, args.out
        )


if __name__ == "__main__":
    main()
