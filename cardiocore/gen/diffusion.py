"""Latent diffusion over VAE latents (MeshLDM): DDPM training, fast DDIM/PLMS and 1000-step
DDPM sampling, phase and clinical-target conditioning with classifier-free guidance.

The noise schedule, ``add_noise`` and the reverse steps are MONAI's: ``DDPMScheduler`` for
training and for the paper's ancestral sampler, ``DDIMScheduler`` and ``PNDMScheduler`` (PLMS)
for the fast ones, all built from the same schedule, with sample clipping off (latents are
standardised, not in [-1, 1]). Two of MONAI's timestep lists do not match its own step rules
and are replaced (see ``_prepared_scheduler``): DDIM steps from t to t - T // steps, so its
timesteps are put on that grid; PLMS needs its second timestep twice (diffusers' list).

Latents are standardised per dimension with the training set's mean and standard deviation
(``fit_normalisation``) before diffusion, and ``sample`` returns them in the training frame.
Continuous conditions (clinical targets such as EDV in ml and EF in %) are given in their own
units and standardised the same way; NaN means "not given".

Classifier-free guidance: during training each condition group (the phase, each continuous
condition) is replaced by its null token with probability ``condition_dropout``, and all of
them together with the same probability, so one network learns the conditional noise
``eps(x, c)`` and the unconditional ``eps(x, null)``. Sampling with scale ``w`` uses
``eps(x, null) + w (eps(x, c) - eps(x, null))``: ``w = 1`` is the plain conditional model,
``w > 1`` pushes samples further in the conditions' direction (stronger class separation; a
continuous target can be overshot, so choose ``w`` on held-out data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler
from torch import nn
from torch.utils.data import Dataset

from cardiocore.errors import CardioInputError
from cardiocore.gen.denoiser import LatentDenoiser
from cardiocore.gen.samplers import DEFAULT_FAST_STEPS, DEFAULT_SAMPLER, SAMPLERS

PHASE_NAMES = ("ED", "ES")
_VALIDATION_SEED = 20240
"""Seed of the noise and steps of the evaluation-mode loss (same draws for every checkpoint)."""

PhaseInput = int | str | Sequence[int] | torch.Tensor | None
ConditionInput = Sequence[float] | torch.Tensor | None


class LatentDiffusion(nn.Module):
    """A denoiser, its noise schedule and the latent/condition normaliser, as one module.

    denoiser: the epsilon-predicting network; its ``num_train_timesteps`` sets the chain length.
    schedule: a MONAI ``NoiseSchedules`` name ("linear_beta" as in MeshLDM, "cosine", ...).
    schedule_args: keyword arguments of that schedule (default: MONAI's, beta 1e-4 -> 2e-2).
    condition_dropout: probability of dropping each condition group, and of dropping all of
        them at once, during training (classifier-free guidance).

    ``forward`` is ``training_loss``, so the module works under DDP and as the model of
    ``cardiocore.train.loop.Trainer`` with ``latent_diffusion_loss`` as its ``loss_fn``.
    """

    def __init__(
        self,
        denoiser: LatentDenoiser,
        schedule: str = "linear_beta",
        schedule_args: Mapping[str, float] | None = None,
        condition_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= condition_dropout < 1.0:
            raise CardioInputError("condition_dropout", f"must be in [0, 1), got {condition_dropout}")
        self.denoiser = denoiser
        self.num_train_timesteps = denoiser.num_train_timesteps
        self.schedule = schedule
        self.schedule_args = dict(schedule_args or {})
        self.condition_dropout = condition_dropout
        try:
            self.ddpm = DDPMScheduler(
                self.num_train_timesteps, schedule, clip_sample=False, prediction_type="epsilon", **self.schedule_args
            )
            self.ddim = DDIMScheduler(
                self.num_train_timesteps, schedule, clip_sample=False, prediction_type="epsilon", **self.schedule_args
            )
            self.plms = PNDMScheduler(
                self.num_train_timesteps,
                schedule,
                skip_prk_steps=True,
                set_alpha_to_one=True,
                prediction_type="epsilon",
                **self.schedule_args,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CardioInputError(
                "schedule", f"{schedule!r} with arguments {self.schedule_args} is not a MONAI noise schedule ({error})"
            ) from error
        latent_dim, n_conditions = denoiser.latent_dim, denoiser.n_conditions
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))
        self.register_buffer("condition_mean", torch.zeros(n_conditions))
        self.register_buffer("condition_std", torch.ones(n_conditions))

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """JSON-compatible settings that rebuild this module with ``from_config`` (weights apart)."""
        return {
            "denoiser": dict(self.denoiser.config),
            "schedule": self.schedule,
            "schedule_args": dict(self.schedule_args),
            "condition_dropout": self.condition_dropout,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LatentDiffusion:
        """A new, untrained module with the settings of ``config`` (as written by ``config``)."""
        return cls(
            LatentDenoiser(**config["denoiser"]),
            schedule=config["schedule"],
            schedule_args=config["schedule_args"],
            condition_dropout=config["condition_dropout"],
        )

    @property
    def latent_dim(self) -> int:
        return self.denoiser.latent_dim

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalisation(self, latents: torch.Tensor, conditions: ConditionInput = None) -> None:
        """Store the per-dimension mean and standard deviation of the training latents (N, D)
        and, for a model with continuous conditions, of their values (N, C) in their own units
        (NaN entries, meaning unknown, are left out)."""
        latents = self._check_latents(latents, "latents")
        if latents.shape[0] < 2:
            raise CardioInputError("latents", f"needs at least 2 samples to normalise, got {latents.shape[0]}")
        self.latent_mean.copy_(latents.mean(dim=0))
        self.latent_std.copy_(latents.std(dim=0).clamp_min(1e-6))
        if self.denoiser.n_conditions == 0:
            if conditions is not None:
                raise CardioInputError("conditions", "were given but the model has no continuous conditions")
            return
        if conditions is None:
            count = self.denoiser.n_conditions
            raise CardioInputError("conditions", f"the model has {count} conditions: give their values")
        values = self._condition_values(conditions, latents.shape[0], "conditions").to(self.condition_mean)
        known = (~torch.isnan(values)).sum(dim=0)
        if bool((known < 2).any()):
            raise CardioInputError("conditions", "each condition needs at least 2 known (non-NaN) values")
        mean = torch.nanmean(values, dim=0)
        variance = torch.nansum((values - mean) ** 2, dim=0) / (known - 1)
        self.condition_mean.copy_(mean)
        self.condition_std.copy_(variance.sqrt().clamp_min(1e-6))

    def normalise_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, D) in the training frame -> standardised (N, D)."""
        return (latents - self.latent_mean) / self.latent_std

    def denormalise_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Standardised latents (N, D) -> the training frame (N, D)."""
        return latents * self.latent_std + self.latent_mean

    # ------------------------------------------------------------------ training
    def training_loss(
        self, z0: torch.Tensor, phase: PhaseInput = None, conditions: ConditionInput = None
    ) -> torch.Tensor:
        """DDPM epsilon loss: mean squared error between the noise MONAI's ``add_noise`` put on
        the standardised latents at uniform random steps and the denoiser's prediction.

        z0: (B, D) clean latents in the training frame; phase: (B,) labels (0 = ED, 1 = ES),
        one label for all, or None (unknown); conditions: (B, C) values in their units, NaN =
        unknown, or None. In training mode conditions are dropped for guidance. Scalar.

        In evaluation mode the noise and steps come from a fixed seed, so that validation scores
        of different checkpoints compare on the same draws rather than on fresh random ones.
        """
        z = self.normalise_latent(self._check_latents(z0, "z0"))
        batch = z.shape[0]
        labels = self._phase_labels(phase, batch, z.device)
        values = self._standardised_conditions(conditions, batch, z.device)
        if self.training and self.condition_dropout > 0:
            labels, values = self._drop_conditions(labels, values)
        generator = None if self.training else torch.Generator(device=z.device).manual_seed(_VALIDATION_SEED)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        timesteps = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=z.device)
        noisy = self.ddpm.add_noise(z, noise, timesteps)
        return nn.functional.mse_loss(self.denoiser(noisy, timesteps, labels, values), noise)

    def forward(self, z0: torch.Tensor, phase: PhaseInput = None, conditions: ConditionInput = None) -> torch.Tensor:
        """Same as ``training_loss`` (so that DDP synchronises its gradients)."""
        return self.training_loss(z0, phase, conditions)

    def _drop_conditions(
        self, labels: torch.Tensor | None, values: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Replace condition groups by their null token, each with probability p and all at once
        with probability p."""
        p = self.condition_dropout
        anchor = labels if labels is not None else values
        if anchor is None:
            return labels, values
        drop_all = torch.rand(anchor.shape[0], device=anchor.device) < p
        if labels is not None:
            drop = drop_all | (torch.rand(labels.shape, device=labels.device) < p)
            labels = labels.masked_fill(drop, self.denoiser.null_phase)
        if values is not None:
            drop = drop_all[:, None] | (torch.rand(values.shape, device=values.device) < p)
            values = values.masked_fill(drop, float("nan"))
        return labels, values

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        phase: PhaseInput = None,
        conditions: ConditionInput = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Draw ``n`` latents (n, D) in the training frame, on the module's device.

        sampler: "plms" (the default: MONAI's PNDM pseudo linear multi-step solver, ``steps``
            + 1 network calls; more accurate than DDIM at the same steps), "ddim" (MONAI's DDIM
            over ``steps`` evenly spaced steps; ``eta`` 0 is deterministic given the initial
            noise, 1 is ancestral) or "ddpm" (MeshLDM's ancestral sampler over every one of the
            ``num_train_timesteps`` steps). ``steps`` None:
            :data:`cardiocore.gen.samplers.DEFAULT_FAST_STEPS`.
        phase: "ED"/"ES", a label (0 = ED, 1 = ES), (n,) labels or None (any phase).
        conditions: (C,) targets for all samples or (n, C), in their own units; NaN or None =
            not requested.
        guidance_scale: classifier-free guidance scale w (1 = conditional model, 0 = unconditional).
        generator: seeds the initial noise and the sampler's noise; must be on the module's device.
        """
        if not isinstance(n, int) or n < 1:
            raise CardioInputError("n", f"must be a positive integer, got {n!r}")
        if guidance_scale < 0:
            raise CardioInputError("guidance_scale", f"must be >= 0, got {guidance_scale}")
        device = self.latent_mean.device
        if generator is not None and generator.device.type != device.type:
            raise CardioInputError(
                "generator",
                f"is on {generator.device} but the model samples on {device}",
                f"create it with torch.Generator(device='{device}')",
            )
        scheduler = self._prepared_scheduler(sampler, steps, eta)
        labels = self._phase_labels(phase, n, device)
        values = self._standardised_conditions(conditions, n, device)
        guided = guidance_scale != 1.0 and self._requests_conditions(labels, values)
        if guided:  # one batch: the conditional half first, the unconditional (null) half second
            labels = None if labels is None else torch.cat([labels, torch.full_like(labels, self.denoiser.null_phase)])
            values = None if values is None else torch.cat([values, torch.full_like(values, float("nan"))])
        x = torch.randn((n, self.latent_dim), generator=generator, device=device)
        for t in scheduler.timesteps.tolist():
            noise = self._predicted_noise(x, t, labels, values, guidance_scale if guided else None)
            if sampler == "ddim":
                x, _ = scheduler.step(noise, t, x, eta=eta, generator=generator)
            elif sampler == "plms":
                x, _ = scheduler.step(noise, t, x)
            else:
                x, _ = scheduler.step(noise, t, x, generator=generator)
        return self.denormalise_latent(x)

    def _prepared_scheduler(
        self, sampler: str, steps: int | None, eta: float
    ) -> DDIMScheduler | PNDMScheduler | DDPMScheduler:
        """The MONAI scheduler for ``sampler`` with its timesteps set (and its state reset)."""
        total = self.num_train_timesteps
        if sampler not in SAMPLERS:
            raise CardioInputError("sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}")
        if sampler != "ddim" and eta != 0.0:
            raise CardioInputError("eta", "applies to the DDIM sampler only")
        if sampler == "ddpm":
            if steps not in (None, total):
                raise CardioInputError(
                    "steps",
                    f"the DDPM sampler runs all {total} training steps, got {steps}",
                    "use sampler='ddim' or 'plms' for fewer steps",
                )
            self.ddpm.set_timesteps(total)
            return self.ddpm
        steps = DEFAULT_FAST_STEPS if steps is None else steps
        if not isinstance(steps, int) or not 2 <= steps <= total:
            raise CardioInputError("steps", f"must be an integer in [2, {total}], got {steps!r}")
        if not 0.0 <= eta <= 1.0:
            raise CardioInputError("eta", f"must be in [0, 1], got {eta}")
        stride = total // steps
        if sampler == "ddim":
            self.ddim.set_timesteps(steps)
            # MONAI's DDIM step goes from t to t - total // steps: put the timesteps exactly on
            # that grid (stride * k, k = steps - 1 .. 0) so each step lands on the next one.
            self.ddim.timesteps = torch.arange(steps - 1, -1, -1) * stride
            return self.ddim
        self.plms.set_timesteps(steps)
        # The PLMS warm-up takes two calls at the second timestep (one Heun step over the first
        # interval); MONAI's timesteps list it once, which skips the last interval. Repeat it.
        timesteps = self.plms.timesteps
        self.plms.timesteps = torch.cat([timesteps[:2], timesteps[1:]])
        return self.plms

    def _requests_conditions(self, labels: torch.Tensor | None, values: torch.Tensor | None) -> bool:
        """Whether any sample asks for a phase or a condition value."""
        return (labels is not None and bool((labels != self.denoiser.null_phase).any())) or (
            values is not None and not bool(torch.isnan(values).all())
        )

    def _predicted_noise(
        self,
        x: torch.Tensor,
        t: int,
        labels: torch.Tensor | None,
        values: torch.Tensor | None,
        guidance_scale: float | None,
    ) -> torch.Tensor:
        """The noise predicted for x (n, D) at step t; with a ``guidance_scale`` the labels and
        values hold the conditional then the null half, and the two predictions are combined."""
        model_input = x if guidance_scale is None else torch.cat([x, x])
        timesteps = torch.full((model_input.shape[0],), t, dtype=torch.long, device=x.device)
        noise = self.denoiser(model_input, timesteps, labels, values)
        if guidance_scale is None:
            return noise
        with_conditions, without = noise.chunk(2)
        return without + guidance_scale * (with_conditions - without)

    # ------------------------------------------------------------------ input checks
    def _check_latents(self, latents: torch.Tensor, name: str) -> torch.Tensor:
        latents = torch.as_tensor(latents)
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise CardioInputError(name, f"must have shape (N, {self.latent_dim}), got {tuple(latents.shape)}")
        if latents.shape[0] == 0:
            raise CardioInputError(name, "is empty")
        latents = latents.to(device=self.latent_mean.device, dtype=self.latent_mean.dtype)
        if not bool(torch.isfinite(latents).all()):
            raise CardioInputError(name, "contains NaN or infinite values")
        return latents

    def _phase_labels(self, phase: PhaseInput, n: int, device: torch.device) -> torch.Tensor | None:
        """(n,) long phase labels, the null label where no phase is given; None for a model
        without phases."""
        n_classes = self.denoiser.n_classes
        if n_classes == 0:
            if phase is not None:
                raise CardioInputError("phase", "was given but the model is not conditioned on the phase")
            return None
        if phase is None:
            return torch.full((n,), self.denoiser.null_phase, dtype=torch.long, device=device)
        if isinstance(phase, str):
            if n_classes != len(PHASE_NAMES) or phase.upper() not in PHASE_NAMES:
                raise CardioInputError("phase", f"{phase!r} is not one of {', '.join(PHASE_NAMES[:n_classes])}")
            phase = PHASE_NAMES.index(phase.upper())
        labels = torch.as_tensor(phase, device=device)
        if labels.is_floating_point() or labels.is_complex():
            raise CardioInputError("phase", f"labels must be integers, got {labels.dtype}")
        labels = labels.long()
        if labels.ndim == 0:
            labels = labels.expand(n)
        if labels.shape != (n,):
            raise CardioInputError("phase", f"must be one label or {n} labels, got shape {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels >= n_classes)).any()):
            raise CardioInputError("phase", f"labels must be in [0, {n_classes - 1}]")
        return labels

    def _condition_values(self, conditions: ConditionInput, n: int, name: str) -> torch.Tensor:
        """(n, C) float condition values in their own units (a (C,) input is repeated)."""
        count = self.denoiser.n_conditions
        values = torch.as_tensor(conditions, dtype=torch.float32)
        if values.ndim == 1 and values.shape[0] == count:
            values = values.expand(n, count)
        if values.shape != (n, count):
            raise CardioInputError(name, f"must have shape ({count},) or ({n}, {count}), got {tuple(values.shape)}")
        if bool(torch.isinf(values).any()):
            raise CardioInputError(name, "contains infinite values (use NaN for 'not given')")
        return values

    def _standardised_conditions(self, conditions: ConditionInput, n: int, device: torch.device) -> torch.Tensor | None:
        """(n, C) standardised conditions with NaN where not given; None for a model without."""
        if self.denoiser.n_conditions == 0:
            if conditions is not None:
                raise CardioInputError("conditions", "were given but the model has no continuous conditions")
            return None
        if conditions is None:
            return torch.full((n, self.denoiser.n_conditions), float("nan"), device=device)
        values = self._condition_values(conditions, n, "conditions").to(device)
        return (values - self.condition_mean) / self.condition_std


class LatentDataset(Dataset):
    """Latents (N, D) with optional phase labels (N,) and condition values (N, C), served as
    dicts ``{"latent", "phase", "conditions"}`` (absent keys omitted) for ``Trainer``."""

    def __init__(
        self, latents: torch.Tensor, phase: torch.Tensor | None = None, conditions: torch.Tensor | None = None
    ) -> None:
        self.latents = torch.as_tensor(latents, dtype=torch.float32)
        self.fields = {"latent": self.latents}
        if phase is not None:
            self.fields["phase"] = torch.as_tensor(phase, dtype=torch.long)
        if conditions is not None:
            self.fields["conditions"] = torch.as_tensor(conditions, dtype=torch.float32)
        for name, values in self.fields.items():
            if values.shape[0] != self.latents.shape[0]:
                raise CardioInputError(
                    name, f"has {values.shape[0]} entries for {self.latents.shape[0]} latents", "give one per latent"
                )

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.fields.items()}


def latent_diffusion_loss(model: nn.Module, batch: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``Trainer`` loss function for a (possibly DDP-wrapped) ``LatentDiffusion``: the batch is
    a ``LatentDataset`` dict or a (B, D) latent tensor."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    return model(batch["latent"], batch.get("phase"), batch.get("conditions"))
