"""cardiocore.train: devices, AMP policy, atomic checkpoints, exact resume, real two-process DDP."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import json
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from train_helpers.tiny_run import build_trainer, make_dataset, make_model, mse_loss

from cardiocore.errors import CardioInputError, WeightsError
from cardiocore.train.checkpoint import (
    CheckpointFolder,
    capture_rng_state,
    export_model_weights,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    trained_weights,
)
from cardiocore.train.atomic import atomic_write, write_json
from cardiocore.train.device import amp_policy, seed_everything, select_device
from cardiocore.train.loop import StepContext, TrainConfig, Trainer

HELPER = Path(__file__).resolve().parent / "train_helpers" / "tiny_run.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 23  # 5 global batches of 8 per epoch over 40 samples: ends mid-epoch 4


def run_helper(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``tiny_run.py`` with a single-threaded torch, like the in-process reference runs."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, str(HELPER), *args],
        env=full_env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def single_thread_torch():
    """Same thread count as the helper subprocesses, so CPU reductions sum in the same order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference_params(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Uninterrupted single-process runs (with and without dropout) to compare others against."""
    params = {}
    for dropout in (0.0, 0.2):
        trainer = build_trainer(tmp_path_factory.mktemp(f"reference{dropout}"), TOTAL_STEPS, dropout)
        result = trainer.fit()
        assert result.step == TOTAL_STEPS and not result.stopped_early
        params[dropout] = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    return params


def assert_bitwise_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), (
            f"{name} differs by {(actual[name] - expected[name]).abs().max()}"
        )


# ------------------------------------------------------------------------------- devices


def test_select_device_cpu_auto_and_environment(monkeypatch):
    monkeypatch.delenv("CARDIO_DEVICE", raising=False)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device().type == expected_auto
    assert select_device("auto").type == expected_auto
    monkeypatch.setenv("CARDIO_DEVICE", "cpu")
    assert select_device("auto") == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")


def test_select_device_rejects_unknown_and_absent_devices(monkeypatch):
    monkeypatch.delenv("CARDIO_DEVICE", raising=False)
    with pytest.raises(CardioInputError, match="not a device name"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CardioInputError, match="no usable CUDA GPU"):
            select_device("cuda:1")
        monkeypatch.setenv("CARDIO_DEVICE", "cuda")
        with pytest.raises(CardioInputError, match="CARDIO_DEVICE"):
            select_device()


@pytest.mark.cuda
def test_select_device_cuda_index_out_of_range():
    with pytest.raises(CardioInputError, match="CUDA device"):
        select_device(f"cuda:{torch.cuda.device_count()}")
    assert select_device("cuda:0") == torch.device("cuda", 0)


def test_amp_policy_is_off_on_cpu_and_validated():
    cpu = torch.device("cpu")
    auto = amp_policy("auto", cpu)
    assert not auto.enabled and not auto.use_grad_scaler
    assert not amp_policy("off", cpu).enabled
    bf16 = amp_policy("bf16", cpu)
    assert bf16.enabled and bf16.dtype == torch.bfloat16 and not bf16.use_grad_scaler
    with pytest.raises(CardioInputError, match="needs a CUDA device"):
        amp_policy("fp16", cpu)
    with pytest.raises(CardioInputError, match="not a mixed-precision mode"):
        amp_policy("half", cpu)


@pytest.mark.cuda
def test_amp_policy_auto_on_cuda():
    policy = amp_policy("auto", torch.device("cuda"))
    assert policy.enabled
    assert policy.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert policy.use_grad_scaler == (policy.dtype == torch.float16)


def test_seed_everything_and_rng_round_trip():
    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(11)
    first = draws()
    seed_everything(11)
    assert draws() == first
    state = capture_rng_state()
    after_capture = draws()
    draws()
    restore_rng_state(state)
    assert draws() == after_capture


# ------------------------------------------------------------------------------- checkpoints


class FailingValue:
    """Raises while being written, like a full disk part-way through a save."""

    def __reduce_ex__(self, protocol):
        raise OSError("No space left on device (simulated)")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"weights": torch.arange(4.0)})
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"weights": torch.zeros(100_000), "failing": FailingValue()})
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(4.0))
    assert [entry.name for entry in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_load_checkpoint_reports_missing_corrupt_foreign_and_newer(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    trainer = build_trainer(tmp_path / "run", max_steps=2)
    trainer.fit()
    good = (tmp_path / "run" / "last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(WeightsError, match="not a CardioShape training checkpoint"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {**load_checkpoint(tmp_path / "run" / "last.pt"), "format": 99})
    with pytest.raises(WeightsError, match="upgrade cardiocore"):
        load_checkpoint(newer)


def test_checkpoint_folder_refuses_other_configuration(tmp_path):
    build_trainer(tmp_path, max_steps=2, dropout=0.0).fit()
    other = build_trainer(tmp_path, max_steps=2, dropout=0.5)
    with pytest.raises(CardioInputError, match="dropout"):
        other.fit()
    with pytest.raises(CardioInputError, match="different configuration"):
        build_trainer(tmp_path, max_steps=2, dropout=0.5).fit(resume=True)
    assert load_checkpoint(tmp_path / "last.pt")["config"]["run_config"]["dropout"] == 0.0
    allowed = build_trainer(tmp_path, max_steps=2, dropout=0.5)
    allowed.config.overwrite = True
    allowed.fit()
    assert load_checkpoint(tmp_path / "last.pt")["config"]["run_config"]["dropout"] == 0.5
    assert CheckpointFolder(tmp_path, allowed.config.identity()).latest() == tmp_path / "last.pt"


# ------------------------------------------------------------------------------- training


def test_fit_recovers_known_line_and_keeps_best_checkpoint(tmp_path):
    """y = 2 x - 1 is learnt exactly; best.pt holds the lowest validation loss."""
    x = torch.linspace(-2, 2, 64).unsqueeze(1)
    data = TensorDataset(x, 2 * x - 1)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    seen = []
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=0.1),
        lambda net, batch: torch.nn.functional.mse_loss(net(batch[0]), batch[1]),
        data,
        val_data=TensorDataset(x[::4], 2 * x[::4] - 1),
        config=TrainConfig(batch_size=16, epochs=40, checkpoint_dir=tmp_path, device="cpu", show_progress=False),
        progress_callback=lambda step, total, metrics: seen.append((step, total, metrics["loss"])),
    )
    result = trainer.fit()
    assert result.step == 160 and result.epoch == 40 and not result.stopped_early
    assert model.weight.item() == pytest.approx(2.0, abs=1e-3)
    assert model.bias.item() == pytest.approx(-1.0, abs=1e-3)
    assert [step for step, _, _ in seen] == list(range(1, 161)) and seen[0][1] == 160
    val_losses = [entry["val/loss"] for entry in result.history if "val/loss" in entry]
    assert len(val_losses) == 40 and result.best_metric == min(val_losses) < 1e-5
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best_metric"] == result.best_metric
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 160


def test_resume_after_should_stop_matches_uninterrupted_run(tmp_path, reference_params):
    """Stopped mid-epoch (step 12 = epoch 2, batch 2) with dropout, momentum and a scheduler."""
    stop = threading.Event()
    stopped = build_trainer(
        tmp_path,
        TOTAL_STEPS,
        dropout=0.2,
        checkpoint_every=None,
        should_stop=stop,
        progress_callback=lambda step, total, metrics: stop.set() if step == 11 else None,
    )
    result = stopped.fit()
    assert result.stopped_early and result.step == 12 and result.epoch == 2
    assert load_checkpoint(tmp_path / "last.pt")["batch_in_epoch"] == 2
    resumed = build_trainer(tmp_path, TOTAL_STEPS, dropout=0.2, checkpoint_every=None)
    final = resumed.fit(resume=True)
    assert final.step == TOTAL_STEPS and not final.stopped_early
    assert [entry["step"] for entry in final.history] == list(range(1, TOTAL_STEPS + 1))
    assert_bitwise_equal(resumed.model.state_dict(), reference_params[0.2])


def test_step_fn_with_step_context_equals_loss_fn(reference_params):
    """A hand-written step using StepContext reproduces the built-in loss_fn step bitwise."""

    def mse_step(context: StepContext, batch):
        with context.autocast():
            loss = mse_loss(context.model, batch)
        context.backward(loss)
        grad_norm = context.optimizer_step()
        return {"loss": loss, "grad_norm": grad_norm}

    trainer = build_trainer(None, TOTAL_STEPS, checkpoint_every=None, loss_fn=None, step_fn=mse_step)
    assert trainer.fit().history[-1]["grad_norm"] > 0
    assert_bitwise_equal(trainer.model.state_dict(), reference_params[0.0])


def test_moving_average_of_weights_is_validated_checkpointed_and_resumes_exactly(tmp_path):
    """ema_decay: the average follows min(decay, (1 + n) / (10 + n)) after n updates, validation
    scores it, trained_weights/export return it, and a stopped run resumes to the same average."""
    decay = 0.8
    snapshots = []
    trainer = build_trainer(
        tmp_path / "whole", TOTAL_STEPS, checkpoint_every=None, ema_decay=decay, val_data=make_dataset(8),
        progress_callback=lambda step, total, metrics: snapshots.append(
            {k: v.clone() for k, v in trainer.model.state_dict().items()}),
    )
    result = trainer.fit()
    expected = {k: v.clone() for k, v in snapshots[0].items()}
    for n, weights in enumerate(snapshots[1:], start=1):
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        expected = {k: expected[k] + weight * (weights[k] - expected[k]) for k in expected}
    last = load_checkpoint(tmp_path / "whole" / "last.pt")
    average = trained_weights(last)
    for name, value in expected.items():
        torch.testing.assert_close(average[name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(average["0.weight"], last["model"]["0.weight"])  # the average, not the last step

    averaged_model = make_model(0.0)
    averaged_model.load_state_dict(average)
    x, y = make_dataset(8).tensors  # one validation batch of 8
    val_loss = [entry["val/loss"] for entry in result.history if "val/loss" in entry][-1]
    assert val_loss == pytest.approx(torch.nn.functional.mse_loss(averaged_model(x), y).item(), rel=1e-5)
    exported = torch.load(export_model_weights(tmp_path / "whole" / "last.pt", tmp_path / "model.pt"), weights_only=True)
    assert_bitwise_equal(exported["model"], average)

    stop = threading.Event()
    build_trainer(
        tmp_path / "parts", TOTAL_STEPS, checkpoint_every=None, ema_decay=decay, should_stop=stop,
        progress_callback=lambda step, total, metrics: stop.set() if step == 11 else None,
    ).fit()
    build_trainer(tmp_path / "parts", TOTAL_STEPS, checkpoint_every=None, ema_decay=decay).fit(resume=True)
    assert_bitwise_equal(trained_weights(load_checkpoint(tmp_path / "parts" / "last.pt")), average)

    build_trainer(tmp_path / "plain", 4, checkpoint_every=None).fit()
    with pytest.raises(CardioInputError, match="no moving average"):
        build_trainer(tmp_path / "plain", 8, checkpoint_every=None, ema_decay=decay, overwrite=True).fit(resume=True)
    with pytest.raises(CardioInputError, match="strictly between 0 and 1"):
        TrainConfig(batch_size=4, max_steps=10, ema_decay=1.0)


def test_configuration_errors_are_explained():
    with pytest.raises(CardioInputError, match="exactly one of max_steps and epochs"):
        TrainConfig(batch_size=4, max_steps=10, epochs=2)
    with pytest.raises(CardioInputError, match="positive integer"):
        TrainConfig(batch_size=0, max_steps=10)
    with pytest.raises(CardioInputError, match="JSON-compatible"):
        TrainConfig(batch_size=4, max_steps=10, run_config={"layer": torch.nn.Linear(1, 1)})
    with pytest.raises(CardioInputError, match="exactly one of loss_fn and step_fn"):
        build_trainer(None, 5, step_fn=lambda context, batch: {})
    with pytest.raises(CardioInputError, match="checkpoint_dir"):
        build_trainer(None, 5).fit(resume=True)
    with pytest.raises(CardioInputError, match="fewer than one global batch"):
        build_trainer(None, 5, batch_size=64).fit()


@pytest.mark.parametrize(
    ("signal_name", "return_code", "checkpoint_step"),
    [
        ("KILL", -signal.SIGKILL, 10),  # killed after step 12: the step-10 checkpoint survives
        ("TERM", 0, 13),  # SIGTERM after step 12: the run checkpoints at step 13 and exits cleanly
        ("INT", 0, 13),  # Ctrl-C is handled the same way
    ],
)
def test_resume_after_killed_process_matches_uninterrupted_run(
    tmp_path, reference_params, signal_name, return_code, checkpoint_step
):
    out = tmp_path / "params.pt"
    process = run_helper(
        "--checkpoint-dir",
        str(tmp_path),
        "--max-steps",
        str(TOTAL_STEPS),
        "--dropout",
        "0.2",
        "--kill-at",
        "12",
        "--signal",
        signal_name,
        "--out",
        str(out),
    )
    code, output = finish(process)
    assert code == return_code, output
    assert load_checkpoint(tmp_path / "last.pt")["step"] == checkpoint_step
    assert out.exists() == (signal_name != "KILL")
    resumed = build_trainer(tmp_path, TOTAL_STEPS, dropout=0.2)
    assert resumed.fit(resume=True).step == TOTAL_STEPS
    assert_bitwise_equal(resumed.model.state_dict(), reference_params[0.2])


def run_two_ranks(checkpoint_dir: Path, out: Path, *extra: str) -> None:
    """``tiny_run.py`` as ranks 0 and 1 of a Gloo group on a free local port; both must exit 0."""
    port = str(free_port())
    processes = [
        run_helper(
            "--checkpoint-dir",
            str(checkpoint_dir),
            "--max-steps",
            str(TOTAL_STEPS),
            "--out",
            str(out),
            *extra,
            env={
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for rank in (0, 1)
    ]
    for process in processes:
        code, output = finish(process)
        assert code == 0, output


def test_two_process_gloo_run_matches_one_process_run_and_resumes(tmp_path, reference_params):
    """Two Gloo ranks, global batch 8 = 2 x 4, SIGTERM to rank 0 after step 12.

    Both ranks agree to stop at step 13 and rank 0 alone checkpoints; DDP's averaged gradients
    equal a single process's, so the parameters match a 13-step one-process run; one process
    then finishes the run on the same data order and matches the uninterrupted reference.
    """
    out = tmp_path / "params.pt"
    run_two_ranks(tmp_path / "ddp", out, "--kill-at", "12", "--signal", "TERM")
    stopped = torch.load(out, weights_only=True)
    assert stopped["stopped"] and stopped["step"] == 13
    single = build_trainer(tmp_path / "single", max_steps=13)
    single.fit()
    for name, expected in single.model.state_dict().items():
        torch.testing.assert_close(stopped["params"][name], expected, rtol=0, atol=1e-6)
    checkpoint = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2 and checkpoint["step"] == 13
    assert sorted(entry.name for entry in (tmp_path / "ddp").iterdir()) == ["last.pt"]

    resumed = build_trainer(tmp_path / "ddp", TOTAL_STEPS)
    assert resumed.fit(resume=True).step == TOTAL_STEPS
    for name, expected in reference_params[0.0].items():
        torch.testing.assert_close(resumed.model.state_dict()[name], expected, rtol=0, atol=1e-6)


@pytest.mark.cuda
def test_cuda_mixed_precision_run_resumes_exactly(tmp_path):
    """On a GPU with amp="auto" (bfloat16 or float16 + grad scaler), CUDA RNG (dropout) included."""

    def cuda_trainer(folder: Path, **options) -> Trainer:
        trainer = build_trainer(folder, TOTAL_STEPS, dropout=0.2, checkpoint_every=None, **options)
        trainer.config.device = "cuda"
        return trainer

    reference = cuda_trainer(tmp_path / "reference")
    history = reference.fit().history
    assert history[-1]["loss"] < history[0]["loss"]
    assert next(reference.model.parameters()).is_cuda
    stop = threading.Event()
    first = cuda_trainer(
        tmp_path / "run",
        should_stop=stop,
        progress_callback=lambda step, total, metrics: stop.set() if step == 11 else None,
    )
    assert first.fit().step == 12
    resumed = cuda_trainer(tmp_path / "run")
    assert resumed.fit(resume=True).step == TOTAL_STEPS
    assert_bitwise_equal(resumed.model.state_dict(), reference.model.state_dict())


def test_write_json_turns_non_finite_floats_into_null_and_files_are_readable(tmp_path) -> None:
    target = tmp_path / "figures.json"
    write_json(target, {"dice": float("nan"), "hd95": [1.5, float("inf")], "n": np.int64(3), "t": torch.tensor(2.0)})
    assert json.loads(target.read_text()) == {"dice": None, "hd95": [1.5, None], "n": 3.0, "t": 2.0}
    assert target.stat().st_mode & 0o777 == 0o644  # not the 0600 of the temporary file
    target.chmod(0o600)
    with atomic_write(target) as stream:
        stream.write(b"{}")
    assert target.stat().st_mode & 0o777 == 0o600  # a replaced file keeps its permissions
