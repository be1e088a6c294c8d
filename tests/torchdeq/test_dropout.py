"""Tests of torchdeq.dropout: mask structure, persistence across calls, resets and scaling."""

import pytest
import torch
from torch import nn

from torchdeq.dropout import (
    VariationalDropout,
    VariationalDropout1d,
    VariationalDropout2d,
    VariationalDropout3d,
    VariationalDropToken1d,
    VariationalDropToken2d,
    VariationalDropToken3d,
    reset_dropout,
)
from torchdeq.utils.checks import OptionError

B, D = 3, 8
TOKENS = {1: (5,), 2: (4, 3), 3: (2, 3, 4)}

# (class, number of token dims, what a mask entry covers)
STRUCTURED = [
    (VariationalDropout1d, 1, "channel"),
    (VariationalDropout2d, 2, "channel"),
    (VariationalDropout3d, 3, "channel"),
    (VariationalDropToken1d, 1, "token"),
    (VariationalDropToken2d, 2, "token"),
    (VariationalDropToken3d, 3, "token"),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_input(n_spatial, token_first, batch=B):
    tokens = TOKENS[n_spatial]
    shape = (batch, *tokens, D) if token_first else (batch, D, *tokens)
    return torch.rand(shape, dtype=torch.float64) + 1.0  # no zeros: zeros in output = mask


def expected_mask_shape(n_spatial, unit, token_first, batch=B):
    tokens = TOKENS[n_spatial]
    if unit == "channel":
        tokens = (1,) * n_spatial
    channels = D if unit == "channel" else 1
    return (batch, *tokens, channels) if token_first else (batch, channels, *tokens)


@pytest.mark.parametrize("token_first", [True, False])
@pytest.mark.parametrize("cls, n_spatial, unit", STRUCTURED)
def test_structured_dropout_mask_shape_and_output(cls, n_spatial, unit, token_first):
    layer = cls(dropout=0.4, token_first=token_first)
    x = make_input(n_spatial, token_first)
    out = layer(x)
    assert layer.mask.shape == expected_mask_shape(n_spatial, unit, token_first)
    torch.testing.assert_close(out, x * layer.mask, rtol=0, atol=0)
    # Whole channels (or whole tokens) are zeroed together: the zero pattern of the output is
    # the mask broadcast to the input, constant along the dimensions the mask does not cover.
    zeros = (out == 0).to(torch.float64)
    torch.testing.assert_close(zeros, (layer.mask == 0).expand_as(x).to(torch.float64))


@pytest.mark.parametrize("cls, n_spatial, unit", STRUCTURED)
def test_structured_dropout_same_mask_until_reset(cls, n_spatial, unit):
    layer = cls(dropout=0.5)
    x = make_input(n_spatial, True)
    first = layer(x)
    mask = layer.mask
    for _ in range(5):  # solver iterations, with different inputs
        y = make_input(n_spatial, True)
        torch.testing.assert_close(layer(y), y * mask, rtol=0, atol=0)
    assert layer.mask is mask
    reset_dropout(layer)
    assert layer.mask is None
    second = layer(x)
    assert not torch.equal(first, second)


def test_variational_dropout_elementwise_mask_and_expected_scale():
    p = 0.3
    layer = VariationalDropout(dropout=p)
    x = torch.ones(200, 500, dtype=torch.float64)
    out = layer(x)
    assert layer.mask.shape == x.shape
    assert torch.unique(out).tolist() == [0.0, pytest.approx(1 / (1 - p), rel=1e-15)]
    # E[mask] = 1 and the zero fraction is p; 1e5 entries: standard errors about 0.002.
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert (out == 0).double().mean().item() == pytest.approx(p, abs=0.01)


def test_channel_dropout_zero_fraction_matches_probability():
    p = 0.25
    layer = VariationalDropout1d(dropout=p)
    out = layer(torch.ones(1000, 2, 100, dtype=torch.float64))
    assert (layer.mask == 0).double().mean().item() == pytest.approx(p, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def test_variational_dropout_gradient_is_mask():
    layer = VariationalDropToken1d(dropout=0.5)
    x = make_input(1, True).requires_grad_()
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.mask.expand_as(x))


@pytest.mark.parametrize("cls", [VariationalDropout, VariationalDropout2d, VariationalDropToken2d])
def test_variational_dropout_identity_in_eval_and_at_zero(cls):
    x = make_input(2, True)
    layer = cls(dropout=0.5).eval()
    assert layer(x) is x
    assert layer.mask is None
    assert cls(dropout=0.0)(x) is x


def test_variational_dropout_redraws_mask_for_new_batch_size():
    layer = VariationalDropout1d(dropout=0.5)
    layer(make_input(1, True, batch=2))
    assert layer.mask.shape == (2, 1, D)
    out = layer(make_input(1, True, batch=5))
    assert layer.mask.shape == (5, 1, D) and out.shape == (5, 5, D)


def test_variational_dropout_keeps_mask_across_dtype():
    layer = VariationalDropout1d(dropout=0.5)
    layer(torch.rand(B, 5, D, dtype=torch.float32))
    mask = layer.mask.clone()
    x = make_input(1, True)
    out = layer(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x * mask.double(), rtol=0, atol=0)


def test_reset_dropout_resets_nested_layers():
    model = nn.Sequential(VariationalDropout(0.5), nn.Sequential(VariationalDropToken1d(0.5)))
    model(make_input(1, True))
    assert all(m.mask is not None for m in (model[0], model[1][0]))
    reset_dropout(model)
    assert model[0].mask is None and model[1][0].mask is None


def test_reset_mask_draws_immediately():
    layer = VariationalDropout2d(dropout=0.5, token_first=False)
    x = make_input(2, False)
    layer.reset_mask(x)
    assert layer.mask.shape == (B, D, 1, 1)
    mask = layer.mask
    layer(x)
    assert layer.mask is mask


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_variational_dropout_rejects_bad_probability(dropout):
    with pytest.raises(OptionError, match=repr(dropout)):
        VariationalDropout1d(dropout=dropout)


def test_structured_dropout_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"4-D input .* got shape \(3, 5, 8\)"):
        VariationalDropout2d(0.5)(torch.ones(3, 5, 8))
