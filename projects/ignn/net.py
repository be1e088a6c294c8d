"""Implicit graph neural networks (IGNN) and a finite-depth GCN baseline of the same width.

Layout: node states are row vectors, as in PyG. An implicit layer's states ``Z`` of shape
``(N, m)`` are the fixed point of ``Z = phi(A Z W^T + Omega(U))``, the paper's
``X = phi(W X A + B U)`` transposed, where ``A`` is the normalised adjacency (a sparse
``(N, N)`` matrix), ``U`` the layer's input node features and ``Omega`` a linear map. The DEQ sees
the whole graph (or the whole batch of graphs) as *one* sample: its state has shape ``(1, N, m)``,
so the solver stops on the residual of the whole node-state matrix and the info dict's entries
have batch size 1. (Treating nodes as samples would let the solver stop, or pick a best iterate,
per node, which is wrong for a system whose nodes are coupled.)

Well-posedness (the fixed point exists, is unique and fixed-point iteration finds it) is kept in
one of two ways:

* the paper's projection: after every optimiser step each row of ``W`` is projected onto the
  L1 ball of radius ``kappa / lambda_pf(A)``, so ``||W||_inf <= kappa / lambda_pf(A) < 1 /
  lambda_pf(A)``, where ``lambda_pf`` is the Perron-Frobenius eigenvalue of ``|A|``
  (:func:`project_inf_norm_`, :func:`perron_frobenius`; ``kappa`` set, ``norm_type: none``);
* the zoo's recipe: spectral normalisation of ``W`` with a clipped scale through
  :func:`torchdeq.norm.apply_norm` (``kappa: null``, ``norm=spectral_norm norm.norm_clip=true``),
  which bounds ``||W||_2`` and so makes the map a contraction when ``||A||_2 <= 1``, as for the
  default symmetric normalisation.

References:
    Gu, Chang, Zhu, Sojoudi, El Ghaoui. Implicit Graph Neural Networks. NeurIPS 2020,
    arXiv:2009.06211.
    Kipf, Welling. Semi-Supervised Classification with Graph Convolutional Networks. ICLR 2017,
    arXiv:1609.02907.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import spmm, to_torch_csr_tensor

from deqzoo.loss import jac_loss_at
from torchdeq import apply_norm, get_deq
from torchdeq.dropout import VariationalDropout
from torchdeq.utils.checks import OptionError, check_choice
from torchdeq.utils.config import get_attr

__all__ = [
    "GCN",
    "IGNN",
    "ImplicitGraphLayer",
    "normalized_adjacency",
    "perron_frobenius",
    "project_inf_norm_",
]

NORMALIZATIONS = ("sym", "none")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}
POOLS = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}


def normalized_adjacency(
    edge_index: Tensor,
    num_nodes: int,
    edge_weight: Tensor | None = None,
    normalization: Literal["sym", "none"] = "sym",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The propagation matrix ``A`` of a graph, as a sparse CSR tensor and its absolute value.

    ``A[i, j]`` weighs the message from node ``j`` to node ``i`` (PyG's ``source_to_target``
    flow), so ``A @ Z`` aggregates at each node the states of its in-neighbours, as ``GCNConv``
    does.

    Args:
        edge_index (Tensor): Edges ``(2, E)``, source in row 0, target in row 1.
        num_nodes (int): Number of nodes ``N``.
        edge_weight (Tensor, optional): Weights ``(E,)``; default all ones.
        normalization (str, optional): ``'sym'``: ``D^-1/2 (A + I) D^-1/2`` (PyG's ``gcn_norm``,
            spectral radius 1); ``'none'``: the raw (weighted) adjacency. Default ``'sym'``.
        dtype (torch.dtype, optional): Value type. Default float32.

    Returns:
        tuple[Tensor, Tensor]: ``A`` and ``|A|``, sparse CSR ``(N, N)``.

    Raises:
        OptionError: If ``normalization`` is unknown.

    Example:
        >>> edge_index = torch.tensor([[0, 1], [1, 0]])
        >>> adj, _ = normalized_adjacency(edge_index, 2)
        >>> adj.to_dense()
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    if normalization == "sym":
        edge_index, edge_weight = gcn_norm(edge_index, edge_weight, num_nodes, dtype=dtype)
    elif edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device)
    edge_weight = edge_weight.to(dtype)
    # Row = target, column = source.
    target_source = edge_index.flip(0)
    adj = to_torch_csr_tensor(target_source, edge_weight, size=num_nodes)
    return adj, to_torch_csr_tensor(target_source, edge_weight.abs(), size=num_nodes)


@torch.no_grad()
def perron_frobenius(abs_adj: Tensor, max_iter: int = 1000, tol: float = 1e-5) -> float:
    """An upper bound of the Perron-Frobenius eigenvalue (spectral radius) of ``|A|``.

    Power iteration on ``M = |A| + I`` (the shift makes ``M`` aperiodic, so the iteration
    converges also on bipartite graphs such as chains). For any positive vector ``x`` the
    Collatz-Wielandt bound ``rho(M) <= max_i (M x)_i / x_i`` holds, also for disconnected graphs,
    so every iterate gives a safe upper bound; it decreases towards ``rho(M) = lambda_pf + 1``.
    The iteration stops when an update lowers the bound by less than ``tol`` (relative).

    Args:
        abs_adj (Tensor): ``|A|``, a sparse ``(N, N)`` tensor with entries >= 0.
        max_iter (int, optional): Most power iterations. Default 1000.
        tol (float, optional): Relative decrease of the bound that stops the iteration.
            Default 1e-5.

    Returns:
        float: ``lambda`` with ``lambda_pf(|A|) <= lambda`` (up to rounding).

    Example:
        >>> abs_adj = torch.tensor([[0.0, 2.0], [2.0, 0.0]]).to_sparse_csr()
        >>> round(perron_frobenius(abs_adj), 4)
        2.0

    References:
        Varga. Matrix Iterative Analysis. Springer, 2000 (Collatz-Wielandt bounds, chapter 8).
    """
    x = torch.ones(abs_adj.size(0), 1, dtype=abs_adj.dtype, device=abs_adj.device)
    upper = float("inf")
    for _ in range(max_iter):
        y = spmm(abs_adj, x) + x
        bound = float((y / x).max())
        x = y / bound
        done = upper - bound <= tol * bound
        upper = min(upper, bound)
        if done:
            break
    return upper - 1.0


@torch.no_grad()
def project_inf_norm_(weight: Tensor, radius: float) -> Tensor:
    """Projects each row of ``weight`` onto the L1 ball of ``radius``, in place.

    Afterwards ``||W||_inf = max_i sum_j |W_ij| <= radius``, and every row already inside the
    ball is unchanged. The projection is the Euclidean one (sort-based, O(m log m) per row).

    Args:
        weight (Tensor): A matrix ``(m_out, m_in)``, modified in place.
        radius (float): The bound, > 0.

    Returns:
        Tensor: ``weight``.

    Raises:
        ValueError: If ``radius`` is not positive.

    Example:
        >>> w = torch.tensor([[3.0, -1.0], [0.2, 0.1]])
        >>> project_inf_norm_(w, 1.0).abs().sum(dim=1)
        tensor([1.0000, 0.3000])

    References:
        Duchi, Shalev-Shwartz, Singer, Chandra. Efficient Projections onto the l1-Ball for
        Learning in High Dimensions. ICML 2008.
        Gu et al. Implicit Graph Neural Networks. NeurIPS 2020, arXiv:2009.06211 (section 4.1).
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    magnitude = weight.abs()
    outside = magnitude.sum(dim=1) > radius
    if not bool(outside.any()):
        return weight
    rows = magnitude[outside]
    sorted_rows = rows.sort(dim=1, descending=True).values
    excess = sorted_rows.cumsum(dim=1) - radius
    ranks = torch.arange(1, rows.size(1) + 1, dtype=rows.dtype, device=rows.device)
    # The support of the projection: the largest k with u_k > (sum_{j<=k} u_j - radius) / k.
    support = (sorted_rows * ranks > excess).sum(dim=1, keepdim=True)
    threshold = excess.gather(1, support - 1) / support.to(rows.dtype)
    weight[outside] = weight[outside].sign() * (rows - threshold).clamp_min(0)
    return weight


