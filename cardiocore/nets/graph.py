"""Graph-convolution helpers shared by the mesh networks (CardioGen's VAE, CardioReconstruct's
mesh decoder): PyTorch Geometric's ``ChebConv`` applied to batched node features with one sparse
Laplacian product per hop."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

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


def chebyshev_conv_node_first(
    conv: ChebConv,
    x: torch.Tensor,
    laplacian: torch.Tensor,
    node_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`chebyshev_conv` on node-first features (N, B, C_in) -> (N, B, C_out), for networks
    that keep that layout from layer to layer.

    ``node_map``: a linear map over nodes, node-first (n, B, C) -> (N, B, C) for any C (e.g. a mesh
    up-sampling), to apply to ``x`` before the conv. It commutes with the channel projections, so
    on the narrow-output side it runs on the K projected terms at the coarse level (K x C_out
    channels) instead of the C_in inputs: a decoder's last conv, 16 -> 3 channels, projects 4x fewer
    nodes."""
    if conv.in_channels <= conv.out_channels:
        out = _chebyshev_on_inputs(conv.lins, x if node_map is None else node_map(x), laplacian)
    else:
        out = _chebyshev_on_outputs(conv.lins, x, laplacian, node_map)
    return out + conv.bias if conv.bias is not None else out


def sparse_node_product(
    matrix: torch.Tensor, x: torch.Tensor, previous: torch.Tensor | None = None, reuse_previous: bool = False
) -> torch.Tensor:
    """``matrix @ x`` for node-first (n, B, C) features and a sparse (N, n) ``matrix``, as one
    sparse product over the B x C columns in float32 -> (N, B, C) float32; with ``previous``
    (N, B, C): ``2 matrix @ x - previous`` in one fused sparse ``addmm`` (a Chebyshev hop).

    ``reuse_previous``: write the hop into ``previous`` (float32, contiguous) instead of a new
    tensor, when gradients are off and ``matrix`` is CSR (the CPU layout of
    :func:`sparse_for_device`, where this was measured); the caller must not need ``previous``
    afterwards."""
    n, batch, channels = x.shape
    flat = x.reshape(n, batch * channels).float()
    # Autocast would run the sparse product in the low-precision dtype, which neither CUDA's sparse
    # addmm nor MKL's CSR product implements for bfloat16 (and which would round the weights anyway).
    with torch.autocast(device_type=x.device.type, enabled=False):
        if previous is None:
            return torch.sparse.mm(matrix, flat).view(-1, batch, channels)
        in_place = (reuse_previous and not torch.is_grad_enabled() and matrix.layout == torch.sparse_csr
                    and previous.dtype == torch.float32 and previous.is_contiguous())
        previous = previous.reshape(-1, batch * channels).float()
        if in_place:
            return previous.addmm_(matrix, flat, beta=-1.0, alpha=2.0).view(-1, batch, channels)
        return torch.sparse.addmm(previous, matrix, flat, beta=-1.0, alpha=2.0).view(-1, batch, channels)


def _chebyshev_on_inputs(lins: nn.ModuleList, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """``sum_k T_k(L) x W_k`` with the forward recurrence on the (N, B, C_in) inputs; each term's
    projection is added to the output in place by one fused ``addmm_`` (the product's backward
    needs its operands, not the running sum, so autograd allows it)."""
    n, batch, channels = x.shape
    out = x.reshape(n * batch, channels) @ lins[0].weight.t()
    weights = [lin.weight.t().to(out.dtype) for lin in lins[1:]]  # (C_in, C_out) each, autocast's dtype
    if weights:
        previous, term = x, sparse_node_product(laplacian, x, None)
        out.addmm_(term.reshape(n * batch, channels).to(out.dtype), weights[0])
        for k, weight in enumerate(weights[1:]):
            # previous is the caller's x in the first of these hops: never overwritten
            previous, term = term, sparse_node_product(laplacian, term, previous, reuse_previous=k > 0)
            out.addmm_(term.reshape(n * batch, channels).to(out.dtype), weight)
    return out.view(n, batch, -1)


def _chebyshev_on_outputs(
    lins: nn.ModuleList,
    x: torch.Tensor,
    laplacian: torch.Tensor,
    node_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``sum_k T_k(L) M x W_k`` (``M`` = ``node_map``, identity when None) by Clenshaw's
    recurrence on the (N, B, C_out) projections ``y_k = M (x W_k)`` (all K in one product with
    the stacked weights, and one ``M``): ``b_k = y_k + 2 L b_{k+1} - b_{k+2}`` from k = K - 1 down
    to 1, then ``y_0 + L b_1 - b_2``."""
    n, batch, channels = x.shape
    stacked = torch.stack([lin.weight.t() for lin in lins])  # (K, C_in, C_out)
    projected = torch.matmul(x.reshape(1, n * batch, channels), stacked).view(len(lins), n, batch, -1)
    projected = [y if node_map is None else node_map(y) for y in projected.unbind(0)]
    if len(projected) == 1:
        return projected[0]
    b1, b2 = projected[-1].float(), None
    for y in reversed(projected[1:-1]):
        step = (2 * sparse_node_product(laplacian, b1, None) if b2 is None
                else sparse_node_product(laplacian, b1, b2, reuse_previous=True))  # b2: this function's own
        b1, b2 = step.add_(y), b1  # in place on fresh tensors (their backward needs no output)
    out = sparse_node_product(laplacian, b1, None).add_(projected[0])
    return (out if b2 is None else out.sub_(b2)).to(x.dtype)


def scaled_laplacian(conv: ChebConv, edge_index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """The conv's rescaled graph Laplacian ``2 L / lambda_max - I`` (as PyG computes it for this
    conv) as a sparse COO (N, N) float32 matrix, row = receiving node."""
    index, weight = conv.__norm__(edge_index, n_nodes, None, conv.normalization, None, dtype=torch.float32)
    return torch.sparse_coo_tensor(index.flip(0), weight, (n_nodes, n_nodes), check_invariants=True).coalesce()


def sparse_for_device(matrix: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A sparse COO operator moved to ``device`` in the layout its products run fastest in there:
    CSR on a CPU (decoding 1,000 CardioGen meshes on one thread: 0.25 s against 0.29 s with COO),
    COO elsewhere (the layout the CUDA benchmarks were measured with). Gradients flow to the dense
    operand in both."""
    matrix = matrix.to(device)
    if matrix.device.type != "cpu":
        return matrix
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return matrix.to_sparse_csr()


class DerivedOperatorCache(dict):
    """Sparse operators a module derives from its buffers, keyed by what they were built for.

    Deep copies (e.g. a model's EMA copy) and pickles start empty and rebuild on use: the derived
    operators are not state, and CSR tensors cannot be deep-copied."""

    def __deepcopy__(self, memo: dict[int, Any]) -> DerivedOperatorCache:
        return type(self)()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(self), ())
