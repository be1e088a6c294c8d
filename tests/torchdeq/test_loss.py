"""Tests of torchdeq.loss: fixed-point correction weights and alignment, Jacobian estimators."""

import pytest
import torch

from torchdeq.loss import fp_correction, jac_reg, power_method, register_weight_func
from torchdeq.loss.correction import _weight_func as weight_registry
from torchdeq.utils.checks import OptionError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def t(value):
    return torch.tensor(value, dtype=torch.float64)


def diff(a, b):
    return (a - b).sum()


STATES = [t(1.0), t(2.0), t(3.0)]


# -- fp_correction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight_func, kwargs, expected",
    [
        ("const", {}, 1 + 2 + 3),
        ("linear", {}, 1 / 3 * 1 + 2 / 3 * 2 + 1 * 3),
        ("exp", {}, 0.8**2 * 1 + 0.8 * 2 + 3),
        ("exp", {"gamma": 0.5}, 0.25 * 1 + 0.5 * 2 + 3),
    ],
)
def test_fp_correction_weights(weight_func, kwargs, expected):
    loss = fp_correction(diff, (STATES, t(0.0)), weight_func=weight_func, **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-14)


def test_fp_correction_default_is_exp_with_last_state_weight_one():
    loss = fp_correction(diff, [[t(5.0)], t(2.0)])
    assert loss.item() == 3.0
    assert fp_correction(diff, [STATES, t(0.0)]).item() == pytest.approx(0.64 + 1.6 + 3)


def test_fp_correction_returns_unweighted_loss_values():
    loss, values = fp_correction(diff, (STATES, t(1.0)), "linear", return_loss_values=True)
    assert values == [0.0, 1.0, 2.0]
    assert all(isinstance(v, float) for v in values)
    assert loss.item() == pytest.approx(2 / 3 * 1 + 1 * 2)


def test_fp_correction_aligns_shorter_sequences_to_the_end():
    def product(a, b):
        return (a * b).sum()

    # n = 3: b is used as (10, 10, 20): aligned at the end, first element repeated.
    loss, values = fp_correction(
        product, ([t(1.0), t(2.0), t(3.0)], (t(10.0), t(20.0))), "const", return_loss_values=True
    )
    assert values == [10.0, 20.0, 60.0]
    assert loss.item() == 90.0


def test_fp_correction_without_sequences_calls_crit_once():
    calls = []

    def crit(a, b):
        calls.append((a, b))
        return diff(a, b)

    assert fp_correction(crit, (t(4.0), t(1.0)), "linear").item() == 3.0
    assert len(calls) == 1


def test_fp_correction_gradients_are_weighted():
    states = [torch.zeros((), dtype=torch.float64, requires_grad=True) for _ in range(3)]
    fp_correction(diff, (states, t(0.0)), "exp", gamma=0.5).backward()
    assert [s.grad.item() for s in states] == [0.25, 0.5, 1.0]


