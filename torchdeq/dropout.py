"""Variational dropout: one mask per sample, held fixed across all solver iterations.

A DEQ layer is called many times while the solver searches for its fixed point. Ordinary
dropout would draw a new mask at every call, so the layer would change under the solver's feet
and no fixed point would exist. These modules draw the mask once, at the first call after
:func:`reset_dropout` (or after a change of the input's shape), and reuse it until the next
reset. Masks use inverted-dropout scaling ``1 / (1 - dropout)``, so the expected output equals the
input, and the modules are the identity in eval mode and when ``dropout == 0``.

Example:
    >>> layer = VariationalDropout1d(dropout=0.2)
    >>> x = torch.randn(4, 10, 16)  # (B, L, D)
    >>> bool((layer(x) == layer(x)).all())  # the same mask on every call
    True
    >>> reset_dropout(layer)  # before the next training iteration

References:
    Gal and Ghahramani. A Theoretically Grounded Application of Dropout in Recurrent Neural
    Networks. NeurIPS 2016, arXiv:1512.05287.
    Bai, Kolter and Koltun. Deep Equilibrium Models. NeurIPS 2019, arXiv:1909.01377.
"""

from __future__ import annotations

import torch
from torch import nn

from torchdeq.utils.checks import OptionError

__all__ = [
    "VariationalDropout",
    "VariationalDropout1d",
    "VariationalDropout2d",
    "VariationalDropout3d",
    "VariationalDropToken1d",
    "VariationalDropToken2d",
    "VariationalDropToken3d",
    "reset_dropout",
]


class VariationalDropout(nn.Module):
    """Applies variational dropout element-wise: one mask of the input's full shape.

    During training, zeros each element with probability ``dropout`` using a Bernoulli mask drawn
    at the first call after a reset and reused by every later call (one mask per sample for the
    whole fixed-point solve) until :func:`reset_dropout`. Kept elements are scaled by
    ``1 / (1 - dropout)``. A mask whose shape no longer fits the input is drawn anew.

    Args:
        dropout (float, optional): The probability of an element to be zeroed, in [0, 1).
            Default 0.5.

    Raises:
        OptionError: If ``dropout`` is outside [0, 1).

    Shape:
        - Input: Tensor of any shape.
        - Output: Tensor of the same shape as input.

    Example:
        >>> m = VariationalDropout(dropout=0.5)
        >>> output = m(torch.randn(20, 16))
    """

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        if not 0 <= dropout < 1:
            raise OptionError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.mask: torch.Tensor | None = None

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape)

    def reset_mask(self, x: torch.Tensor) -> None:
        """Draws a new dropout mask fitting the input ``x``.

        Args:
            x (torch.Tensor): An input of the layer (only its shape, dtype and device are read).
        """
        keep = 1.0 - self.dropout
        probs = torch.full(self._mask_shape(x), keep, dtype=x.dtype, device=x.device)
        self.mask = torch.bernoulli(probs).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0:
            return x
        mask = self.mask
        if mask is None or mask.shape != self._mask_shape(x):
            self.reset_mask(x)
        elif mask.dtype != x.dtype or mask.device != x.device:
            # The same mask on the input's dtype and device: its entries are 0 or 1 / (1 - p).
            self.mask = mask.to(dtype=x.dtype, device=x.device)
        return x * self.mask

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


class _StructuredDropout(VariationalDropout):
    """Variational dropout of whole channels or whole tokens of a ``(B, *spatial, D)`` input.

    Subclasses set ``n_spatial`` (the number of token dimensions) and ``unit`` ('channel' or
    'token').
    """

    n_spatial: int
    unit: str

    def __init__(self, dropout: float = 0.5, token_first: bool = True):
        super().__init__(dropout)
        self.token_first = bool(token_first)

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() != self.n_spatial + 2:
            layout = "(B, *tokens, D)" if self.token_first else "(B, D, *tokens)"
            raise ValueError(
                f"{type(self).__name__} expects a {self.n_spatial + 2}-D input {layout} with "
                f"{self.n_spatial} token dimension(s), got shape {tuple(x.shape)}"
            )
        if self.token_first:
            batch, *tokens, channels = x.shape
        else:
            batch, channels, *tokens = x.shape
        if self.unit == "channel":
            tokens = [1] * self.n_spatial
        else:
            channels = 1
        if self.token_first:
            return (batch, *tokens, channels)
        return (batch, channels, *tokens)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, token_first={self.token_first}"


