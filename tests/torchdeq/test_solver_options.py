"""Solver registry, option discovery and option validation."""

from __future__ import annotations

import pytest
import torch

from torchdeq.solver import _SOLVERS as REGISTRY
from torchdeq.solver import (
    anderson_solver,
    broyden_solver,
    fixed_point_iter,
    get_solver,
    register_solver,
    simple_fixed_point_iter,
    solver_options,
)
from torchdeq.utils.checks import OptionError

SOLVERS = ["fixed_point_iter", "anderson", "broyden", "simple_fixed_point_iter"]
COMMON = {"max_iter", "tol", "stop_mode", "indexing", "return_final"}


@pytest.fixture
def registry():
    """Restores the solver registry after a test that registers solvers."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_get_solver_returns_builtin_functions():
    assert get_solver("fixed_point_iter") is fixed_point_iter
    assert get_solver("simple_fixed_point_iter") is simple_fixed_point_iter
    assert get_solver("anderson") is anderson_solver
    assert get_solver("broyden") is broyden_solver


def test_get_solver_unknown_key_lists_valid_ones():
    with pytest.raises(OptionError, match=r"'newton'.*'anderson'.*'broyden'"):
        get_solver("newton")
    with pytest.raises(AssertionError):  # the documented exception type
        get_solver("newton")


def test_register_solver_round_trip(registry):
    def newton_solver(func, x0, max_iter=50, tol=1e-3, **kwargs):
        return fixed_point_iter(func, x0, max_iter=max_iter, tol=tol)

    register_solver("newton", newton_solver)
    assert get_solver("newton") is newton_solver
    z_star, _, _ = get_solver("newton")(torch.cos, torch.zeros(2), max_iter=100, tol=1e-6)
    torch.testing.assert_close(z_star, torch.full((2,), 0.7390851), atol=1e-5, rtol=0)


def test_register_solver_rejects_non_callable_and_non_string(registry):
    with pytest.raises(TypeError, match="callable"):
        register_solver("broken", 3)
    with pytest.raises(OptionError, match="strings"):
        register_solver(7, fixed_point_iter)


def test_solver_options_of_builtins():
    assert solver_options("fixed_point_iter") == COMMON | {"tau"}
    assert solver_options(simple_fixed_point_iter) == COMMON | {"tau"}
    assert solver_options(anderson_solver) == COMMON | {"m", "lam", "tau", "safeguard", "max_weight"}
    assert solver_options("broyden") == COMMON | {"LBFGS_thres", "ls"}


def test_solver_options_of_user_solvers():
    def strict(func, x0, max_iter=10, damping=0.5):
        return x0, [], {}

    def loose(func, x0, max_iter=10, **kwargs):
        return x0, [], {}

    assert solver_options(strict) == {"max_iter", "damping"}
    assert solver_options(loose) is None
    loose.strict_options = ("max_iter",)
    assert solver_options(loose) == {"max_iter"}
    with pytest.raises(OptionError, match="'nope'"):
        solver_options("nope")


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_unknown_option_is_named(name: str):
    with pytest.raises(OptionError, match=r"'stop_mdoe'.*valid options:.*'stop_mode'"):
        get_solver(name)(torch.cos, torch.zeros(2), stop_mdoe="rel")


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "broyden"])
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("stop_mode", "relative", r"'relative'.*'abs', 'rel'"),
        ("max_iter", -1, r"max_iter.*>= 0.*-1"),
        ("max_iter", 2.5, r"max_iter.*2\.5"),
        ("tol", "small", r"tol.*'small'"),
        ("indexing", [0, 2], r"indexing.*0"),
        ("indexing", 3, r"indexing.*3"),
    ],
)
def test_solver_invalid_common_value_is_named(name, option, value, message):
    with pytest.raises(OptionError, match=message):
        get_solver(name)(torch.cos, torch.zeros(2), **{option: value})


@pytest.mark.parametrize(
    ("solver", "option", "value"),
    [
        (fixed_point_iter, "tau", 0.0),
        (simple_fixed_point_iter, "tau", -1.0),
        (simple_fixed_point_iter, "max_iter", -2),
        (anderson_solver, "m", 0),
        (anderson_solver, "lam", -1e-4),
        (anderson_solver, "tau", float("nan")),
        (broyden_solver, "LBFGS_thres", 0),
    ],
)
def test_solver_invalid_specific_value_is_named(solver, option, value):
    with pytest.raises(OptionError, match=rf"{option}.*{value!r}"):
        solver(torch.cos, torch.zeros(2), **{option: value})


def test_simple_fixed_point_iter_ignores_generic_options():
    z, _, _ = simple_fixed_point_iter(
        torch.cos, torch.zeros(2), max_iter=3, tol=1e-3, stop_mode="rel", return_final=False
    )
    assert torch.equal(z, torch.cos(torch.cos(torch.cos(torch.zeros(2)))))


def test_solver_accepts_integral_option_types():
    indexing = [torch.tensor(2), 3]
    _, states, _ = fixed_point_iter(
        torch.cos, torch.zeros(1), max_iter=torch.tensor(3), indexing=indexing
    )
    assert len(states) == 2


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_rejects_integer_x0(name: str):
    with pytest.raises(TypeError, match="floating-point.*int64"):
        get_solver(name)(lambda z: z, torch.zeros(2, dtype=torch.long), max_iter=2)