def test_fp_correction_accepts_module_criterion():
    x = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    y = torch.randn(4, 3, dtype=torch.float64)
    loss = fp_correction(torch.nn.MSELoss(), (x, y), "const")
    expected = ((x[0] - y) ** 2).mean() + ((x[1] - y) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_fp_correction_rejects_bad_options():
    with pytest.raises(OptionError, match="'cosine'") as info:
        fp_correction(diff, (STATES, t(0.0)), weight_func="cosine")
    assert "'exp'" in str(info.value)
    with pytest.raises(OptionError, match="'gamma'"):
        fp_correction(diff, (STATES, t(0.0)), weight_func="const", gamma=0.5)
    with pytest.raises(OptionError, match="'gama'"):
        fp_correction(diff, (STATES, t(0.0)), gama=0.5)
    with pytest.raises(TypeError, match="list or tuple"):
        fp_correction(diff, t(0.0))
    with pytest.raises(ValueError, match="empty"):
        fp_correction(diff, ([], t(0.0)))


def test_register_weight_func_adds_function_with_its_options():
    def last_only(n, k, weight=1.0):
        return weight * float(k == n - 1)

    register_weight_func("last_only", last_only)
    try:
        loss = fp_correction(diff, (STATES, t(0.0)), "last_only", weight=2.0)
        assert loss.item() == 6.0
        with pytest.raises(OptionError, match="'gamma'"):
            fp_correction(diff, (STATES, t(0.0)), "last_only", gamma=2.0)
    finally:
        weight_registry.pop("last_only")


def test_register_weight_func_rejects_non_callable():
    with pytest.raises(AssertionError, match="callable"):
        register_weight_func("bad", 0.5)
    assert "bad" not in weight_registry


# -- jac_reg ----------------------------------------------------------------------------------


def test_jac_reg_estimates_normalised_frobenius_norm():
    d, batch, vecs = 5, 8, 1000
    A = torch.randn(d, d, dtype=torch.float64)
    z0 = torch.randn(batch, d, dtype=torch.float64, requires_grad=True)
    f0 = z0 @ A.t()
    estimate = jac_reg(f0, z0, vecs=vecs, create_graph=False)
    expected = (A**2).sum() / d
    # Var of one sample eps^T A A^T eps is 2 ||A A^T||_F^2; batch * vecs independent samples.
    stderr = (2 * ((A @ A.t()) ** 2).sum()).sqrt() / d / (batch * vecs) ** 0.5
    assert abs(estimate - expected) < 4 * stderr
    assert estimate.dim() == 0 and not estimate.requires_grad


def test_jac_reg_create_graph_gives_trainable_loss():
    d, batch, vecs = 4, 8, 500
    A = torch.randn(d, d, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(batch, d, dtype=torch.float64, requires_grad=True)
    f0 = z0 @ A.t()
    loss = jac_reg(f0, z0, vecs=vecs)
    assert loss.requires_grad
    (grad,) = torch.autograd.grad(loss, A, retain_graph=True)
    # d/dA of ||A||_F^2 / d is 2 A / d; the estimate's gradient is 2 (E E^T / N) A / d.
    torch.testing.assert_close(grad, 2 * A.detach() / d, rtol=0, atol=0.15 * A.abs().max().item())
    f0.sum().backward()  # the graph of f0 is still there for the main loss


def test_jac_reg_rejects_bad_vecs():
    z0 = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(OptionError, match="vecs"):
        jac_reg(z0 * 2, z0, vecs=0)


# -- power_method -----------------------------------------------------------------------------


def symmetric_with_eigenvalues(values):
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), dtype=torch.float64))
    return q @ torch.diag(t(values)) @ q.t(), q[:, 0]


def test_power_method_finds_per_sample_spectral_radius():
    a0, q0 = symmetric_with_eigenvalues([0.9, 0.5, -0.3, 0.1, 0.05])
    a1, q1 = symmetric_with_eigenvalues([-0.7, 0.2, 0.15, -0.1, 0.0])
    mats = torch.stack([a0, a1])
    z0 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    f0 = torch.einsum("bij,bj->bi", mats, z0)
    v, radius = power_method(f0, z0, n_iters=100)
    assert radius.shape == (2,)
    torch.testing.assert_close(radius, t([0.9, 0.7]))
    assert v.shape == z0.shape and not v.requires_grad
    for vec, q in zip(v, (q0, q1)):
        assert abs(torch.dot(vec, q)).item() == pytest.approx(1.0, abs=1e-10)


def test_power_method_on_image_shaped_state():
    z0 = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    scale = t([0.2, 0.5, 0.8]).view(3, 1, 1, 1)
    _, radius = power_method(scale * z0, z0, n_iters=5)
    torch.testing.assert_close(radius, t([0.2, 0.5, 0.8]))


def test_power_method_rejects_bad_input():
    z0 = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="same shape"):
        power_method(z0.sum(dim=1), z0)
    with pytest.raises(OptionError, match="n_iters"):
        power_method(z0 * 2, z0, n_iters=0)
