"""The DEQ transformer language model and its explicit baselines, as plain nn.Modules.

One transformer block ``f`` (causal multi-head self-attention over [memory; segment] with
rotary relative positions, then a 2-layer FFN, post-LayerNorm) is applied to its own output
until the segment's hidden states stop changing:

    u = z + x,    h = LN(u + Attn(u | [mem; u])),    f(z; x, mem) = LN(h + FFN(h)),

where ``x`` is a linear map of the scaled word embedding (the input injection) and ``mem``
holds the previous segment's equilibrium inputs ``z* + x``, detached (Transformer-XL's
recurrence). The fixed point is solved by ``torchdeq.get_deq(deq)``, so every solver, gradient
(IFT, phantom, ``f_max_iter 0`` + phantom steps) and norm works.

Why rotary positions (Su et al. 2021) rather than Transformer-XL's relative encoding: the
positional term enters only through the rotation of queries and keys, so the memory's rotated
keys and values are computed once per segment and reused by every solver iteration, there is
no (L, M + L) positional projection or relative shift per iteration, a longer memory at
evaluation (``eval_mem_len``) needs no table, and attention depends on positions only
through their differences, as in Transformer-XL.

Post-LayerNorm keeps every iterate on the same bounded set (each token's state has zero mean
and unit variance before the gain), so a fixed-point iteration cannot blow up, and weight norm
(``apply_norm``) on the block's linears keeps its Lipschitz constant under control.

Modes of :class:`TransformerLM` (same width, same code):

* ``deq``: the equilibrium of the block;
* ``tied``: the block applied ``n_layer`` times from ``z = 0`` with the injection at every
  step, backprop through all of them (the DEQ with a fixed unroll and no solver);
* ``untied``: ``n_layer`` different blocks, the injection only at the input, each layer with
  the memory of its own input (a Transformer-XL stack).

References:
    Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019 (arXiv 1909.01377).
    Dai et al., "Transformer-XL", ACL 2019 (arXiv 1901.02860).
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021
    (arXiv 2104.09864).
    Baevski, Auli, "Adaptive Input Representations for Neural Language Modeling", ICLR 2019
    (arXiv 1809.10853); Grave et al., "Efficient softmax approximation for GPUs", ICML 2017
    (arXiv 1609.04309).
    Gal, Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks", NeurIPS 2016 (arXiv 1512.05287).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchdeq import apply_norm, get_deq, mem_gc
from torchdeq.dropout import VariationalDropout, VariationalDropout1d
from torchdeq.loss import jac_reg

__all__ = [
    "AdaptiveIO",
    "DEQBlock",
    "LMOutput",
    "MemoryAttention",
    "TiedIO",
    "TransformerLM",
    "count_parameters",
    "rotary_tables",
]

MODES = ("deq", "tied", "untied")


def count_parameters(module: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    seen = {id(p): p for p in module.parameters() if p.requires_grad}
    return sum(p.numel() for p in seen.values())


def rotary_tables(
    positions: Tensor, head_dim: int, base: float = 10000.0, dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """cos and sin tables (P, head_dim) of rotary embeddings at integer ``positions``."""
    inv = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[:, None] * inv[None]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class MemoryAttention(nn.Module):
    """Causal multi-head self-attention of a segment over [memory; segment], rotary positions.

    Memory positions are ``0 .. M-1`` and segment positions ``M .. M+L-1``; query ``i`` sees
    every memory entry and the segment entries ``j <= i``. The memory's keys and values are
    computed once per segment by :meth:`memory_kv` and reused at every solver iteration.
    Attention dropout is variational: one mask of the attention weights per batch, held
    across solver iterations.

    Args:
        d_model (int): Width of the states.
        n_head (int): Number of heads.
        d_head (int): Width of each head (even).
        attn_dropout (float): Variational dropout on the attention weights.
    """

    def __init__(self, d_model: int, n_head: int, d_head: int, attn_dropout: float = 0.0):
        super().__init__()
        if d_head % 2:
            raise ValueError(f"d_head must be even for rotary positions, got {d_head}")
        self.n_head, self.d_head = n_head, d_head
        self.qkv = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.out = nn.Linear(n_head * d_head, d_model, bias=False)
        self.attn_dropout = VariationalDropout(attn_dropout) if attn_dropout > 0 else None

    def _heads(self, t: Tensor) -> Tensor:  # (B, P, H * Dh) -> (B, H, P, Dh)
        B, P, _ = t.shape
        return t.view(B, P, self.n_head, self.d_head).transpose(1, 2)

    def memory_kv(self, mem: Tensor | None, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Rotated keys and values (B, H, M, Dh) of the memory ``mem`` (B, M, D)."""
        if mem is None or mem.shape[1] == 0:
            return None, None
        M = mem.shape[1]
        _, k, v = self.qkv(mem).chunk(3, dim=-1)
        return _rotate(self._heads(k), cos[:M], sin[:M]), self._heads(v)

    def forward(
        self, u: Tensor, mem_k: Tensor | None, mem_v: Tensor | None, cos: Tensor, sin: Tensor
    ) -> Tensor:
        B, L, _ = u.shape
        M = 0 if mem_k is None else mem_k.shape[2]
        q, k, v = (self._heads(t) for t in self.qkv(u).chunk(3, dim=-1))
        q, k = _rotate(q, cos[M:], sin[M:]), _rotate(k, cos[M:], sin[M:])
        if M:
            k, v = torch.cat([mem_k, k], dim=2), torch.cat([mem_v, v], dim=2)
        allowed = torch.ones(L, M + L, dtype=torch.bool, device=u.device).tril(diagonal=M)
        if self.attn_dropout is None or not self.training:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            out = self.attn_dropout(weights) @ v
        return self.out(out.transpose(1, 2).reshape(B, L, self.n_head * self.d_head))


