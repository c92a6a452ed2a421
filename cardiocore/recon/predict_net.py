"""The Predict-mode network: image -> multi-chamber meshes in the template's topology.

Three parts, all in the network *frame* (mm, origin at the centre of the input grid; see
:mod:`cardiocore.recon.synth`):

1. **Image encoder**: MONAI's ``BasicUNet`` (3-D, 4 down-sampling levels) on the (1, D, D, D)
   image. Its output logits give an auxiliary segmentation (structure index, S + 1 classes);
   its decoder feature maps at full, half and quarter resolution are sampled at the vertices.
2. **Attention-guided global alignment**: a 1x1x1 convolution on the quarter-resolution
   features gives one attention map per structure (softmax over the voxels); its expectation of
   the voxel positions is that structure's centroid c_s (mm). The affine that takes the
   template's structure centroids m_s onto the c_s (ridge-regularised least squares towards a
   pure translation) places the template.
3. **Graph decoder**: ``n_blocks`` deformation blocks. Each samples the image features at the
   current vertex positions (trilinear), appends the position (/100 mm) and the structure
   one-hot, and runs Chebyshev graph convolutions (PyG ``ChebConv``, residual, ELU) over the
   template graph to a per-vertex offset (mm) added to the positions.

The template (vertices in mm, centred on the union centroid, faces per structure) is part of the
network's construction; :class:`cardiocore.recon.predict.MeshPredictor` stores it in the model
file beside the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn
from torch_geometric.nn import ChebConv

from cardiocore.errors import CardioInputError
from cardiocore.geometry.mesh import edge_index
from cardiocore.nets.graph import chebyshev_conv, scaled_laplacian


@dataclass(frozen=True)
class PredictNetSpec:
    """Architecture of :class:`MeshPredictionNet` (JSON-compatible; stored in model files).

    grid_size: voxels per side of the input grid; spacing_mm: its voxel size.
    unet_features: ``BasicUNet`` features (6 numbers: 5 levels and the last decoder level).
    graph_channels: width of the graph decoder; chebyshev_k: hops per graph convolution;
    graph_layers: residual graph convolutions per block; n_blocks: deformation blocks.
    offset_scale_mm: the decoder's raw output times this is the offset, mm.
    alignment_ridge: weight of the pull of the alignment's linear part towards a scaling of
        the identity, relative to the spread of the template centroids.
    """

    grid_size: int = 64
    spacing_mm: float = 3.0
    unet_features: tuple[int, ...] = (8, 16, 32, 64, 96, 16)
    graph_channels: int = 64
    chebyshev_k: int = 3
    graph_layers: int = 3
    n_blocks: int = 2
    offset_scale_mm: float = 5.0
    alignment_ridge: float = 0.1

    def __post_init__(self) -> None:
        if self.grid_size < 32 or self.grid_size % 16:
            raise CardioInputError("grid_size", f"must be a multiple of 16 and at least 32 (four halvings leave "
                                   f"2^3 voxels for the instance norm), got {self.grid_size}")
        if len(self.unet_features) != 6:
            raise CardioInputError("unet_features", f"needs 6 numbers, got {len(self.unet_features)}")
        if not self.spacing_mm > 0:
            raise CardioInputError("spacing_mm", f"must be positive, got {self.spacing_mm}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["unet_features"] = list(self.unet_features)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PredictNetSpec:
        return cls(**{**values, "unet_features": tuple(values["unet_features"])})


class PredictionOutput(NamedTuple):
    """What :meth:`MeshPredictionNet.forward` returns for a batch of B images.

    logits: (B, S + 1, D, D, D) segmentation logits (0 background, s + 1 structure s).
    centroids: (B, S, 3) attention centroids, frame mm.
    aligned: (B, V, 3) the globally aligned template, frame mm.
    stages: per deformation block, vertices (B, V, 3), frame mm; the last is the prediction.
    """

    logits: torch.Tensor
    centroids: torch.Tensor
    aligned: torch.Tensor
    stages: list[torch.Tensor]


def ridge_affine(source: torch.Tensor, target: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine ``x -> A x + t`` taking points ``source`` (S, 3) onto ``target`` (B, S, 3).

    Least squares with a ridge term ``ridge * tr(X^T X) / 3 * |A - a I|^2`` pulling the linear
    part towards the isotropic scaling ``a I`` that best matches the spreads, so a handful of
    noisy centroids cannot shear the template. A linear part that would mirror the template
    (determinant <= 0, which turns its meshes inside out) is replaced by ``a I``. Differentiable
    w.r.t. ``target``.

    Returns:
        A (B, 3, 3) and t (B, 3).
    """
    source_mean = source.mean(dim=0)
    target_mean = target.mean(dim=1)
    x = source - source_mean  # (S, 3)
    y = target - target_mean[:, None]  # (B, S, 3)
    gram = x.T @ x
    spread = gram.diagonal().sum()
    scale = (y.pow(2).sum(dim=(1, 2)) / spread).sqrt()  # (B,)
    lam = ridge * spread / 3.0
    eye = torch.eye(3, dtype=source.dtype, device=source.device)
    cross = y.transpose(1, 2) @ x + lam * scale[:, None, None] * eye  # (B, 3, 3)
    linear = cross @ torch.linalg.inv(gram + lam * eye)
    mirrored = torch.linalg.det(linear) <= 0
    linear = torch.where(mirrored[:, None, None], scale[:, None, None] * eye, linear)
    shift = target_mean - (linear @ source_mean[:, None]).squeeze(-1)
    return linear, shift