class VariationalDropout1d(_StructuredDropout):
    """Applies variational dropout to whole channels of a 1d (sequence) input.

    During training, zeros entire channels (feature dimensions) of each sample with probability
    ``dropout``: the mask has shape (B, 1, D) for a token-first input (B, L, D), or (B, D, 1) for
    (B, D, L). The mask is held across solver iterations until :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a channel to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, L, D), otherwise (B, D, L).
            Default True.

    Shape:
        - Input: (B, L, D) or (B, D, L).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropout1d(dropout=0.5, token_first=False)
        >>> output = m(torch.randn(2, 16, 10))
    """

    n_spatial, unit = 1, "channel"


class VariationalDropout2d(_StructuredDropout):
    """Applies variational dropout to whole channels of a 2d (image) input.

    The mask has shape (B, 1, 1, D) for a token-first input (B, H, W, D), or (B, D, 1, 1) for
    (B, D, H, W), and is held across solver iterations until :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a channel to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, H, W, D), otherwise
            (B, D, H, W). Default True.

    Shape:
        - Input: (B, H, W, D) or (B, D, H, W).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropout2d(dropout=0.5, token_first=False)
        >>> output = m(torch.randn(2, 8, 5, 5))
    """

    n_spatial, unit = 2, "channel"


class VariationalDropout3d(_StructuredDropout):
    """Applies variational dropout to whole channels of a 3d (video) input.

    The mask has shape (B, 1, 1, 1, D) for a token-first input (B, T, H, W, D), or
    (B, D, 1, 1, 1) for (B, D, T, H, W), and is held across solver iterations until
    :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a channel to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, T, H, W, D), otherwise
            (B, D, T, H, W). Default True.

    Shape:
        - Input: (B, T, H, W, D) or (B, D, T, H, W).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropout3d(dropout=0.5, token_first=False)
        >>> output = m(torch.randn(2, 8, 3, 4, 4))
    """

    n_spatial, unit = 3, "channel"


class VariationalDropToken1d(_StructuredDropout):
    """Applies variational dropout to whole tokens of a 1d (sequence) input.

    During training, zeros entire tokens (all their features) of each sample with probability
    ``dropout``: the mask has shape (B, L, 1) for a token-first input (B, L, D), or (B, 1, L)
    for (B, D, L). The mask is held across solver iterations until :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a token to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, L, D), otherwise (B, D, L).
            Default True.

    Shape:
        - Input: (B, L, D) or (B, D, L).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropToken1d(dropout=0.5)
        >>> output = m(torch.randn(2, 10, 16))
    """

    n_spatial, unit = 1, "token"


class VariationalDropToken2d(_StructuredDropout):
    """Applies variational dropout to whole tokens (pixels) of a 2d input.

    The mask has shape (B, H, W, 1) for a token-first input (B, H, W, D), or (B, 1, H, W) for
    (B, D, H, W), and is held across solver iterations until :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a token to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, H, W, D), otherwise
            (B, D, H, W). Default True.

    Shape:
        - Input: (B, H, W, D) or (B, D, H, W).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropToken2d(dropout=0.5)
        >>> output = m(torch.randn(2, 5, 5, 8))
    """

    n_spatial, unit = 2, "token"


class VariationalDropToken3d(_StructuredDropout):
    """Applies variational dropout to whole tokens (voxels) of a 3d input.

    The mask has shape (B, T, H, W, 1) for a token-first input (B, T, H, W, D), or
    (B, 1, T, H, W) for (B, D, T, H, W), and is held across solver iterations until
    :func:`reset_dropout`.

    Args:
        dropout (float, optional): The probability of a token to be zeroed. Default 0.5.
        token_first (bool, optional): If True, expects input (B, T, H, W, D), otherwise
            (B, D, T, H, W). Default True.

    Shape:
        - Input: (B, T, H, W, D) or (B, D, T, H, W).
        - Output: the same shape as input.

    Example:
        >>> m = VariationalDropToken3d(dropout=0.5)
        >>> output = m(torch.randn(2, 3, 4, 4, 8))
    """

    n_spatial, unit = 3, "token"


def reset_dropout(model: nn.Module) -> None:
    """Resets the dropout masks of all variational dropout layers in ``model``.

    Call it at the beginning of every training iteration; each layer draws its new mask at its
    next call, from that call's input shape.

    Args:
        model (torch.nn.Module): A DEQ layer in which the dropout masks should be reset.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), VariationalDropout(0.1))
        >>> reset_dropout(model)
    """
    for module in model.modules():
        if isinstance(module, VariationalDropout):
            module.mask = None