class DEQBlock(nn.Module):
    """The transformer block ``f(z; x, mem) = LN(h + FFN(h))``, ``h = LN(u + Attn(u))``,
    ``u = z + x``.

    Variational dropout (one channel mask per sequence, held across solver iterations) on the
    attention output, the FFN's hidden layer and its output.

    Args:
        d_model, n_head, d_head, d_inner (int): Widths.
        dropout (float): Variational dropout rate inside the block.
        attn_dropout (float): Variational dropout on attention weights.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        d_head: int,
        d_inner: int,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        self.attn = MemoryAttention(d_model, n_head, d_head, attn_dropout)
        self.ln_attn = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, d_inner)
        self.ff_out = nn.Linear(d_inner, d_model)
        self.ln_ff = nn.LayerNorm(d_model)
        self.drop_attn = VariationalDropout1d(dropout)
        self.drop_inner = VariationalDropout1d(dropout)
        self.drop_ff = VariationalDropout1d(dropout)

    def forward(self, z, x, mem_k, mem_v, cos, sin) -> Tensor:
        u = z if x is None else z + x
        h = self.ln_attn(u + self.drop_attn(self.attn(u, mem_k, mem_v, cos, sin)))
        inner = self.drop_inner(F.relu(self.ff_in(h)))
        return self.ln_ff(h + self.drop_ff(self.ff_out(inner)))


class TiedIO(nn.Module):
    """Word embedding tied with a full softmax output layer.

    Embeddings are drawn with std ``d_model ** -0.5`` and scaled by ``sqrt(d_model)`` at the
    input, so inputs have unit scale and the initial logits of unit-scale states too.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.scale = math.sqrt(d_model)

    def embed(self, tokens: Tensor) -> Tensor:
        return self.embedding(tokens) * self.scale

    def log_probs(self, h: Tensor) -> Tensor:
        return F.log_softmax(F.linear(h, self.embedding.weight, self.bias), dim=-1)

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        logits = F.linear(h, self.embedding.weight, self.bias)
        return F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="none").view(
            target.shape
        )


class AdaptiveIO(nn.Module):
    """Adaptive input embeddings that read their tables from an adaptive softmax.

    The output layer is ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (frequent words in a full
    head, rarer ones in clusters of width ``d_model / div_value ** i``). The input of a head
    word is its row of the head's weight; the input of a word of cluster ``i`` is its row of
    the cluster's output table, mapped back to ``d_model`` by the cluster's (transposed)
    projection: every input table is tied with the output layer, as in Baevski & Auli.

    Args:
        vocab_size (int): Number of words (ids sorted by decreasing frequency).
        d_model (int): Width.
        cutoffs (Sequence[int]): Cluster boundaries, increasing, below ``vocab_size``.
        div_value (float): Width divisor per cluster.
    """

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div_value: float):
        super().__init__()
        cutoffs = list(cutoffs)
        if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[-1] >= vocab_size:
            raise ValueError(
                f"cutoffs must be increasing, distinct and below vocab_size {vocab_size}, "
                f"got {cutoffs}"
            )
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(
            d_model, vocab_size, cutoffs, div_value=div_value, head_bias=True
        )
        self.bounds = [0, *cutoffs, vocab_size]
        self.scale = math.sqrt(d_model)

    def embed(self, tokens: Tensor) -> Tensor:
        sm = self.softmax
        out = tokens.new_zeros(*tokens.shape, sm.in_features, dtype=sm.head.weight.dtype)
        for i in range(len(self.bounds) - 1):
            low, high = self.bounds[i], self.bounds[i + 1]
            sel = (tokens >= low) & (tokens < high)
            if not sel.any():
                continue
            ids = tokens[sel] - low
            if i == 0:
                vec = F.embedding(ids, sm.head.weight)
            else:
                proj, table = sm.tail[i - 1][0], sm.tail[i - 1][1]
                vec = F.embedding(ids, table.weight) @ proj.weight
            out[sel] = vec.to(out.dtype)
        return out * self.scale

    def log_probs(self, h: Tensor) -> Tensor:
        return self.softmax.log_prob(h.flatten(0, -2)).view(*h.shape[:-1], -1)

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        out = self.softmax(h.flatten(0, -2), target.flatten()).output
        return (-out).view(target.shape)