class ImplicitGraphLayer(nn.Module):
    """One implicit graph layer: ``Z = phi(A Z W^T + Omega(U))`` solved by a DEQ.

    Args:
        in_channels (int): Input features per node.
        channels (int): State size ``m``.
        activation (str, optional): ``'relu'`` or ``'tanh'`` (both 1-Lipschitz and monotone,
            as the well-posedness condition needs). Default ``'relu'``.
        inject_adj (bool, optional): Propagate the injection too, ``Omega(U) = A U B^T`` (the
            paper's ``B U A``), instead of ``U B^T``. Default False.
        bias (bool, optional): Give ``Omega`` a bias. Default True.
        dropout (float, optional): Variational dropout rate on the states inside the map (one
            mask per batch, fixed across solver steps). Default 0.

    Example:
        >>> layer = ImplicitGraphLayer(3, 4)
        >>> adj, _ = normalized_adjacency(torch.tensor([[0, 1], [1, 0]]), 2)
        >>> states, info = layer(torch.randn(2, 3), adj, get_deq(f_max_iter=50))
        >>> states[-1].shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        activation: Literal["relu", "tanh"] = "relu",
        inject_adj: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.phi = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        self.drop = VariationalDropout(dropout) if dropout > 0 else nn.Identity()
        self.inject_adj = inject_adj
        self.inject = nn.Linear(in_channels, channels, bias=bias)
        # W: the only weight inside the fixed-point map, hence the only one normalised.
        self.cell = nn.Linear(channels, channels, bias=False)

    def forward(
        self,
        u: Tensor,
        adj: Tensor,
        deq: nn.Module,
        z_init: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[list[Tensor], Mapping[str, Tensor]]:
        """Solves for the node states.

        Args:
            u (Tensor): Input node features ``(N, in_channels)``.
            adj (Tensor): The propagation matrix ``(N, N)`` (sparse).
            deq (nn.Module): A DEQ from :func:`torchdeq.get_deq`.
            z_init (Tensor, optional): Initial states ``(N, m)``; default zeros.
            sradius_mode (bool, optional): Estimate the spectral radius of the Jacobian at the
                fixed point (evaluation only). Default False.
            jac_loss (bool, optional): Add the Jacobian regulariser at the fixed point to the
                info dict as ``'jac_loss'``. Default False.

        Returns:
            tuple[list[Tensor], Mapping[str, Tensor]]: The DEQ's states, each ``(N, m)`` (in
            training one per sampled state, else the fixed point), and its info dict.
        """
        injection = self.inject(u)
        if self.inject_adj:
            injection = spmm(adj, injection)

        def f(z: Tensor) -> Tensor:
            return self.drop(self.phi(spmm(adj, self.cell(z[0])) + injection).unsqueeze(0))

        z0 = injection.new_zeros(1, *injection.shape) if z_init is None else z_init[None]
        states, info = deq(f, z0, sradius_mode=sradius_mode)
        if jac_loss:
            info = {**info, "jac_loss": jac_loss_at(f, states[-1])}
        return [z[0] for z in states], info


def _pool(h: Tensor, batch: Tensor | None, pool: str | None) -> Tensor:
    if pool is None:
        return h
    if batch is None:
        batch = h.new_zeros(h.size(0), dtype=torch.long)
    return POOLS[pool](h, batch)


def _merge_infos(infos: Sequence[Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
    """One info dict for several DEQ layers: entries concatenated along the batch dimension."""
    if len(infos) == 1:
        return infos[0]
    merged = {}
    for key, value in infos[0].items():
        values = [info.get(key) for info in infos]
        # Traces of layers that ran different numbers of steps cannot be concatenated.
        if all(torch.is_tensor(v) and v.shape[1:] == value.shape[1:] for v in values):
            merged[key] = torch.cat(values)
    return merged


class IGNN(nn.Module):
    """An implicit graph neural network: implicit layers, then a linear readout.

    Each layer's fixed point feeds the next layer (``num_layers`` > 1 stacks them, as for
    PPI); the readout maps node states (or pooled graph states) to logits. Ordinary dropout
    (``feature_dropout``) acts on the input features and before the readout; inside the
    fixed-point map only variational dropout (``dropout``) may act, whose mask is fixed for the
    solve.

    The propagation matrix and its ``lambda_pf`` are computed once per graph (cached while the
    same ``edge_index`` tensor comes back, as for full-batch training) and, in training, the
    largest ``lambda_pf`` seen is kept in the buffer ``lambda_pf`` for :meth:`project_`.

    Args:
        in_channels (int): Node features.
        hidden_channels (int): State size ``m`` of every implicit layer.
        out_channels (int): Classes (or labels).
        deq (Mapping, optional): DEQ options for :func:`torchdeq.get_deq` (the ``deq`` node).
        norm (Mapping, optional): Normalisation options for :func:`torchdeq.norm.apply_norm`
            (the ``norm`` node), applied to ``W`` only. Default None: no normalisation.
        num_layers (int, optional): Stacked implicit layers. Default 1.
        kappa (float, optional): Well-posedness margin of the projection, in (0, 1); None turns
            the projection off (e.g. when spectral norm keeps the layer well posed). Default 0.95.
        activation (str, optional): ``'relu'`` or ``'tanh'``. Default ``'relu'``.
        normalization (str, optional): Adjacency normalisation, ``'sym'`` or ``'none'``.
            Default ``'sym'``.
        inject_adj (bool, optional): Propagate the injection, ``Omega(U) = A U B^T``.
            Default False.
        dropout (float, optional): Variational dropout rate on the states inside the map (the
            framework's ``dropout`` group). Default 0.
        feature_dropout (float, optional): Dropout rate on the input features and before the
            readout. Default 0.
        pool (str, optional): ``'mean'``, ``'sum'`` or ``'max'`` for graph-level outputs; None for
            node-level outputs. Default None.
        bias (bool, optional): Give ``Omega`` and the readout biases. Without them (and with
            ReLU) the net is positively homogeneous in the input features, so a class signal
            that decays geometrically along a long chain is still classified by its direction;
            a bias would drown it. Default True.
        warm_start (bool, optional): Start each solve from the last fixed point computed on the
            same graph (full-batch training), which saves most solver steps once training
            settles. Default False.

    Raises:
        OptionError: If an option is invalid, or ``kappa`` is combined with a normalisation
            (the projection acts on the raw ``W``).

    Example:
        >>> net = IGNN(3, 8, 2, deq={"f_max_iter": 60, "f_tol": 1e-6})
        >>> x, edge_index = torch.randn(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]])
        >>> logits, info = net(x, edge_index)
        >>> logits[-1].shape, info["nstep"].shape
        (torch.Size([4, 2]), torch.Size([1]))
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        deq: Mapping[str, Any] | None = None,
        norm: Mapping[str, Any] | None = None,
        num_layers: int = 1,
        kappa: float | None = 0.95,
        activation: Literal["relu", "tanh"] = "relu",
        normalization: Literal["sym", "none"] = "sym",
        inject_adj: bool = False,
        dropout: float = 0.0,
        feature_dropout: float = 0.0,
        pool: Literal["mean", "sum", "max"] | None = None,
        bias: bool = True,
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise OptionError(f"num_layers must be >= 1, got {num_layers!r}")
        if kappa is not None and not 0 < kappa < 1:
            raise OptionError(f"kappa must be in (0, 1) or null, got {kappa!r}")
        norm_type = get_attr(norm, "norm_type", "none")
        if kappa is not None and norm_type != "none":
            raise OptionError(
                f"the well-posedness projection (kappa={kappa}) acts on the raw W and cannot be "
                f"combined with norm_type={norm_type!r}; choose norm=none (the paper) or "
                f"model.net.kappa=null (e.g. spectral_norm with norm.norm_clip=true, the zoo)"
            )
        check_choice("normalization", normalization, NORMALIZATIONS)
        if pool is not None:
            check_choice("pool", pool, POOLS)
        self.kappa = kappa
        self.normalization = normalization
        self.pool = pool
        self.feature_dropout = feature_dropout
        self.warm_start = warm_start
        self.deq = get_deq(deq)
        self.layers = nn.ModuleList(
            ImplicitGraphLayer(
                in_channels if i == 0 else hidden_channels,
                hidden_channels,
                activation,
                inject_adj,
                bias,
                dropout,
            )
            for i in range(num_layers)
        )
        for layer in self.layers:
            apply_norm(layer.cell, "none", args=norm)
        self.readout = nn.Linear(hidden_channels, out_channels, bias=bias)
        # 0 = no graph seen yet; persistent, so that a resumed run keeps projecting.
        self.register_buffer("lambda_pf", torch.zeros(()))
        self._graph_cache: tuple | None = None
        # The last fixed point of every layer on the cached graph (warm_start).
        self._fixed_points: list[Tensor | None] = [None] * num_layers

    def graph(
        self, edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, float]:
        """The propagation matrix of a graph and its ``lambda_pf``, cached for the last graph."""
        cache = self._graph_cache
        if (
            cache is not None
            and cache[0] is edge_index
            and cache[1] is edge_weight
            and cache[2:4] == (num_nodes, dtype)
        ):
            return cache[4], cache[5]
        adj, abs_adj = normalized_adjacency(
            edge_index, num_nodes, edge_weight, self.normalization, dtype
        )
        lambda_pf = perron_frobenius(abs_adj)
        # Holding the key tensors keeps their identity from being reused by new tensors.
        self._graph_cache = (edge_index, edge_weight, num_nodes, dtype, adj, lambda_pf)
        self._fixed_points = [None] * len(self.layers)
        return adj, lambda_pf

    def project_(self) -> None:
        """Projects every ``W`` so that ``||W||_inf <= kappa / lambda_pf`` (no-op if kappa is None).

        Call it after every optimiser step; :class:`projects.ignn.module.IGNNModule` does.
        """
        if self.kappa is None or float(self.lambda_pf) <= 0:
            return
        radius = self.kappa / float(self.lambda_pf)
        for layer in self.layers:
            project_inf_norm_(layer.cell.weight, radius)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_weight: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[list[Tensor], Mapping[str, Tensor]]:
        """Computes logits.

        Args:
            x (Tensor): Node features ``(N, in_channels)``.
            edge_index (Tensor): Edges ``(2, E)``.
            batch (Tensor, optional): Graph index of every node ``(N,)``, for pooling.
            edge_weight (Tensor, optional): Edge weights ``(E,)``.
            sradius_mode (bool, optional): Ask the DEQs for the spectral radius. Default False.
            jac_loss (bool, optional): Put the Jacobian regulariser (the mean over the implicit
                layers) into the info dict as ``'jac_loss'``. Default False.

        Returns:
            tuple[list[Tensor], Mapping[str, Tensor]]: Logits ``(N, out)`` (or ``(G, out)``
            when pooling), one per sampled state of the last layer; the DEQ info (for several
            layers, the layers' entries concatenated: batch size ``num_layers``).
        """
        adj, lambda_pf = self.graph(edge_index, x.size(0), edge_weight, x.dtype)
        if self.training and lambda_pf > float(self.lambda_pf):
            self.lambda_pf.fill_(lambda_pf)
            # A graph with a larger lambda_pf than any before: restore well-posedness now.
            self.project_()
        h = F.dropout(x, self.feature_dropout, self.training)
        infos = []
        for i, layer in enumerate(self.layers):
            z_init = self._fixed_points[i] if self.warm_start else None
            states, info = layer(h, adj, self.deq, z_init, sradius_mode, jac_loss)
            if self.warm_start:
                self._fixed_points[i] = states[-1].detach()
            infos.append(info)
            h = states[-1]
        logits = [
            self.readout(_pool(F.dropout(z, self.feature_dropout, self.training), batch, self.pool))
            for z in states
        ]
        merged = _merge_infos([{k: v for k, v in i.items() if k != "jac_loss"} for i in infos])
        if jac_loss:
            merged = {**merged, "jac_loss": torch.stack([i["jac_loss"] for i in infos]).mean()}
        return logits, merged


