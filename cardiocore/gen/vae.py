"""Mesh variational autoencoder (MeshLDM's first stage) over a quadric-decimation mesh hierarchy.

Encoder: at each level ``l`` a Chebyshev graph convolution (``torch_geometric`` ``ChebConv``, K
hops) from ``channels[l]`` to ``channels[l + 1]`` features, ELU, then pooling to level ``l + 1``
with the hierarchy's down-sampling; the coarsest features are flattened and two linear maps give
the posterior mean and log-variance (no activation: a full Gaussian posterior). Decoder: a linear
map from the latent to the coarsest level, then at each level up-sampling with the hierarchy's
barycentric up-sampling and a ChebConv back to ``channels[l]`` features (ELU except on the output).

The network works on normalised shapes (:class:`cardiocore.gen.data.ShapeNormalizer`, which the
model holds and saves); ``encode_shapes``/``decode_shapes``/``reconstruct``/``interpolate`` take
and return millimetres in the training data's frame. Batched over (B, V, 3), on any device.

Training with :class:`cardiocore.train.loop.Trainer`: ``loss_fn=VAEObjective(KLAnnealing(...))``
on a :class:`cardiocore.gen.data.ShapeDataset`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch_geometric.nn import ChebConv

from cardiocore.errors import CardioInputError
from cardiocore.gen.data import ShapeNormalizer
from cardiocore.geometry.hierarchy import MeshHierarchy
from cardiocore.nets.graph import (
    DerivedOperatorCache,
    chebyshev_conv_node_first,
    scaled_laplacian,
    sparse_for_device,
    sparse_node_product,
)

CUDA_CHUNK = 256
"""Shapes per forward pass of the millimetre-level helpers on a GPU (bounds memory for large batches)."""
CPU_WORKING_SET_BYTES = 8 * 2**20
"""On a CPU the chunks are sized so that one level's features (shapes x vertices x channels,
float32) take about this many bytes, a last-level cache's worth: the graph convolutions are
memory-bound there: decoding 1,000 CardioGen meshes on one thread took 0.32 s in chunks of 256,
0.22 s in chunks of 64 or 128 and 0.30 s in chunks of 16 (2-core AMD EPYC, 32 MiB L3)."""


class HierarchyPooling(nn.Module):
    """A mesh hierarchy's graphs and pooling operators as module buffers (they follow ``.to``).

    Both work on node-first (n, B, C) features, the layout the VAE keeps from level to level.
    ``down(x, l)`` keeps the level-``l`` vertices that survive decimation (the rows of
    ``hierarchy.down[l]``), a gather. ``up(x, l)`` gives every level-``l`` vertex the barycentric
    mix of its closest coarse triangle (the rows of ``hierarchy.up[l]``), one sparse product in
    float32 (cast back to the input's dtype under autocast).
    """

    def __init__(self, hierarchy: MeshHierarchy) -> None:
        super().__init__()
        self.n_vertices = hierarchy.n_vertices
        self._up_matrices: dict[tuple[int, str], torch.Tensor] = DerivedOperatorCache()
        for level in range(hierarchy.n_levels):
            self.register_buffer(f"edge_index_{level}", hierarchy.edge_index[level].cpu().long())
        for level in range(hierarchy.n_levels - 1):
            self.register_buffer(f"down_index_{level}", hierarchy.kept[level].cpu().long())
            self.register_buffer(f"up_index_{level}", hierarchy.up_vertices[level].cpu().long())
            self.register_buffer(f"up_weight_{level}", hierarchy.up_weights[level].cpu().float())

    def edge_index(self, level: int) -> torch.Tensor:
        """PyG connectivity (2, 2E_l) of level ``level``."""
        return getattr(self, f"edge_index_{level}")

    def down(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Node-first (n_l, B, C) -> (n_{l+1}, B, C)."""
        return x.index_select(0, getattr(self, f"down_index_{level}"))

    def up(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Node-first (n_{l+1}, B, C) -> (n_l, B, C)."""
        return sparse_node_product(self._up_matrix(level, x.device), x).to(x.dtype)

    def _up_matrix(self, level: int, device: torch.device) -> torch.Tensor:
        """Sparse (n_l, n_{l+1}) float32 up-sampling matrix on ``device`` (layout:
        :func:`sparse_for_device`), built once from the buffers and cached (not a buffer itself,
        so state dicts stay as they were)."""
        key = (level, str(device))
        if key not in self._up_matrices:
            corners = getattr(self, f"up_index_{level}")
            rows = torch.arange(corners.shape[0], device=corners.device).repeat_interleave(corners.shape[1])
            shape = (self.n_vertices[level], self.n_vertices[level + 1])
            matrix = torch.sparse_coo_tensor(torch.stack([rows, corners.reshape(-1)]),
                                             getattr(self, f"up_weight_{level}").reshape(-1).float(), shape,
                                             check_invariants=True)
            self._up_matrices[key] = sparse_for_device(matrix.coalesce(), device)
        return self._up_matrices[key]


class MeshVAE(nn.Module):
    """ChebConv mesh VAE; see the module docstring.

    Args:
        hierarchy: mesh hierarchy of the template, ``len(channels)`` levels (finest first).
        channels: features per level; ``channels[0]`` must be 3 (x, y, z).
        latent_dim: size of the latent code.
        cheb_k: Chebyshev filter size K (hops).
        normalizer: maps mm to network units and back; None: identity (shapes already normalised).

    Buffers saved in the state dict: the graph and pooling indices, the template ``faces``
    (F, 3), the normaliser, and ``trained_steps`` (optimizer steps counted by
    :class:`VAEObjective`, driving KL annealing across resumed runs).
    """

    def __init__(
        self,
        hierarchy: MeshHierarchy,
        channels: Sequence[int] = (3, 16, 16, 32, 32),
        latent_dim: int = 16,
        cheb_k: int = 6,
        normalizer: ShapeNormalizer | None = None,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != hierarchy.n_levels:
            raise CardioInputError(
                "channels",
                f"gives {len(channels)} levels but the hierarchy has {hierarchy.n_levels}",
                "build the hierarchy with len(channels) - 1 decimation factors",
            )
        if channels[0] != 3 or min(channels) < 1:
            raise CardioInputError("channels", f"must start with 3 (x, y, z) and be positive, got {channels}")
        if int(latent_dim) < 1 or int(cheb_k) < 1:
            raise CardioInputError("latent_dim/cheb_k", f"must be positive, got {latent_dim}, {cheb_k}")
        n_vertices = hierarchy.n_vertices[0]
        normalizer = normalizer if normalizer is not None else ShapeNormalizer.identity(n_vertices)
        if normalizer.mean_shape.shape[0] != n_vertices:
            raise CardioInputError(
                "normalizer", f"is for {normalizer.mean_shape.shape[0]} vertices, the hierarchy has {n_vertices}"
            )
        self.channels = channels
        self.latent_dim = int(latent_dim)
        self.cheb_k = int(cheb_k)
        self.pooling = HierarchyPooling(hierarchy)
        self.normalizer = normalizer
        n_transitions = len(channels) - 1
        self.encoder_convs = nn.ModuleList(
            ChebConv(channels[level], channels[level + 1], self.cheb_k) for level in range(n_transitions)
        )
        self.coarse_shape = (hierarchy.n_vertices[-1], channels[-1])
        flat = hierarchy.n_vertices[-1] * channels[-1]
        self.to_mu = nn.Linear(flat, self.latent_dim)
        self.to_logvar = nn.Linear(flat, self.latent_dim)
        self.from_latent = nn.Linear(self.latent_dim, flat)
        # decoder_convs[level] maps channels[level + 1] -> channels[level] at that level
        self.decoder_convs = nn.ModuleList(
            ChebConv(channels[level + 1], channels[level], self.cheb_k) for level in range(n_transitions)
        )
        self.activation = nn.ELU()
        self.register_buffer("faces", hierarchy.faces[0].cpu().long())
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.int64))
        self._laplacians: dict[tuple[str, int, str], torch.Tensor] = DerivedOperatorCache()

    def _laplacian(self, side: str, level: int) -> torch.Tensor:
        """Sparse scaled Laplacian of a conv at ``level`` on the model's device, built once and cached
        (not a buffer: it is derived from the saved graph, so state dicts stay as they were)."""
        device = self.faces.device
        key = (side, level, str(device))
        if key not in self._laplacians:
            conv = (self.encoder_convs if side == "encoder" else self.decoder_convs)[level]
            edges = self.pooling.edge_index(level)
            laplacian = scaled_laplacian(conv, edges, self.pooling.n_vertices[level])
            self._laplacians[key] = sparse_for_device(laplacian, device)
        return self._laplacians[key]

    @property
    def n_vertices(self) -> int:
        """Vertices of the template (level 0)."""
        return self.pooling.n_vertices[0]

    def architecture(self) -> dict[str, Any]:
        """The JSON-compatible settings that define the network (for run configs and model cards)."""
        return {
            "channels": list(self.channels),
            "latent_dim": self.latent_dim,
            "cheb_k": self.cheb_k,
            "n_vertices": self.pooling.n_vertices,
        }

    # ------------------------------------------------------------------ network units
    def _batched(self, x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
        if x.dim() not in (2, 3) or tuple(x.shape[-2:]) != (self.n_vertices, 3):
            expected = f"(B, {self.n_vertices}, 3) or ({self.n_vertices}, 3)"
            raise CardioInputError(what, f"must have shape {expected}, got {tuple(x.shape)}")
        return (x, True) if x.dim() == 3 else (x.unsqueeze(0), False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of normalised shapes (B, V, 3): mean and log-variance, each (B, latent_dim).

        A single shape (V, 3) gives (latent_dim,) outputs.
        """
        h, batched = self._batched(x, "shapes to encode")
        h = h.transpose(0, 1)  # node-first (n, B, C) through the encoder, as in the decoder
        for level, conv in enumerate(self.encoder_convs):
            h = self.activation(chebyshev_conv_node_first(conv, h, self._laplacian("encoder", level)))
            h = self.pooling.down(h, level)
        h = h.transpose(0, 1).flatten(start_dim=1)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        return (mu, logvar) if batched else (mu[0], logvar[0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim) -> normalised shapes (B, V, 3); (latent_dim,) -> (V, 3)."""
        if z.dim() not in (1, 2) or z.shape[-1] != self.latent_dim:
            expected = f"(B, {self.latent_dim})"
            raise CardioInputError("latent codes", f"must have shape {expected}, got {tuple(z.shape)}")
        batched = z.dim() == 2
        h = self.from_latent(z if batched else z.unsqueeze(0)).unflatten(-1, self.coarse_shape)
        h = h.transpose(0, 1)  # node-first (n, B, C) through the decoder
        for level in reversed(range(len(self.decoder_convs))):
            up = functools.partial(self.pooling.up, level=level)
            h = chebyshev_conv_node_first(self.decoder_convs[level], h, self._laplacian("decoder", level), up)
            if level > 0:
                h = self.activation(h)
        h = h.transpose(0, 1)
        return h if batched else h[0]

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """A sample ``mu + exp(logvar / 2) * eps`` of the posterior, differentiable in both."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(
        self, x: torch.Tensor, sample: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised shapes (B, V, 3) -> (reconstruction (B, V, 3), mu, logvar (B, latent_dim)).

        ``sample``: decode a posterior sample (default while training) or the mean (default in eval).
        """
        mu, logvar = self.encode(x)
        use_sample = self.training if sample is None else sample
        z = self.reparameterize(mu, logvar) if use_sample else mu
        return self.decode(z), mu, logvar

    # ------------------------------------------------------------------ millimetres
    def default_chunk(self) -> int:
        """Shapes per forward pass of the millimetre-level helpers on the model's device:
        :data:`CUDA_CHUNK` on a GPU; on a CPU as many as keep the widest level's features within
        :data:`CPU_WORKING_SET_BYTES` (at most :data:`CUDA_CHUNK`, at least 1)."""
        if self.faces.device.type != "cpu":
            return CUDA_CHUNK
        widest = max(n * max(self.channels[level], self.channels[level + 1])
                     for level, n in enumerate(self.pooling.n_vertices[:-1]))
        return max(1, min(CUDA_CHUNK, CPU_WORKING_SET_BYTES // (4 * widest)))

    @torch.no_grad()
    def encode_shapes(
        self, verts: torch.Tensor, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes in mm (B, V, 3) -> posterior mean and log-variance (B, latent_dim) on the model's
        device, ``chunk_size`` shapes at a time (default :meth:`default_chunk`)."""
        x, batched = self._batched(torch.as_tensor(verts), "shapes to encode")
        device = self.faces.device
        chunk_size = chunk_size or self.default_chunk()
        parts = [self.encode(self.normalizer.normalize(c.to(device, torch.float32))) for c in x.split(chunk_size)]
        mu, logvar = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return (mu, logvar) if batched else (mu[0], logvar[0])

    @torch.no_grad()
    def decode_shapes(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Latent codes (B, latent_dim) -> shapes in mm (B, V, 3) in the training frame (float32),
        ``chunk_size`` codes at a time (default :meth:`default_chunk`)."""
        z = torch.as_tensor(z).to(self.faces.device, torch.float32)
        if z.dim() == 1:
            return self.decode_shapes(z.unsqueeze(0), chunk_size)[0]
        chunk_size = chunk_size or self.default_chunk()
        parts = [self.normalizer.denormalize(self.decode(c)) for c in z.split(chunk_size)]
        return torch.cat(parts)

    def reconstruct(self, verts: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Shapes in mm (B, V, 3) -> their reconstructions from the posterior mean, mm."""
        return self.decode_shapes(self.encode_shapes(verts, chunk_size)[0], chunk_size)

    def interpolate(self, z0: torch.Tensor, z1: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` shapes (n, V, 3) mm decoded at evenly spaced points from ``z0`` to ``z1`` (both included)."""
        if int(n) < 2:
            raise CardioInputError("n", f"an interpolation needs at least 2 shapes, got {n}")
        z0, z1 = (torch.as_tensor(z).to(self.faces.device, torch.float32).reshape(-1) for z in (z0, z1))
        if z0.shape != (self.latent_dim,) or z1.shape != (self.latent_dim,):
            raise CardioInputError("z0/z1", f"must be latent codes of size {self.latent_dim}")
        t = torch.linspace(0.0, 1.0, int(n), device=z0.device).unsqueeze(1)
        return self.decode_shapes(torch.lerp(z0, z1, t))


class VAELossTerms(NamedTuple):
    """Loss terms: ``total = reconstruction + beta * kl`` (scalars)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> VAELossTerms:
    """beta-VAE loss on normalised shapes.

    reconstruction: mean squared error over batch, vertices and coordinates (normalised units);
    kl: KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, averaged over the batch.
    Computed in float32 whatever the autocast dtype.
    """
    if recon.shape != target.shape:
        raise CardioInputError("recon", f"shape {tuple(recon.shape)} differs from the target's {tuple(target.shape)}")
    mu, logvar = mu.float(), logvar.float()
    reconstruction = (recon.float() - target.float()).square().mean()
    kl = (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).sum(dim=-1).mean()
    return VAELossTerms(reconstruction + beta * kl, reconstruction, kl)


class KLAnnealing:
    """KL weight rising linearly from ``start`` to ``end`` over ``steps`` optimizer steps, then ``end``.

    MeshLDM anneals beta from 1e-4 to 1e-3.
    """

    def __init__(self, start: float = 1e-4, end: float = 1e-3, steps: int = 1000) -> None:
        if start < 0 or end < 0 or int(steps) < 1:
            raise CardioInputError(
                "KLAnnealing", f"needs start, end >= 0 and steps >= 1, got {start}, {end}, {steps}"
            )
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step: int) -> float:
        """beta at optimizer step ``step`` (0-based)."""
        progress = min(max(int(step), 0) / self.steps, 1.0)
        return self.start + (self.end - self.start) * progress


class VAEObjective:
    """``loss_fn(model, batch)`` for :class:`cardiocore.train.loop.Trainer`.

    ``batch``: normalised shapes (B, V, 3) (a :class:`cardiocore.gen.data.ShapeDataset`).
    Returns ``(total, metrics)`` with metrics "reconstruction", "kl", "beta" and
    "vertex_error_mm" (mean Euclidean distance per vertex between reconstruction and input, mm).
    In training mode each call is one optimizer step: it advances the model's
    ``trained_steps``, from which beta is taken, so resumed runs continue the annealing.
    """

    def __init__(self, annealing: KLAnnealing | None = None) -> None:
        self.annealing = annealing or KLAnnealing()

    def __call__(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        vae = getattr(model, "module", model)  # unwrap DistributedDataParallel
        beta = self.annealing(int(vae.trained_steps))
        recon, mu, logvar = model(batch)
        terms = vae_loss(recon, batch, mu, logvar, beta)
        with torch.no_grad():
            distance = torch.linalg.vector_norm(recon.float() - batch.float(), dim=-1).mean()
            vertex_error_mm = distance * vae.normalizer.scale.float()
        if vae.training:
            vae.trained_steps += 1
        metrics = {
            "reconstruction": terms.reconstruction,
            "kl": terms.kl,
            "beta": beta,
            "vertex_error_mm": vertex_error_mm,
        }
        return terms.total, metrics