@dataclass
class LMOutput:
    """What :class:`TransformerLM` returns besides the DEQ info.

    Attributes:
        states (list[Tensor]): Hidden states (B, L, D) to score: one per sampled DEQ state in
            training (several with ``n_states > 1``), the last one at evaluation.
        mems (list[Tensor]): The memory for the next segment (detached), one tensor per layer
            that keeps one (one for ``deq``/``tied``, ``n_layer`` for ``untied``).
        z_star (Tensor): The final state, detached (warm starts).
    """

    states: list[Tensor]
    mems: list[Tensor]
    z_star: Tensor


class TransformerLM(nn.Module):
    """A word-level language model: DEQ transformer, or a tied / untied explicit stack.

    Args:
        vocab_size (int): Number of words.
        d_model (int): Width. Default 256.
        n_head (int): Heads. Default 4.
        d_head (int): Width of each head. Default 64.
        d_inner (int): FFN width. Default 1024.
        mode (str): ``'deq'``, ``'tied'`` or ``'untied'``. Default ``'deq'``.
        n_layer (int): Layers of the explicit modes (applications of the block). Default 4.
        mem_len (int): Memory length in training. Default 64.
        eval_mem_len (int, optional): Memory length at evaluation (default ``mem_len``).
        dropout (float): Variational dropout inside the block. Default 0.1.
        attn_dropout (float): Variational dropout on attention weights. Default 0.0.
        emb_dropout (float): Dropout on the embedding (once per segment). Default 0.1.
        out_dropout (float): Dropout on the final states before the softmax. Default 0.1.
        adaptive (bool): Adaptive input + adaptive softmax instead of a full tied softmax.
        cutoffs (Sequence[int]): Adaptive softmax cluster boundaries.
        div_value (float): Adaptive width divisor. Default 4.
        deq (Mapping, optional): Options of ``torchdeq.get_deq`` (the ``deq`` config node).
        norm (Mapping, optional): Options of ``torchdeq.apply_norm`` for the block's linears.
        mem_gc (bool): Run each training call of the block through gradient checkpointing
            (``torchdeq.mem_gc``), so phantom steps keep only their states. Default False.

    Example:
        >>> net = TransformerLM(50, d_model=16, n_head=2, d_head=8, d_inner=32, mem_len=4,
        ...                     deq=dict(f_max_iter=6))
        >>> out, info = net(torch.randint(0, 50, (2, 5)))
        >>> out.states[-1].shape, out.mems[0].shape
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 16]))
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        n_head: int = 4,
        d_head: int = 64,
        d_inner: int = 1024,
        mode: Literal["deq", "tied", "untied"] = "deq",
        n_layer: int = 4,
        mem_len: int = 64,
        eval_mem_len: int | None = None,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        emb_dropout: float = 0.1,
        out_dropout: float = 0.1,
        adaptive: bool = False,
        cutoffs: Sequence[int] = (),
        div_value: float = 4.0,
        deq: Mapping[str, Any] | None = None,
        norm: Mapping[str, Any] | None = None,
        mem_gc: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid choices: {list(MODES)}")
        if n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {n_layer}")
        if mem_len < 0 or (eval_mem_len is not None and eval_mem_len < 0):
            raise ValueError(f"memory lengths must be >= 0, got {mem_len}, {eval_mem_len}")
        if mode != "deq" and mem_gc:
            raise ValueError("mem_gc applies to the DEQ's training calls; use mode='deq'")
        self.mode, self.n_layer, self.d_model, self.d_head = mode, n_layer, d_model, d_head
        self.mem_len = mem_len
        self.eval_mem_len = mem_len if eval_mem_len is None else eval_mem_len
        self.use_mem_gc = mem_gc
        self.io = (
            AdaptiveIO(vocab_size, d_model, cutoffs, div_value)
            if adaptive
            else TiedIO(vocab_size, d_model)
        )
        self.injection = nn.Linear(d_model, d_model)
        n_blocks = n_layer if mode == "untied" else 1
        self.blocks = nn.ModuleList(
            DEQBlock(d_model, n_head, d_head, d_inner, dropout, attn_dropout)
            for _ in range(n_blocks)
        )
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.out_dropout = nn.Dropout(out_dropout)
        if norm is not None:
            apply_norm(self.blocks, args=norm)
        self.deq = get_deq(deq or {}) if mode == "deq" else None

    @property
    def vocab_size(self) -> int:
        io = self.io
        return io.embedding.num_embeddings if isinstance(io, TiedIO) else io.softmax.n_classes

    def current_mem_len(self) -> int:
        return self.mem_len if self.training else self.eval_mem_len

    # -- scoring ----------------------------------------------------------------------------

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        """Per-token negative log-likelihood (B, L) of ``target`` given the states ``h``."""
        return self.io.nll(self.out_dropout(h), target)

    def log_probs(self, h: Tensor) -> Tensor:
        """Log-probabilities (..., V) of the next word given the states ``h`` (...,  D)."""
        return self.io.log_probs(self.out_dropout(h))

    # -- the forward pass ---------------------------------------------------------------------

    def forward(
        self,
        tokens: Tensor,
        mems: Sequence[Tensor] | None = None,
        z_init: Tensor | None = None,
        solver_kwargs: Mapping[str, Any] | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[LMOutput, Mapping[str, Tensor] | None]:
        """Runs one segment.

        Args:
            tokens (Tensor): (B, L) word ids.
            mems (Sequence[Tensor], optional): The memory from the previous segment's
                :class:`LMOutput` (None or empty: no memory, e.g. at the start of a stream).
            z_init (Tensor, optional): Initial DEQ state (B, L, D) (warm start); zeros if None.
            solver_kwargs (Mapping, optional): Per-call solver options (``f_max_iter``, ...).
            sradius_mode (bool): Estimate the spectral radius at evaluation (DEQ only).
            jac_loss (bool): Put the Jacobian regulariser ``jac_reg(f(z*), z*)`` into
                ``info['jac_loss']`` (DEQ in training only).

        Returns:
            tuple[LMOutput, Mapping | None]: States, next memory, and the DEQ's info (None for
            the explicit modes).
        """
        B, L = tokens.shape
        x = self.injection(self.emb_dropout(self.io.embed(tokens)))
        mems = list(mems or [])
        expected = self.n_layer if self.mode == "untied" else 1
        if mems and len(mems) != expected:
            raise ValueError(f"mode {self.mode!r} keeps {expected} memories, got {len(mems)}")
        M = mems[0].shape[1] if mems else 0
        positions = torch.arange(M + L, device=tokens.device)
        cos, sin = rotary_tables(positions, self.d_head, dtype=x.dtype)
        if self.mode == "untied":
            return self._untied(x, mems, cos, sin), None
        block = self.blocks[0]
        mem_k, mem_v = block.attn.memory_kv(mems[0] if mems else None, cos, sin)

        def f(z: Tensor) -> Tensor:
            return block(z, x, mem_k, mem_v, cos, sin)

        z0 = torch.zeros_like(x) if z_init is None else z_init
        if self.mode == "tied":
            z = z0
            for _ in range(self.n_layer):
                z = f(z)
            return self._output([z], z + x, mems), None

        func = f
        if self.use_mem_gc and self.training and torch.is_grad_enabled():

            def func(z: Tensor) -> Tensor:
                if not torch.is_grad_enabled():  # the no-grad solve stores nothing anyway
                    return f(z)
                return mem_gc(block, (z, x, mem_k, mem_v, cos, sin))

        states, info = self.deq(func, z0, solver_kwargs=solver_kwargs, sradius_mode=sradius_mode)
        if jac_loss and self.training:
            z = states[-1].detach().requires_grad_()
            info["jac_loss"] = jac_reg(f(z), z)
        return self._output(states, states[-1] + x, mems), info

    def _untied(self, x: Tensor, mems: list[Tensor], cos: Tensor, sin: Tensor) -> LMOutput:
        z, inputs = x, []
        for i, block in enumerate(self.blocks):
            inputs.append(z)
            mem_k, mem_v = block.attn.memory_kv(mems[i] if mems else None, cos, sin)
            z = block(z, None, mem_k, mem_v, cos, sin)
        out = self._output([z], None, mems)
        out.mems = self._next_mems(inputs, mems)
        return out

    def _output(self, states: list[Tensor], u_star: Tensor | None, mems) -> LMOutput:
        new = self._next_mems([u_star], mems) if u_star is not None else []
        return LMOutput(states=states, mems=new, z_star=states[-1].detach())

    def _next_mems(self, inputs: list[Tensor], mems: list[Tensor]) -> list[Tensor]:
        keep = self.current_mem_len()
        out = []
        for i, u in enumerate(inputs):
            u = u.detach()
            if mems:
                u = torch.cat([mems[i], u], dim=1)
            out.append(u[:, max(u.shape[1] - keep, 0) :])
        return out