class _DeformationBlock(nn.Module):
    """Per-vertex features -> residual Chebyshev convolutions -> offsets (mm)."""

    def __init__(self, in_channels: int, channels: int, k: int, layers: int) -> None:
        super().__init__()
        self.lift = nn.Linear(in_channels, channels)
        self.convs = nn.ModuleList(ChebConv(channels, channels, K=k) for _ in range(layers))
        self.out = nn.Linear(channels, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.lift(features))
        for conv in self.convs:
            h = h + F.elu(chebyshev_conv(conv, h, laplacian))
        return self.out(h)


class MeshPredictionNet(nn.Module):
    """Image (B, 1, D, D, D) -> per-vertex positions of the template (see the module docstring).

    Args:
        spec: architecture.
        template_verts: (V, 3) template vertices, mm, centred on their union centroid.
        template_faces: per structure, triangles (F_s, 3) int64 into that structure's vertices.
        sizes: vertices per structure (sum V), in structure order.
    """

    def __init__(
        self,
        spec: PredictNetSpec,
        template_verts: torch.Tensor,
        template_faces: Sequence[torch.Tensor],
        sizes: Sequence[int],
    ) -> None:
        super().__init__()
        if int(sum(sizes)) != template_verts.shape[0] or len(sizes) != len(template_faces):
            raise CardioInputError("template", "vertex counts per structure do not add up to the vertex array")
        self.spec = spec
        self.sizes = [int(n) for n in sizes]
        n_structures = len(self.sizes)
        f = spec.unet_features
        self.unet = BasicUNet(spatial_dims=3, in_channels=1, out_channels=n_structures + 1, features=f)
        self.attention = nn.Conv3d(f[2], n_structures, kernel_size=1)
        offsets = torch.cumsum(torch.tensor([0] + self.sizes[:-1]), dim=0)
        merged = torch.cat([fc.long() + int(o) for fc, o in zip(template_faces, offsets, strict=True)])
        region = torch.repeat_interleave(torch.arange(n_structures), torch.tensor(self.sizes))
        self.register_buffer("template", template_verts.float().clone(), persistent=False)
        self.register_buffer("faces", merged, persistent=False)
        self.register_buffer("region_onehot", F.one_hot(region, n_structures).float(), persistent=False)
        self.register_buffer("template_centroids", torch.stack(
            [template_verts[region == s].float().mean(dim=0) for s in range(n_structures)]), persistent=False)
        sampled = f[5] + f[1] + f[2]
        self.blocks = nn.ModuleList(
            _DeformationBlock(sampled + 3 + n_structures, spec.graph_channels, spec.chebyshev_k, spec.graph_layers)
            for _ in range(spec.n_blocks)
        )
        graph = edge_index(merged)
        self.register_buffer("laplacian", scaled_laplacian(self.blocks[0].convs[0], graph, template_verts.shape[0]),
                             persistent=False)
        half = (spec.grid_size - 1) / 2.0
        axis = (torch.arange(spec.grid_size, dtype=torch.float32) - half) * spec.spacing_mm
        self.register_buffer("axis_mm", axis, persistent=False)

    @property
    def n_structures(self) -> int:
        return len(self.sizes)

    def _normalised(self, points: torch.Tensor) -> torch.Tensor:
        """Frame mm (B, V, 3) -> grid_sample coordinates (B, V, 1, 1, 3) in (k, j, i) order."""
        extent = (self.spec.grid_size - 1) / 2.0 * self.spec.spacing_mm
        return (points / extent).flip(-1)[:, :, None, None, :]

    def _sample(self, maps: Sequence[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        grid = self._normalised(points)
        columns = [F.grid_sample(m, grid.to(m.dtype), mode="bilinear", padding_mode="border", align_corners=True)
                   for m in maps]
        return torch.cat(columns, dim=1)[:, :, :, 0, 0].transpose(1, 2)  # (B, V, C)

    def _centroids(self, features: torch.Tensor) -> torch.Tensor:
        """Attention centroids (B, S, 3) mm from (B, C, d, d, d) features."""
        logits = self.attention(features)
        batch, n, d = logits.shape[0], logits.shape[1], logits.shape[-1]
        weights = torch.softmax(logits.flatten(2).float(), dim=-1).view(batch, n, d, d, d)
        # Positions of the coarse voxel centres (align_corners): the full-grid axis resampled.
        axis = F.interpolate(self.axis_mm[None, None], size=d, mode="linear", align_corners=True)[0, 0]
        ci = (weights.sum(dim=(3, 4)) * axis).sum(-1)
        cj = (weights.sum(dim=(2, 4)) * axis).sum(-1)
        ck = (weights.sum(dim=(2, 3)) * axis).sum(-1)
        return torch.stack([ci, cj, ck], dim=-1)

    def forward(self, image: torch.Tensor) -> PredictionOutput:
        size = self.spec.grid_size
        if image.ndim != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != (size, size, size):
            raise CardioInputError("image", f"must be (B, 1, {size}, {size}, {size}), got {tuple(image.shape)}")
        u = self.unet
        x0 = u.conv_0(image)
        x1 = u.down_1(x0)
        x2 = u.down_2(x1)
        x3 = u.down_3(x2)
        x4 = u.down_4(x3)
        u4 = u.upcat_4(x4, x3)
        u3 = u.upcat_3(u4, x2)
        u2 = u.upcat_2(u3, x1)
        u1 = u.upcat_1(u2, x0)
        logits = u.final_conv(u1)
        centroids = self._centroids(u3)
        linear, shift = ridge_affine(self.template_centroids, centroids, self.spec.alignment_ridge)
        aligned = self.template @ linear.transpose(1, 2) + shift[:, None]
        batch = image.shape[0]
        onehot = self.region_onehot.expand(batch, -1, -1)
        verts = aligned
        stages = []
        for block in self.blocks:
            features = torch.cat([self._sample([u1, u2, u3], verts), verts / 100.0, onehot], dim=-1)
            verts = verts + self.spec.offset_scale_mm * block(features.float(), self.laplacian)
            stages.append(verts)
        return PredictionOutput(logits, centroids, aligned, stages)
