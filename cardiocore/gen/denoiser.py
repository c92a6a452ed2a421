"""The latent denoiser: a fully connected epsilon-predictor over VAE latents (MeshLDM), made
conditional on the cardiac phase and on continuous clinical targets for classifier-free guidance.

Conditions enter as one embedding added to the time embedding and fed to every block through
a FiLM scale and shift. Each condition has a learned "null" embedding that stands for "not
given": a phase index equal to ``n_classes`` and a NaN condition value select it. Training
drops conditions to their null (``LatentDiffusion.training_loss``), so the same network
predicts both the conditional and the unconditional noise that guidance combines.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from cardiocore.errors import CardioInputError

TIME_EMBEDDINGS = ("fourier", "sinusoidal")


class FourierTimeEmbedding(nn.Module):
    """Gaussian random Fourier features of the diffusion time (Tancik et al. 2020).

    ``timesteps`` (B,) integers in [0, num_train_timesteps) are scaled to [0, 1) and mapped to
    ``[sin(2 pi f t), cos(2 pi f t)]`` (B, dim) with fixed frequencies ``f ~ N(0, scale^2)``.
    """

    def __init__(self, dim: int, num_train_timesteps: int, scale: float = 16.0) -> None:
        super().__init__()
        if dim % 2:
            raise CardioInputError("FourierTimeEmbedding.dim", f"must be even, got {dim}")
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer("frequencies", torch.randn(dim // 2) * scale)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * (timesteps.float() / self.num_train_timesteps)[:, None] * self.frequencies[None, :]
        return torch.cat([phase.sin(), phase.cos()], dim=-1)


class SinusoidalTimeEmbedding(nn.Module):
    """The transformer/DDPM sinusoidal embedding of integer timesteps (MONAI's), (B,) -> (B, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(timesteps, self.dim)


class ConditionEmbedding(nn.Module):
    """Sum of the embeddings of the given conditions; absent ones use their learned null token.

    phase: (B,) long in [0, n_classes], ``n_classes`` meaning "no phase given".
    conditions: (B, n_conditions) standardised values, NaN meaning "not given".
    Returns (B, dim); zeros when the model has no conditions at all.
    """

    def __init__(self, dim: int, n_classes: int, n_conditions: int) -> None:
        super().__init__()
        self.n_conditions = n_conditions
        self.phase = nn.Embedding(n_classes + 1, dim) if n_classes else None
        if n_conditions:
            self.value_weight = nn.Parameter(torch.randn(n_conditions, dim))
            self.value_bias = nn.Parameter(torch.zeros(n_conditions, dim))
            self.null = nn.Parameter(torch.randn(n_conditions, dim) * 0.02)

    def forward(
        self, phase: torch.Tensor | None, conditions: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        """``like`` (B, dim) gives the batch size, dtype and device of the result."""
        embedding = torch.zeros_like(like)
        if self.phase is not None:
            embedding = embedding + self.phase(phase)
        if self.n_conditions:
            given = ~torch.isnan(conditions)
            values = torch.where(given, conditions, torch.zeros_like(conditions))[..., None]
            per_condition = torch.where(
                given[..., None], values * self.value_weight + self.value_bias, self.null.expand_as(self.value_weight)
            )
            embedding = embedding + per_condition.sum(dim=1)
        return embedding


class _FiLMBlock(nn.Module):
    """h + Linear(SiLU(h * (1 + scale) + shift)), (scale, shift) from the embedding.

    No normalisation layer: a LayerNorm would make the block's response to the latent scale-free,
    so the predicted noise could not follow the input far in the tails (at high noise the right
    answer is close to the input itself) and deterministic samplers would drift there.
    """

    def __init__(self, hidden: int, embedding_dim: int) -> None:
        super().__init__()
        self.film = nn.Linear(embedding_dim, 2 * hidden)
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(embedding).chunk(2, dim=-1)
        return h + self.linear(nn.functional.silu(h * (1 + scale) + shift))


class LatentDenoiser(nn.Module):
    """Predicts the noise ``epsilon`` added to a (standardised) latent at diffusion step ``t``.

    latent_dim: size of the VAE latent (16 in MeshLDM).
    hidden: width of the fully connected layers and of the time/condition embedding.
    n_layers: number of hidden fully connected (residual, FiLM-conditioned) layers.
    time_embedding: "fourier" (Gaussian random features) or "sinusoidal" (DDPM's).
    n_classes: number of phase labels (2: ED = 0, ES = 1); 0 for a phase-agnostic model.
    n_conditions: number of continuous conditions (standardised clinical targets, e.g. EDV, EF).
    num_train_timesteps: length of the diffusion chain the model is trained on.

    The output is a linear read-out of the residual stream, zero-initialised (an untrained
    model predicts no noise), with no final normalisation, for the reason given in _FiLMBlock.
    """

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: int = 256,
        n_layers: int = 6,
        time_embedding: str = "fourier",
        n_classes: int = 2,
        n_conditions: int = 0,
        num_train_timesteps: int = 1000,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("latent_dim", latent_dim, 1),
            ("hidden", hidden, 2),
            ("n_layers", n_layers, 1),
            ("n_classes", n_classes, 0),
            ("n_conditions", n_conditions, 0),
            ("num_train_timesteps", num_train_timesteps, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise CardioInputError(f"LatentDenoiser.{name}", f"must be an integer >= {low}, got {value!r}")
        if time_embedding not in TIME_EMBEDDINGS:
            raise CardioInputError(
                "LatentDenoiser.time_embedding", f"{time_embedding!r} is not one of {', '.join(TIME_EMBEDDINGS)}"
            )
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        self.n_conditions = n_conditions
        self.num_train_timesteps = num_train_timesteps
        self.config = {
            "latent_dim": latent_dim,
            "hidden": hidden,
            "n_layers": n_layers,
            "time_embedding": time_embedding,
            "n_classes": n_classes,
            "n_conditions": n_conditions,
            "num_train_timesteps": num_train_timesteps,
        }
        self.time_embedding = (
            FourierTimeEmbedding(hidden, num_train_timesteps)
            if time_embedding == "fourier"
            else SinusoidalTimeEmbedding(hidden)
        )
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.condition_embedding = ConditionEmbedding(hidden, n_classes, n_conditions)
        self.input = nn.Linear(latent_dim, hidden)
        self.blocks = nn.ModuleList(_FiLMBlock(hidden, hidden) for _ in range(n_layers))
        self.output = nn.Linear(hidden, latent_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def null_phase(self) -> int:
        """The phase index meaning "no phase given" (the classifier-free guidance null token)."""
        return self.n_classes

    def forward(
        self,
        noisy_latent: torch.Tensor,
        timesteps: torch.Tensor,
        phase: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """noisy_latent (B, latent_dim), timesteps (B,) long, phase (B,) long in [0, n_classes]
        or None (= null), conditions (B, n_conditions) standardised with NaN = not given, or None.
        Returns the predicted noise (B, latent_dim)."""
        batch = noisy_latent.shape[0]
        if phase is None and self.n_classes:
            phase = torch.full((batch,), self.null_phase, dtype=torch.long, device=noisy_latent.device)
        if conditions is None and self.n_conditions:
            conditions = noisy_latent.new_full((batch, self.n_conditions), float("nan"))
        time = self.time_mlp(self.time_embedding(timesteps))
        embedding = nn.functional.silu(time + self.condition_embedding(phase, conditions, like=time))
        h = self.input(noisy_latent)
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)
