"""A trained CardioGen model: one mesh VAE and its latent diffusion models, in one file.

The VAE encodes every shape (ED and ES) into one latent space; on top of it sit up to three
latent diffusion models: "ED" and "ES" (unconditional, one per phase, as in MeshLDM) and
"conditional" (phase label plus the subject's EDV in ml and EF in %, each optional, with
classifier-free guidance). All outputs are meshes in the training data's frame, in mm, with the
template's vertex order and faces.

Virtual subjects (:meth:`CardioGenModel.sample_pairs`): an ED shape is drawn, its EDV measured,
and an ES shape is drawn from the conditional model given that EDV; the pair's EF then follows
the learned joint distribution of (EDV, ESV).

File format (``torch.save`` of plain tensors and JSON-like values, read with
``weights_only=True``): ``{"format": "cardiogen-model", "format_version": 1,
"cardiocore_version", "vae": {"architecture", "hierarchy", "state"}, "diffusion": {key:
{"config", "state"}}, "regions", "card", "reference"}``, plus ``"alignment"`` (the (V, 3) shape the
training subjects were rigidly aligned to) for a model trained with align (an older cardiocore
reads such a file without it, so it would evaluate held-out subjects unaligned).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import cardiocore
from cardiocore.errors import CardioInputError, MeshError, WeightsError
from cardiocore.gen.clinical import lv_shape_indices, pair_ejection_fraction, surface_volumes_ml
from cardiocore.gen.data import ATLAS_HINT, ShapeCohort, ShapeNormalizer
from cardiocore.gen.diffusion import PHASE_NAMES, LatentDiffusion
from cardiocore.gen.pose import PoseFit, aligned_cohort, blend_poses, check_size, fit_pose
from cardiocore.gen.samplers import DEFAULT_SAMPLER
from cardiocore.gen.vae import MeshVAE
from cardiocore.geometry.hierarchy import MeshHierarchy
from cardiocore.geometry.mesh import region_faces
from cardiocore.metrics.clinical import MYOCARDIAL_DENSITY_G_PER_ML
from cardiocore.train.device import select_device
from cardiocore.weights import read_model_file, write_model_file

FILE_FORMAT = "cardiogen-model"
FILE_VERSION = 1
CONDITION_NAMES = ("EDV_ml", "EF_percent")
"""Continuous conditions of the conditional model, in this order, in their units."""
DIFFUSION_KEYS = ("ED", "ES", "conditional")
BUNDLED_MODEL = "cardiogen-cap"
"""Manifest name of the default model shipped in ``Resources/Models``."""
UNLIKE_TRAINING_FACTOR = 5.0
"""A mesh reconstructed (at its best pose) with a mean error above this multiple of the model's
validation error (model card ``val_vertex_error_mm``; 0.59 mm for the bundled model) is unlike the
training shapes, and using it gives a warning. On all 3,000 CAP shapes the bundled model's error is at
most 1.8 mm (p95 0.87 mm), under the 3.0 mm this gives."""


class CardioGenModel(nn.Module):
    """VAE + latent diffusion models; see the module docstring.

    Args:
        vae: the trained mesh VAE (holds the template faces and the normaliser).
        diffusion: latent diffusion models keyed "ED", "ES" and/or "conditional".
        regions: "endocardium" and "epicardium" vertex indices (int64).
        card: JSON-compatible model card (data, license, split, metrics...).
        reference: clinical columns of the training cohort ((N,) arrays; "phase" holds 0 = ED,
            1 = ES), the distribution generated shapes are compared with.
        alignment: the shape (V, 3) mm the training subjects were rigidly aligned to (trained with
            align), or None: the cohort was used in its own frame. Held-out shapes are aligned the
            same way (:meth:`splits_of`).
    """

    def __init__(
        self,
        vae: MeshVAE,
        diffusion: Mapping[str, LatentDiffusion],
        regions: Mapping[str, torch.Tensor],
        card: Mapping[str, Any] | None = None,
        reference: Mapping[str, np.ndarray] | None = None,
        alignment: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(diffusion) - set(DIFFUSION_KEYS))
        if unknown or not diffusion:
            raise CardioInputError("diffusion", f"needs models keyed by {DIFFUSION_KEYS}, got {sorted(diffusion)}")
        conditional = diffusion.get("conditional")
        if conditional is not None and conditional.denoiser.n_conditions != len(CONDITION_NAMES):
            raise CardioInputError(
                "diffusion['conditional']", f"must take the {len(CONDITION_NAMES)} conditions {CONDITION_NAMES}"
            )
        self.vae = vae
        self.diffusion = nn.ModuleDict(dict(diffusion))
        self.regions = {name: torch.as_tensor(index).long().cpu() for name, index in regions.items()}
        self.card = dict(card or {})
        self.reference = {name: np.asarray(values, dtype=np.float64) for name, values in (reference or {}).items()}
        self.alignment = None if alignment is None else torch.as_tensor(alignment, dtype=torch.float64).cpu()
        if self.alignment is not None and tuple(self.alignment.shape) != (self.n_vertices, 3):
            raise CardioInputError("alignment",
                                   f"must be a shape ({self.n_vertices}, 3), got {tuple(self.alignment.shape)}")

    # ------------------------------------------------------------------ description
    @property
    def faces(self) -> torch.Tensor:
        """Template triangles (F, 3) int64 (CPU)."""
        return self.vae.faces.cpu()

    @property
    def n_vertices(self) -> int:
        return self.vae.n_vertices

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    @property
    def phases_available(self) -> list[str]:
        """Phases that can be sampled: those with their own model, and both with a conditional one."""
        if "conditional" in self.diffusion:
            return list(PHASE_NAMES)
        return [p for p in PHASE_NAMES if p in self.diffusion]

    def surfaces(self, verts: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One mesh (V, 3) split into {"endocardium": (verts, faces), "epicardium": (verts, faces)}."""
        verts = torch.as_tensor(verts)
        return {
            name: (verts[index.to(verts.device)], region_faces(self.faces, index, self.n_vertices))
            for name, index in self.regions.items()
        }

    def clinical(self, verts: torch.Tensor) -> dict[str, np.ndarray]:
        """Clinical indices of meshes (N, V, 3) mm (:func:`cardiocore.gen.clinical.lv_shape_indices`)."""
        return lv_shape_indices(verts, self.faces, self.regions)

    def cavity_ml(self, verts: torch.Tensor) -> np.ndarray:
        """Cavity volumes (N,) ml of meshes (N, V, 3) mm, base closed (the ``cavity_ml`` of :meth:`clinical`)."""
        return self._enclosed_ml(verts, "endocardium")

    def pair_volume_indices(self, ed: torch.Tensor, es: torch.Tensor) -> dict[str, np.ndarray]:
        """Volume indices of N subjects from their ED and ES meshes (N, V, 3) mm, batched: "EDV"
        and "ESV" (ml), "EF" (%) and "mass" (g at ED, 1.05 g/ml), as :meth:`clinical` defines them,
        without its per-mesh wall thickness."""
        edv, esv = self.cavity_ml(ed), self.cavity_ml(es)
        return {"EDV": edv, "ESV": esv, "EF": pair_ejection_fraction(edv, esv),
                "mass": MYOCARDIAL_DENSITY_G_PER_ML * (self._enclosed_ml(ed, "epicardium") - edv)}

    def _enclosed_ml(self, verts: torch.Tensor, region: str) -> np.ndarray:
        """Volumes (N,) ml enclosed by one region's surface of meshes (N, V, 3) mm, base closed."""
        index = self.regions[region].cpu()
        shapes = torch.as_tensor(verts).detach().cpu()
        return surface_volumes_ml(shapes[..., index, :], region_faces(self.faces, index, self.n_vertices))

    # ------------------------------------------------------------------ latent space
    def _device(self) -> torch.device:
        return self.vae.faces.device

    def encode(self, verts: torch.Tensor) -> torch.Tensor:
        """Meshes (B, V, 3) mm -> posterior means (B, D) (on CPU)."""
        return self.vae.encode_shapes(torch.as_tensor(verts))[0].cpu()

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Latents (B, D) -> meshes (B, V, 3) mm float32 (on CPU), ``chunk_size`` at a time
        (default: the VAE's :meth:`MeshVAE.default_chunk` for its device).

        On CUDA out of memory the chunk of meshes decoded at once is halved (down to 1) with a
        warning; only then does it fail, with advice.
        """
        chunk_size = chunk_size or self.vae.default_chunk()
        while True:
            try:
                return self.vae.decode_shapes(torch.as_tensor(z), chunk_size).cpu()
            except torch.OutOfMemoryError as error:
                torch.cuda.empty_cache()
                if chunk_size == 1:
                    raise CardioInputError(
                        "device", f"ran out of GPU memory decoding one mesh ({error})", "use --device cpu"
                    ) from error
                chunk_size = max(1, chunk_size // 2)
                warnings.warn(f"CUDA out of memory while decoding: retrying {chunk_size} meshes at a time", stacklevel=2)

    def reconstruct(self, verts: torch.Tensor) -> torch.Tensor:
        """Meshes (B, V, 3) mm -> their VAE reconstructions (B, V, 3) mm (on CPU)."""
        return self.vae.reconstruct(torch.as_tensor(verts)).cpu()

    def template_vertices(self, verts: Any, faces: Any, name: str) -> torch.Tensor:
        """A mesh's vertices (V, 3) float64 mm, once its topology is checked to be the template's.

        Raises:
            MeshError: another vertex count or other faces (named, pointing to CardioAtlas).
        """
        verts_t, faces_t = torch.as_tensor(verts, dtype=torch.float64), torch.as_tensor(faces)
        if verts_t.shape[0] != self.n_vertices or not torch.equal(faces_t.to(torch.int64), self.faces.cpu()):
            raise MeshError(
                name,
                f"has {verts_t.shape[0]} vertices and {faces_t.shape[0]} faces, not the CardioGen template's "
                f"{self.n_vertices} vertices and {self.faces.shape[0]} faces",
                ATLAS_HINT,
            )
        return verts_t

    def splits_of(self, cohort: ShapeCohort) -> list[ShapeCohort]:
        """The cohort's (train, validation, test) parts as this model was trained on them: its recorded
        split, and its rigid alignment when it was trained with one."""
        from cardiocore.gen.training import split_as_recorded

        parts = split_as_recorded(cohort, self.card.get("split", {}))
        return parts if self.alignment is None else [aligned_cohort(part, self.alignment) for part in parts]

    def pose_of(self, verts: torch.Tensor, name: str = "mesh") -> PoseFit:
        """Where the VAE reconstructs a mesh (V, 3) mm best (:func:`cardiocore.gen.pose.fit_pose`),
        warning when even there it is unlike the training shapes (:data:`UNLIKE_TRAINING_FACTOR`).

        Raises:
            CardioInputError: a mesh far from the training shapes' size (not in mm?), named.
        """
        mean_shape = self.vae.normalizer.mean_shape.cpu()
        check_size(torch.as_tensor(verts), mean_shape, name)
        fit = fit_pose(torch.as_tensor(verts), mean_shape, lambda moved: self.reconstruct(moved.float()[None])[0])
        typical = self.card.get("metrics", {}).get("val_vertex_error_mm")
        if typical and fit.error_mm > UNLIKE_TRAINING_FACTOR * typical:
            warnings.warn(
                f"{name}: the model reconstructs it with a mean error of {fit.error_mm:.1f} mm (its validation shapes: "
                f"{typical:.2f} mm): it is unlike the training shapes, so what comes out differs from it",
                stacklevel=3,
            )
        return fit

    def interpolate(
        self, a: torch.Tensor, b: torch.Tensor, n: int, names: tuple[str, str] = ("start mesh", "end mesh")
    ) -> torch.Tensor:
        """``n`` meshes (n, V, 3) mm evenly spaced in latent space from mesh ``a`` (V, 3) mm to ``b``,
        wherever the two lie: each is first moved to where the VAE reconstructs it best
        (:meth:`pose_of`; a mesh in the training frame stays put), and the frames move rigidly from
        ``a``'s place to ``b``'s (rotation interpolated spherically). The end frames are the
        reconstructions of ``a`` and ``b``, where they are. ``names`` name the two in messages."""
        fits = [self.pose_of(mesh, name) for mesh, name in zip((a, b), names, strict=True)]
        za, zb = self.encode(torch.stack([fit.pose.apply(torch.as_tensor(mesh).double()) for fit, mesh in
                                          zip(fits, (a, b), strict=True)]).float())
        frames = self.vae.interpolate(za, zb, n).cpu()
        places = blend_poses(fits[0].pose.inverse(), fits[1].pose.inverse(), torch.linspace(0.0, 1.0, int(n)),
                             self.vae.normalizer.mean_shape.cpu().double().mean(dim=0))
        return torch.stack([place.apply(frame.double()) for place, frame in zip(places, frames, strict=True)]).float()

    # ------------------------------------------------------------------ sampling
    def _diffusion_for(self, phase: str | None, conditioned: bool, model: str | None) -> str:
        if model is not None:
            if model not in self.diffusion:
                raise CardioInputError("model", f"{model!r} is not one of this model's {sorted(self.diffusion)}")
            return model
        if conditioned or phase is None or phase not in self.diffusion:
            if "conditional" not in self.diffusion:
                wanted = "clinical targets" if conditioned else f"phase {phase!r}"
                raise CardioInputError(
                    "phase/conditions", f"{wanted} needs a conditional model, and this one has {sorted(self.diffusion)}"
                )
            return "conditional"
        return phase

    def sample(
        self,
        n: int,
        phase: str | None = "ED",
        *,
        seed: int = 0,
        steps: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        conditions: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        model: str | None = None,
    ) -> torch.Tensor:
        """Generate ``n`` meshes (n, V, 3) mm float32 on CPU, on the model's current device.

        phase: "ED", "ES" or None (any phase; conditional model only).
        conditions: clinical targets by name in :data:`CONDITION_NAMES`, one value for all meshes
            or one per mesh (e.g. ``{"EDV_ml": 150}``, ``{"EDV_ml": [120, 180]}`` for n = 2);
            any given target uses the conditional model.
        model: force a diffusion model ("ED", "ES", "conditional"); default: the phase's own
            model without targets, the conditional one with targets.
        seed: the same seed, settings and device give the same meshes.
        """
        if phase is not None and phase not in PHASE_NAMES:
            raise CardioInputError("phase", f"must be one of {PHASE_NAMES} or None, got {phase!r}")
        targets = dict(conditions or {})
        unknown = sorted(set(targets) - set(CONDITION_NAMES))
        if unknown:
            raise CardioInputError("conditions", f"unknown targets {unknown}", f"use {CONDITION_NAMES}")
        key = self._diffusion_for(phase, bool(targets), model)
        diffusion = self.diffusion[key]
        device = self._device()
        generator = torch.Generator(device=device).manual_seed(int(seed))
        if key == "conditional":
            values = _condition_matrix(targets, n)
            self._warn_beyond_training_edv(values[:, CONDITION_NAMES.index("EDV_ml")])
            latents = diffusion.sample(
                n, steps, sampler, phase=phase, conditions=values.to(device),
                guidance_scale=guidance_scale, generator=generator,
            )
        else:
            latents = diffusion.sample(n, steps, sampler, generator=generator)
        return self.decode(latents)

    def sample_pairs(
        self, n: int, *, seed: int = 0, steps: int | None = None, sampler: str = DEFAULT_SAMPLER
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` virtual subjects: ED meshes (n, V, 3) and ES meshes (n, V, 3), mm.

        ED shapes come from the ED model (or the conditional one); each ES shape is drawn from the
        conditional model given its ED partner's cavity volume, clipped to the range of end-diastolic
        volumes in the training reference: beyond it the conditional model extrapolates (a 308 ml
        ED sample, 56 ml above the largest training EDV, was once given a 2.3-litre ES shape).
        """
        if "conditional" not in self.diffusion:
            raise CardioInputError("sample_pairs", "needs a conditional model (ES given EDV)")
        ed = self.sample(n, "ED", seed=seed, steps=steps, sampler=sampler)
        edv = torch.as_tensor(self.cavity_ml(ed), dtype=torch.float32)
        seen = self.training_edv_range()
        if seen is not None:
            edv = edv.clamp(*seen)
        values = torch.stack([edv, torch.full_like(edv, float("nan"))], dim=1).to(self._device())
        generator = torch.Generator(device=self._device()).manual_seed(int(seed) + 1)
        latents = self.diffusion["conditional"].sample(
            n, steps, sampler, phase="ES", conditions=values, generator=generator
        )
        return ed, self.decode(latents)

    def training_edv_range(self) -> tuple[float, float] | None:
        """Smallest and largest EDV (ml) of the training reference's ED shapes (None: no reference)."""
        if "cavity_ml" not in self.reference or "phase" not in self.reference:
            return None
        seen = self.reference["cavity_ml"][self.reference["phase"] == PHASE_NAMES.index("ED")]
        return (float(seen.min()), float(seen.max())) if len(seen) else None

    def _warn_beyond_training_edv(self, requested: torch.Tensor) -> None:
        """Warn when requested EDVs (n,) ml, NaN = none, lie outside the training range."""
        seen = self.training_edv_range()
        given = requested[~torch.isnan(requested)]
        if seen is None or not len(given):
            return
        outside = given[(given < seen[0]) | (given > seen[1])]
        if len(outside):
            warnings.warn(
                f"requested EDV {float(outside[0]):.0f} ml lies outside the {seen[0]:.0f}-{seen[1]:.0f} ml of the "
                "training shapes: the conditional model extrapolates there and its shapes may be implausible",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ files
    def to_payload(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as plain tensors and JSON-like values."""
        return {
            "format": FILE_FORMAT,
            "format_version": FILE_VERSION,
            "cardiocore_version": cardiocore.__version__,
            "vae": {
                "architecture": {k: self.vae.architecture()[k] for k in ("channels", "latent_dim", "cheb_k")},
                "hierarchy": self._hierarchy_payload(),
                "state": {k: v.cpu() for k, v in self.vae.state_dict().items()},
            },
            "diffusion": {
                key: {"config": model.config, "state": {k: v.cpu() for k, v in model.state_dict().items()}}
                for key, model in self.diffusion.items()
            },
            "regions": {k: v.cpu() for k, v in self.regions.items()},
            "card": self.card,
            "reference": {k: torch.as_tensor(v) for k, v in self.reference.items()},
            **({} if self.alignment is None else {"alignment": self.alignment.clone()}),
        }

    def _hierarchy_payload(self) -> dict[str, Any]:
        hierarchy = getattr(self.vae, "hierarchy_payload", None)
        if hierarchy is None:
            raise CardioInputError("vae", "was built without its mesh hierarchy; build it with CardioGenModel.build_vae")
        return hierarchy

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model atomically; refuses an existing file unless ``overwrite``."""
        return write_model_file(path, self.to_payload(), overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CardioGenModel:
        """Read a model written by :meth:`save`, in eval mode on ``map_location``.

        Raises:
            WeightsError: missing, unreadable, another format or version, or weights that do not
                fit their architecture.
        """
        source = Path(path)
        payload = read_model_file(source, FILE_FORMAT, FILE_VERSION, "CardioGen model")
        try:
            model = cls.from_payload(payload, str(source))
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise WeightsError(str(source), f"holds weights that do not fit their architecture ({error})") from error
        return model.to(map_location).eval()

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], source: str = "CardioGen model") -> CardioGenModel:
        """Rebuild from :meth:`to_payload` output (errors name ``source``)."""
        vae_part = payload["vae"]
        hierarchy = MeshHierarchy.from_dict(vae_part["hierarchy"], f"{source} (mesh hierarchy)")
        n_vertices = hierarchy.n_vertices[0]
        vae = build_vae(hierarchy, ShapeNormalizer.identity(n_vertices), **vae_part["architecture"])
        vae.load_state_dict(vae_part["state"])
        diffusion = {}
        for key, part in payload["diffusion"].items():
            diffusion[key] = LatentDiffusion.from_config(part["config"])
            diffusion[key].load_state_dict(part["state"])
        reference = {k: torch.as_tensor(v).numpy() for k, v in payload.get("reference", {}).items()}
        return cls(vae, diffusion, payload["regions"], payload.get("card"), reference, payload.get("alignment"))

    @classmethod
    def from_bundled(cls, name: str = BUNDLED_MODEL, version: str | None = None, device: str = "auto") -> CardioGenModel:
        """The model ``name`` from the bundled or user manifest (checksum verified)."""
        from cardiocore.weights import resolve_model

        return cls.load(resolve_model(name, version), select_device(device))


def _condition_matrix(targets: Mapping[str, Any], n: int) -> torch.Tensor:
    """(n, C) condition values in :data:`CONDITION_NAMES` order; NaN where not requested."""
    values = torch.full((n, len(CONDITION_NAMES)), float("nan"))
    for column, name in enumerate(CONDITION_NAMES):
        if name not in targets:
            continue
        given = torch.as_tensor(targets[name], dtype=torch.float32).reshape(-1)
        if given.numel() not in (1, n):
            raise CardioInputError(f"conditions[{name!r}]", f"has {given.numel()} values for {n} meshes", "give 1 or n")
        values[:, column] = given
    return values


def build_vae(
    hierarchy: MeshHierarchy, normalizer: ShapeNormalizer, channels: Any = (3, 16, 16, 32, 32),
    latent_dim: int = 16, cheb_k: int = 6,
) -> MeshVAE:
    """A :class:`MeshVAE` that remembers its hierarchy (needed to save it inside a model file)."""
    vae = MeshVAE(hierarchy, channels=channels, latent_dim=latent_dim, cheb_k=cheb_k, normalizer=normalizer)
    vae.hierarchy_payload = hierarchy.to_dict()
    return vae
