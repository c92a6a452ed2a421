"""Graph-convolution helpers shared by the mesh networks (CardioGen's VAE, CardioReconstruct's
mesh decoder): PyTorch Geometric's ``ChebConv`` applied to batched node features with one sparse
Laplacian product per hop."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import ChebConv


def chebyshev_conv(conv: ChebConv, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """``conv(x, edge_index)`` for batched node features (B, N, C_in) -> (B, N, C_out), with the
    conv's scaled Laplacian (:func:`scaled_laplacian`) applied as one sparse (N, N) matrix to all
    B x C feature columns at once. Same result as PyG's message passing, which materialises a
    (B, 2E, C) message tensor per hop; several times faster for batches of meshes.

    The output is ``sum_k T_k(L) x W_k``. Since ``L`` acts on nodes and ``W_k`` on channels, the
    K - 1 sparse products run on whichever side is narrower: on the inputs with the recurrence
    ``T_k = 2 L T_{k-1} - T_{k-2}`` when C_in <= C_out, else on the projected outputs ``x W_k``
    by Clenshaw's recurrence (a decoder's last conv, 16 -> 3 channels, does 5x less sparse work).
    Terms are kept node-first, (N, B x C) float32 (sparse products in float32 under autocast too),
    so each hop is one fused sparse ``addmm``.
    """
    return chebyshev_conv_node_first(conv, x.transpose(0, 1), laplacian).transpose(0, 1)


def chebyshev_conv_node_first(conv: ChebConv, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """:func:`chebyshev_conv` on node-first features (N, B, C_in) -> (N, B, C_out), for networks
    that keep that layout from layer to layer."""
    if conv.in_channels <= conv.out_channels:
        out = _chebyshev_on_inputs(conv.lins, x, laplacian)
    else:
        out = _chebyshev_on_outputs(conv.lins, x, laplacian)
    return out + conv.bias if conv.bias is not None else out


def _sparse_hop(laplacian: torch.Tensor, term: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """``2 L term - previous`` (``L term`` without ``previous``) for node-first (N, B, C) terms, in float32."""
    n, batch, channels = term.shape
    flat = term.reshape(n, batch * channels).float()
    # Autocast would run the sparse product in the low-precision dtype, which CUDA's sparse addmm
    # does not implement for bfloat16 (and which would round the Laplacian's weights anyway).
    with torch.autocast(device_type=term.device.type, enabled=False):
        if previous is None:
            return torch.sparse.mm(laplacian, flat).view(n, batch, channels)
        previous = previous.reshape(n, batch * channels).float()
        return torch.sparse.addmm(previous, laplacian, flat, beta=-1.0, alpha=2.0).view(n, batch, channels)


def _chebyshev_on_inputs(lins: nn.ModuleList, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """``sum_k lins[k](T_k(L) x)`` with the forward recurrence on the (N, B, C_in) inputs."""
    out = lins[0](x)
    if len(lins) == 1:
        return out
    previous, term = x, _sparse_hop(laplacian, x, None)
    out = out + lins[1](term.to(x.dtype))
    for lin in lins[2:]:
        previous, term = term, _sparse_hop(laplacian, term, previous)
        out = out + lin(term.to(x.dtype))
    return out


def _chebyshev_on_outputs(lins: nn.ModuleList, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """``sum_k T_k(L) lins[k](x)`` by Clenshaw's recurrence on the (N, B, C_out) projections
    ``y_k``: ``b_k = y_k + 2 L b_{k+1} - b_{k+2}`` from k = K - 1 down to 1, then
    ``y_0 + L b_1 - b_2``."""
    projected = [lin(x) for lin in lins]
    if len(projected) == 1:
        return projected[0]
    b1, b2 = projected[-1].float(), None
    for y in reversed(projected[1:-1]):
        step = 2 * _sparse_hop(laplacian, b1, None) if b2 is None else _sparse_hop(laplacian, b1, b2)
        b1, b2 = y + step, b1
    out = projected[0] + _sparse_hop(laplacian, b1, None)
    return (out if b2 is None else out - b2).to(x.dtype)


def scaled_laplacian(conv: ChebConv, edge_index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """The conv's rescaled graph Laplacian ``2 L / lambda_max - I`` (as PyG computes it for this
    conv) as a sparse COO (N, N) float32 matrix, row = receiving node."""
    index, weight = conv.__norm__(edge_index, n_nodes, None, conv.normalization, None, dtype=torch.float32)
    return torch.sparse_coo_tensor(index.flip(0), weight, (n_nodes, n_nodes), check_invariants=True).coalesce()