class GCN(nn.Module):
    """A finite-depth GCN baseline: ``num_layers`` graph convolutions, ReLU and dropout between.

    The last convolution outputs the logits (Kipf and Welling's 2-layer GCN for
    ``num_layers=2``), so a node sees ``num_layers`` hops. It uses the same ``'sym'``
    normalisation as :class:`IGNN` and the same output format: ``([logits], None)``.

    Args:
        in_channels (int): Node features.
        hidden_channels (int): Width of the hidden layers.
        out_channels (int): Classes (or labels).
        num_layers (int, optional): Graph convolutions. Default 2.
        dropout (float, optional): Dropout rate before every convolution. Default 0.5.
        pool (str, optional): ``'mean'``, ``'sum'`` or ``'max'`` pooling of the node logits for
            graph-level outputs; None for node-level outputs. Default None.

    Example:
        >>> net = GCN(3, 8, 2)
        >>> logits, info = net(torch.randn(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]]))
        >>> logits[0].shape, info
        (torch.Size([4, 2]), None)
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        dropout: float = 0.5,
        pool: Literal["mean", "sum", "max"] | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise OptionError(f"num_layers must be >= 1, got {num_layers!r}")
        if pool is not None:
            check_choice("pool", pool, POOLS)
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = dropout
        self.pool = pool

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_weight: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[list[Tensor], None]:
        """Computes logits; the arguments are those of :meth:`IGNN.forward`.

        Raises:
            ValueError: For ``jac_loss=True``: a finite-depth net has no equilibrium.
        """
        if jac_loss:
            raise ValueError(
                "GCN has no equilibrium whose Jacobian could be regularised; "
                "set loss.jac_loss_weight=0 loss.jac_loss_freq=0"
            )
        h = x
        for i, conv in enumerate(self.convs):
            if i > 0:
                h = h.relu()
            h = conv(F.dropout(h, self.dropout, self.training), edge_index, edge_weight)
        return [_pool(h, batch, self.pool)], None
