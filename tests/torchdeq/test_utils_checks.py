"""Option handling: unknown names warn once (raise when strict), bad values always raise."""

import warnings

import pytest
import torch

from torchdeq.core import get_deq
from torchdeq.grad import backward_factory
from torchdeq.loss import fp_correction
from torchdeq.norm import apply_norm
from torchdeq.solver import anderson_solver
from torchdeq.utils import checks
from torchdeq.utils.checks import OptionError, OptionWarning, is_strict, strict


def option_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, OptionWarning)]


def test_checks_suite_runs_strict():
    assert is_strict()
    with pytest.raises(OptionError, match="writer"):
        get_deq()(lambda z: 0.5 * z, torch.zeros(2, 3), writer=print)


def test_checks_option_warning_is_a_user_warning():
    assert issubclass(OptionWarning, UserWarning)


def test_checks_forward_kwarg_warns_once_with_place_and_choices(lenient):
    deq = get_deq(f_max_iter=5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):  # a training loop: one warning, not one per step
            states, _ = deq(lambda z: 0.5 * z + 1, torch.zeros(2, 3), writer=print)
    (message,) = option_warnings(record)
    assert "'writer'" in message and "DEQSliced.forward" in message
    assert states[-1].shape == (2, 3)
    # the warning points at the caller's line, not at the library's internals
    assert [w.filename for w in record if issubclass(w.category, OptionWarning)] == [__file__]


def test_checks_solver_kwargs_beta_to_anderson_warns_and_solves(lenient):
    deq = get_deq(f_solver="anderson", f_max_iter=30, f_tol=1e-8).eval()
    with pytest.warns(OptionWarning) as record:
        (z,), info = deq(lambda z: 0.5 * z + 1, torch.zeros(2, 3), solver_kwargs={"beta": 1.0})
    (message,) = option_warnings(record)
    assert "'beta'" in message and "solver 'anderson' (solver_kwargs)" in message
    assert "'lam'" in message and "'m'" in message  # the valid choices
    torch.testing.assert_close(z, torch.full((2, 3), 2.0), atol=1e-6, rtol=0)


def test_checks_build_time_options_warn_and_are_dropped(lenient):
    with pytest.warns(OptionWarning, match="f_solver_kwargs.*'m'"):
        deq = get_deq(f_solver="broyden", f_solver_kwargs={"m": 5, "ls": True})
    assert deq.f_solver_kwargs == {"ls": True}
    with pytest.warns(OptionWarning, match="get_deq.*'f_max_iters'"):
        deq = get_deq(f_max_iters=3)
    assert deq.f_max_iter == 40


def test_checks_backward_factory_extra_kwargs_warn(lenient):
    with pytest.warns(OptionWarning, match="backward_factory.*'b_solverr'"):
        grad_fn = backward_factory("ift", b_solverr="anderson")
    with pytest.warns(OptionWarning, match="b_solver_kwargs.*'m'"):
        backward_factory("ift", b_solver="broyden", b_solver_kwargs={"m": 3})
    lin = torch.nn.Linear(3, 3).double()
    (z,) = grad_fn(None, lambda z: 0.3 * torch.tanh(lin(z)), torch.zeros(2, 3).double())
    z.sum().backward()
    assert lin.weight.grad is not None


def test_checks_solver_call_extra_kwarg_warns(lenient):
    with pytest.warns(OptionWarning, match="anderson_solver.*'beta'"):
        z, _, _ = anderson_solver(torch.cos, torch.zeros(2), beta=0.5, tol=1e-10, max_iter=60)
    torch.testing.assert_close(z, torch.full((2,), 0.7390851332151607), atol=1e-8, rtol=0)


def test_checks_warns_once_per_option_and_place(lenient):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            checks.report_unknown("here", ["a", "b"], ["c"])
            checks.report_unknown("there", ["a"], ["c"])
    assert len(option_warnings(record)) == 3


@pytest.mark.parametrize(
    "build",
    [
        lambda: get_deq(f_solver="newtonn"),
        lambda: get_deq(core="slice"),
        lambda: get_deq(f_stop_mode="rell"),
        lambda: get_deq(f_max_iter=-1),
        lambda: get_deq(tau=1.5),
        lambda: backward_factory("ift", b_solver="broydn"),
        lambda: anderson_solver(torch.cos, torch.zeros(2), stop_mode="rell"),
        lambda: apply_norm(torch.nn.Linear(2, 2), "weight_nrom"),
        lambda: fp_correction(torch.nn.MSELoss(), ([torch.zeros(1)], torch.zeros(1)), "expp"),
    ],
    ids=["solver", "core", "stop_mode", "max_iter", "tau", "b_solver", "solver_call", "norm", "wf"],
)
def test_checks_bad_values_raise_even_when_lenient(lenient, build):
    with pytest.raises(OptionError):
        build()


def test_checks_strict_context_restores_the_setting(lenient):
    assert not is_strict()
    with strict(True):
        assert is_strict()
        with pytest.raises(OptionError, match="'x'.*valid options: 'y'"):
            checks.report_unknown("somewhere", ["x"], ["y"])
    assert not is_strict()


@pytest.mark.parametrize("value, raises", [("1", True), ("true", True), ("0", False), ("", False)])
def test_checks_strict_from_environment(monkeypatch, value, raises):
    monkeypatch.setattr(checks, "_strict", None)  # no strict() call: the variable decides
    monkeypatch.setattr(checks, "_warned", set())
    monkeypatch.setenv("TORCHDEQ_STRICT", value)
    deq = get_deq()
    if raises:
        with pytest.raises(OptionError, match="writer"):
            deq(lambda z: z, torch.zeros(1, 1), writer=None)
    else:
        with pytest.warns(OptionWarning, match="writer"):
            deq(lambda z: z, torch.zeros(1, 1), writer=None)
