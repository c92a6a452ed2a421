"""Latent diffusion (cardiocore.gen.denoiser, cardiocore.gen.diffusion) on known 16-d distributions.

Two kinds of known answer:
- the exact noise predictor of a diagonal Gaussian mixture (closed form), which checks the
  samplers' plumbing (MONAI schedulers, time grids, guidance) with no training error;
- a small model trained on CPU with the project's Trainer on ED/ES as two Gaussians and a
  clinical target that sets one latent coordinate.
Tolerances are in units of the data's standard deviation and stated at each assertion.
"""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from cardiocore.errors import CardioInputError
from cardiocore.gen.denoiser import LatentDenoiser
from cardiocore.gen.diffusion import LatentDataset, LatentDiffusion, latent_diffusion_loss
from cardiocore.train.loop import Trainer, TrainConfig

DIM = 16
TARGET_SLOPE = 1.5  # latent coordinate 1 moves 1.5 units per SD (15 ml) of the target


def _seeded(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _mixture(n_per_class: int = 2048) -> dict[str, torch.Tensor]:
    """ED (label 0) and ES (label 1) as two diagonal Gaussians in an offset, scaled frame, plus
    an "EDV" target (ml) that sets latent coordinate 1 (slope 1.5 per 15 ml, noise SD 0.2)."""
    g = _seeded(0)
    means = torch.zeros(2, DIM)
    means[:, 0] = torch.tensor([3.0, -3.0])
    means[:, 2] = torch.tensor([1.0, -0.5])
    means += torch.linspace(-20.0, 20.0, DIM)  # a frame far from the origin: checks the normaliser
    stds = torch.full((2, DIM), 0.8)
    stds[1] *= 0.5
    phase = torch.arange(2).repeat_interleave(n_per_class)
    latents = means[phase] + stds[phase] * torch.randn(2 * n_per_class, DIM, generator=g)
    edv = 100.0 + 15.0 * torch.randn(2 * n_per_class, generator=g)
    latents[:, 1] = means[0, 1] + TARGET_SLOPE * (edv - 100.0) / 15.0 + 0.2 * torch.randn(edv.shape, generator=g)
    return {"latents": latents, "phase": phase, "edv": edv, "means": means, "stds": stds}


class MixtureNoisePredictor(nn.Module):
    """The exact epsilon (posterior mean of the noise) for a diagonal Gaussian mixture with one
    component per phase, in the interface of ``LatentDenoiser`` (no continuous conditions)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, num_train_timesteps: int = 1000) -> None:
        super().__init__()
        self.means, self.stds = means, stds
        self.latent_dim = means.shape[1]
        self.n_classes = means.shape[0]
        self.n_conditions = 0
        self.null_phase = self.n_classes
        self.num_train_timesteps = num_train_timesteps
        self.config: dict = {}
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps).alphas_cumprod

    def forward(self, x, timesteps, phase=None, conditions=None):
        a = self.alphas_cumprod.to(x.device)[timesteps][:, None, None]  # (B, 1, 1)
        variance = a * self.stds[None] ** 2 + 1 - a  # (B, K, D): x_t given the component
        offset = x[:, None, :] - a.sqrt() * self.means[None]
        log_weight = -0.5 * (offset**2 / variance + variance.log()).sum(-1)  # (B, K)
        if phase is not None:
            other = nn.functional.one_hot(phase, self.n_classes + 1)[:, : self.n_classes] == 0
            log_weight = log_weight.masked_fill(other & (phase != self.null_phase)[:, None], -math.inf)
        score = -(log_weight.softmax(-1)[..., None] * offset / variance).sum(1)
        return -(1 - a[:, 0]).sqrt() * score


def _assert_matches(samples: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mean_tol: float, std_tol: float):
    """Every coordinate's mean within ``mean_tol`` SDs and SD ratio within 1 +- ``std_tol``."""
    mean_error = ((samples.mean(0) - mean) / std).abs().max().item()
    ratio = samples.std(0) / std
    assert mean_error < mean_tol, f"mean off by {mean_error:.3f} SD"
    assert (ratio - 1).abs().max().item() < std_tol, f"SD ratios {ratio.min().item():.3f}..{ratio.max().item():.3f}"


# ---------------------------------------------------------------------------------- model parts
@pytest.mark.parametrize("time_embedding", ["fourier", "sinusoidal"])
def test_denoiser_shapes_and_null_tokens(time_embedding: str) -> None:
    torch.manual_seed(0)
    model = LatentDenoiser(DIM, hidden=32, n_layers=2, time_embedding=time_embedding, n_conditions=2)
    nn.init.normal_(model.output.weight)  # the zero-initialised read-out would hide everything
    x, t = torch.randn(5, DIM), torch.randint(0, 1000, (5,))
    out = model(x, t)
    assert out.shape == (5, DIM) and torch.isfinite(out).all()
    # None means "not given": the same as the explicit null phase and NaN conditions
    nulls = model(x, t, torch.full((5,), model.null_phase), torch.full((5, 2), float("nan")))
    torch.testing.assert_close(out, nulls)
    assert not torch.allclose(out, model(x, t, torch.zeros(5, dtype=torch.long), torch.zeros(5, 2)))
    # a NaN in one condition affects only that condition's embedding
    partly = model(x, t, None, torch.tensor([[0.5, float("nan")]]).expand(5, 2))
    assert torch.isfinite(partly).all() and not torch.allclose(partly, out)


def test_untrained_model_output_is_zero_and_sampling_shapes() -> None:
    diffusion = LatentDiffusion(LatentDenoiser(DIM, hidden=32, n_layers=2, n_conditions=1))
    x = torch.randn(4, DIM)
    assert torch.equal(diffusion.denoiser(x, torch.zeros(4, dtype=torch.long)), torch.zeros(4, DIM))
    loss = diffusion.training_loss(torch.randn(8, DIM), torch.tensor([0, 1] * 4), torch.randn(8, 1))
    assert loss.ndim == 0 and loss.item() == pytest.approx(1.0, abs=0.6)  # zero prediction: E[eps^2] = 1
    for sampler, steps in (("ddim", 5), ("plms", 5), ("ddpm", None)):
        out = diffusion.sample(3, steps, sampler, phase="ES", conditions=[120.0], guidance_scale=2.0)
        assert out.shape == (3, DIM) and torch.isfinite(out).all()


def test_bad_input_is_named() -> None:
    diffusion = LatentDiffusion(LatentDenoiser(DIM, hidden=32, n_layers=2, n_conditions=1))
    cases = [
        (lambda: diffusion.training_loss(torch.randn(4, DIM + 1)), "z0"),
        (lambda: diffusion.training_loss(torch.full((4, DIM), float("nan"))), "z0"),
        (lambda: diffusion.training_loss(torch.randn(4, DIM), phase=torch.tensor([0, 1, 2, 0])), "phase"),
        (lambda: diffusion.training_loss(torch.randn(4, DIM), conditions=torch.randn(4, 2)), "conditions"),
        (lambda: diffusion.sample(2, phase="diastole"), "phase"),
        (lambda: diffusion.sample(2, phase=0.5), "phase"),
        (lambda: diffusion.sample(2, sampler="euler"), "sampler"),
        (lambda: diffusion.sample(2, steps=50, sampler="ddpm"), "steps"),
        (lambda: diffusion.sample(2, steps=5000), "steps"),
        (lambda: diffusion.sample(2, sampler="plms", eta=0.5), "eta"),
        (lambda: diffusion.sample(0), "n"),
        (lambda: diffusion.sample(2, guidance_scale=-1.0), "guidance_scale"),
        (lambda: diffusion.fit_normalisation(torch.randn(8, DIM)), "conditions"),
        (lambda: LatentDiffusion(LatentDenoiser(DIM, hidden=32, n_layers=2), schedule="quadratic"), "schedule"),
        (lambda: LatentDenoiser(DIM, time_embedding="learned"), "LatentDenoiser.time_embedding"),
        (lambda: LatentDataset(torch.randn(4, DIM), phase=torch.zeros(3)), "phase"),
    ]
    for call, name in cases:
        with pytest.raises(CardioInputError) as error:
            call()
        assert error.value.what == name


def test_normaliser_is_stored_and_inverted() -> None:
    diffusion = LatentDiffusion(LatentDenoiser(DIM, hidden=32, n_layers=2, n_classes=0, n_conditions=1))
    latents = 5.0 + 3.0 * torch.randn(256, DIM, generator=_seeded(1))
    edv = torch.cat([torch.tensor([float("nan")]), 100 + 10 * torch.randn(255, generator=_seeded(2))])[:, None]
    diffusion.fit_normalisation(latents, edv)
    torch.testing.assert_close(diffusion.latent_mean, latents.mean(0))
    torch.testing.assert_close(diffusion.condition_mean, edv[1:].mean(0))  # the unknown value is left out
    torch.testing.assert_close(diffusion.denormalise_latent(diffusion.normalise_latent(latents)), latents)
    rebuilt = LatentDiffusion.from_config(diffusion.config)
    rebuilt.load_state_dict(diffusion.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(rebuilt.latent_std, diffusion.latent_std)
    torch.testing.assert_close(rebuilt.condition_std, diffusion.condition_std)


# ------------------------------------------------------------ samplers against the exact predictor
@pytest.fixture(scope="module")
def exact() -> LatentDiffusion:
    means = torch.zeros(2, DIM)
    means[:, 0] = torch.tensor([2.0, -2.0])
    stds = torch.full((2, DIM), 0.6)
    stds[1] *= 0.5
    return LatentDiffusion(MixtureNoisePredictor(means, stds))


def test_samplers_reproduce_a_known_mixture_with_the_exact_predictor(exact: LatentDiffusion) -> None:
    means, stds = exact.denoiser.means, exact.denoiser.stds
    mixture_mean = means.mean(0)
    mixture_std = ((stds**2 + means**2).mean(0) - mixture_mean**2).sqrt()
    # 2,000 samples: the sampling error of a mean is 0.02 SD and of an SD ratio 0.016 (1 sigma)
    # per coordinate; DDIM's discretisation shrinks narrow components by a few percent at 50 steps.
    for sampler, steps, std_tol in (("ddim", 50, 0.1), ("plms", 25, 0.07), ("ddpm", None, 0.07)):
        samples = exact.sample(2000, steps, sampler, generator=_seeded(3))
        _assert_matches(samples, mixture_mean, mixture_std, mean_tol=0.08, std_tol=std_tol)
        for label in (0, 1):
            within = exact.sample(1000, steps, sampler, phase=label, generator=_seeded(4))
            _assert_matches(within, means[label], stds[label], mean_tol=0.12, std_tol=std_tol + 0.03)


def test_guidance_scale_zero_is_unconditional_and_one_is_conditional(exact: LatentDiffusion) -> None:
    unconditional = exact.sample(64, 10, phase="ED", guidance_scale=0.0, generator=_seeded(5))
    torch.testing.assert_close(unconditional, exact.sample(64, 10, generator=_seeded(5)))
    conditional = exact.sample(64, 10, phase="ED", guidance_scale=1.0, generator=_seeded(5))
    assert (conditional[:, 0] > 0).all()  # every ED sample in the ED component (mean +2, SD 0.6)


# ------------------------------------------------------------------------- a trained small model
@pytest.fixture(scope="module")
def trained() -> tuple[LatentDiffusion, dict[str, torch.Tensor], list[dict]]:
    torch.set_num_threads(2)
    data = _mixture()
    torch.manual_seed(0)
    diffusion = LatentDiffusion(LatentDenoiser(DIM, hidden=128, n_layers=6, n_classes=2, n_conditions=1))
    diffusion.fit_normalisation(data["latents"], data["edv"][:, None])
    steps = 1200
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    config = TrainConfig(batch_size=256, max_steps=steps, device="cpu", show_progress=False, log_every=100)
    dataset = LatentDataset(data["latents"], data["phase"], data["edv"][:, None])
    result = Trainer(diffusion, optimizer, latent_diffusion_loss, dataset, scheduler=schedule, config=config).fit()
    diffusion.eval()
    return diffusion, data, result.history


def test_training_with_the_trainer_lowers_the_loss(trained) -> None:
    _, _, history = trained
    losses = [entry["loss"] for entry in history]
    # the zero-initialised read-out predicts no noise at first: loss E[eps^2] = 1
    assert losses[-1] < 0.35 and losses[-1] < losses[0]


def test_evaluation_loss_uses_the_same_draws_and_training_loss_fresh_ones(trained) -> None:
    """Validation compares checkpoints on one fixed draw of noise and steps; training keeps drawing."""
    diffusion, data, _ = trained
    latents, phase, edv = data["latents"][:300], data["phase"][:300], data["edv"][:300, None]
    with torch.no_grad():
        first = diffusion.training_loss(latents, phase, edv)
        torch.randn(5)  # the global random stream moves on; the evaluation draw must not
        assert diffusion.training_loss(latents, phase, edv) == first
        diffusion.train()
        try:
            assert diffusion.training_loss(latents, phase, edv) != diffusion.training_loss(latents, phase, edv)
        finally:
            diffusion.eval()


def test_trained_samples_match_the_data(trained) -> None:
    diffusion, data, _ = trained
    latents = data["latents"]
    for sampler in ("ddim", "plms"):
        samples = diffusion.sample(2000, 50, sampler, generator=_seeded(6))
        # a model trained for ten seconds: means within 0.15 SD, SDs within 20 % (measured:
        # 0.05 SD and 0.88..1.08 with DDIM-50)
        _assert_matches(samples, latents.mean(0), latents.std(0), mean_tol=0.15, std_tol=0.2)


def test_fast_samplers_agree_with_1000_step_ddpm(trained) -> None:
    diffusion, _, _ = trained
    ancestral = diffusion.sample(1000, sampler="ddpm", generator=_seeded(7))
    for sampler in ("ddim", "plms"):
        fast = diffusion.sample(1000, 50, sampler, generator=_seeded(8))
        # two sets of 1,000: SD ratios differ by ~3 % (1 sigma) per coordinate from sampling alone
        _assert_matches(fast, ancestral.mean(0), ancestral.std(0), mean_tol=0.15, std_tol=0.2)


def test_phase_conditioning_moves_samples_to_the_class(trained) -> None:
    diffusion, data, _ = trained
    boundary = data["means"][:, 0].mean()  # class means 6 ED-SDs apart along coordinate 0
    for label, name in enumerate(("ED", "ES")):
        conditional = diffusion.sample(1000, 50, phase=name, generator=_seeded(9))
        assert ((conditional[:, 0] > boundary) == (label == 0)).float().mean().item() > 0.97
        mean_error = ((conditional.mean(0) - data["means"][label]) / data["stds"][label]).abs()
        # the coordinates where ED and ES differ: within half a class SD (measured up to 0.29)
        assert mean_error[[0, 2]].max() < 0.5
        guided = diffusion.sample(1000, 50, phase=name, guidance_scale=3.0, generator=_seeded(9))
        assert ((guided[:, 0] > boundary) == (label == 0)).float().mean().item() > 0.99


def test_continuous_target_is_followed_more_strongly_with_guidance(trained) -> None:
    """A target two SDs above the cohort mean: w = 1 puts coordinate 1 where it belongs; w > 1
    pushes further in the target's direction (classifier-free guidance sharpens p(target | z);
    with this linear-Gaussian link it overshoots the conditional mean)."""
    diffusion, data, _ = trained
    edv = 130.0
    unconditional_mean = data["latents"][:, 1].mean()
    wanted = data["means"][0, 1] + TARGET_SLOPE * (edv - 100.0) / 15.0  # 3 units above the mean
    coordinate = {
        scale: diffusion.sample(1000, 50, conditions=[edv], guidance_scale=scale, generator=_seeded(10))[:, 1]
        for scale in (0.0, 1.0, 3.0)
    }
    assert (coordinate[0.0].mean() - unconditional_mean).abs() < 0.3
    assert (coordinate[1.0] - wanted).abs().mean() < 0.5  # data: SD 0.2 around the target's value
    shift = {scale: (values.mean() - unconditional_mean).item() for scale, values in coordinate.items()}
    assert shift[3.0] > shift[1.0] > 0.8 * (wanted - unconditional_mean).item()


def test_same_seed_same_samples(trained) -> None:
    diffusion, _, _ = trained
    for sampler, eta in (("ddim", 0.0), ("ddim", 1.0), ("plms", 0.0)):
        first = diffusion.sample(50, 20, sampler, phase="ES", generator=_seeded(11), eta=eta)
        again = diffusion.sample(50, 20, sampler, phase="ES", generator=_seeded(11), eta=eta)
        other = diffusion.sample(50, 20, sampler, phase="ES", generator=_seeded(12), eta=eta)
        assert torch.equal(first, again) and not torch.allclose(first, other)


@pytest.mark.cuda
def test_cuda_sampling_and_training_step(trained) -> None:
    diffusion, data, _ = trained
    on_gpu = LatentDiffusion.from_config(diffusion.config)
    on_gpu.load_state_dict(diffusion.state_dict())
    on_gpu.to("cuda")
    with pytest.raises(CardioInputError):
        on_gpu.sample(4, generator=_seeded(0, "cpu"))
    for sampler, steps in (("ddim", 50), ("plms", 50), ("ddpm", None)):
        samples = on_gpu.sample(1000, steps, sampler, phase="ED", generator=_seeded(13, "cuda"))
        assert samples.device.type == "cuda"
        assert torch.equal(samples, on_gpu.sample(1000, steps, sampler, phase="ED", generator=_seeded(13, "cuda")))
    cpu_samples = diffusion.sample(2000, 50, phase="ED", generator=_seeded(14)).cuda()
    gpu_samples = on_gpu.sample(2000, 50, phase="ED", generator=_seeded(14, "cuda"))
    _assert_matches(gpu_samples, cpu_samples.mean(0), cpu_samples.std(0), mean_tol=0.15, std_tol=0.1)
    loss = on_gpu.train()(data["latents"][:64].cuda(), data["phase"][:64].cuda(), data["edv"][:64, None].cuda())
    loss.backward()
    assert torch.isfinite(loss)
