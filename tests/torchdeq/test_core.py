"""DEQ modules: configuration, training/evaluation outputs, tuple states, gradients."""

import argparse
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from torchdeq.core import DEQIndexing, DEQSliced, get_deq, register_deq, reset_deq
from torchdeq.utils.checks import OptionError
from torchdeq.utils.config import DEQConfig

CORES = ["indexing", "sliced"]


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)


class Cell(torch.nn.Module):
    """f(z) = tanh(W z + U x): a contraction for small W."""

    def __init__(self, d=6, scale=0.3):
        super().__init__()
        self.W = torch.nn.Parameter(scale * torch.randn(d, d) / d**0.5)
        self.U = torch.nn.Parameter(torch.randn(d, d) / d**0.5)
        self.calls = 0

    def forward(self, z, x):
        self.calls += 1
        return torch.tanh(z @ self.W.T + x @ self.U.T)


def test_get_deq_default_is_sliced_with_documented_defaults():
    deq = get_deq()
    assert isinstance(deq, DEQSliced)
    assert (deq.f_solver_name, deq.f_max_iter, deq.b_max_iter) == ("fixed_point_iter", 40, 40)
    assert (deq.f_tol, deq.b_tol, deq.f_stop_mode, deq.n_states, deq.grad) == (
        1e-3,
        1e-6,
        "abs",
        1,
        [1],
    )


@pytest.mark.parametrize(
    "args",
    [
        argparse.Namespace(core="indexing", f_solver="anderson", f_max_iter=7, lr=0.1),
        {"core": "indexing", "f_solver": "anderson", "f_max_iter": 7, "lr": 0.1},
        DEQConfig(core="indexing", f_solver="anderson", f_max_iter=7),
        OmegaConf.create({"core": "indexing", "f_solver": "anderson", "f_max_iter": 7, "lr": 0.1}),
        type("Obj", (), {"core": "indexing", "f_solver": "anderson", "f_max_iter": 7})(),
    ],
    ids=["namespace", "dict", "deqconfig", "dictconfig", "object"],
)
def test_get_deq_reads_every_kind_of_args(args):
    deq = get_deq(args)
    assert isinstance(deq, DEQIndexing)
    assert deq.f_solver_name == "anderson" and deq.f_max_iter == 7


def test_get_deq_kwargs_override_args():
    deq = get_deq({"f_max_iter": 7, "core": "indexing"}, f_max_iter=9, core="sliced")
    assert isinstance(deq, DEQSliced) and deq.f_max_iter == 9


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"f_max_iters": 3}, "f_max_iters"),
        ({"f_solver": "newtonn"}, "newtonn"),
        ({"core": "slice"}, "slice"),
        ({"f_stop_mode": "rell"}, "rell"),
        ({"f_solver": "broyden", "f_solver_kwargs": {"m": 5}}, "'m'"),
        ({"f_max_iter": -1}, "f_max_iter"),
        ({"grad": [1, 2], "n_states": 3}, "grad"),
        ({"tau": 1.5}, "tau"),
        ({"core": "sliced", "indexing": [5, 3]}, "increasing"),
    ],
)
def test_get_deq_rejects_bad_options_by_name(kwargs, needle):
    with pytest.raises(OptionError, match=needle):
        get_deq(**kwargs)


def test_unknown_solver_error_lists_valid_choices():
    with pytest.raises(AssertionError, match="anderson"):
        get_deq(f_solver="andersen")


def test_solver_specific_options_set_at_build_time():
    deq = get_deq(f_solver="anderson", f_solver_kwargs={"m": 3, "lam": 1e-3}, f_max_iter=12)
    assert deq.f_solver_kwargs == {"m": 3, "lam": 1e-3}
    deq.eval()
    cell, x = Cell(), torch.randn(4, 6)
    z, info = deq(lambda z: cell(z, x), torch.zeros(4, 6))
    assert (z[0] - cell(z[0], x)).norm() < 1e-2


@pytest.mark.parametrize(
    "flags, hook",
    [({"ift": True}, False), ({"ift": True, "hook_ift": True}, True), ({"hook_ift": True}, True)],
    ids=["ift", "ift+hook", "hook_only"],
)
def test_hook_ift_alone_selects_the_hook_implementation(flags, hook):
    deq = get_deq(f_max_iter=60, f_tol=1e-10, **flags)
    assert deq.ift and deq.hook_ift == hook
    cell, x = Cell(), torch.randn(3, 6)
    (z,), _ = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    # the autograd.Function wraps f(z*) in its own node; the hook leaves f's node in place
    assert ("ImplicitBackward" in type(z.grad_fn).__name__) != hook


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("n_states", [1, 3])
def test_forward_returns_n_states_in_training_and_one_at_eval(core, n_states):
    cell, x = Cell(), torch.randn(5, 6)
    deq = get_deq(core=core, n_states=n_states, f_max_iter=12, f_tol=0.0)
    states, info = deq(lambda z: cell(z, x), torch.zeros(5, 6))
    assert len(states) == n_states and all(s.requires_grad for s in states)
    assert info["nstep"].shape == (5,) and info["abs_trace"].shape[0] == 5
    deq.eval()
    states, info = deq(lambda z: cell(z, x), torch.zeros(5, 6))
    assert len(states) == 1 and not states[0].requires_grad


def test_indexing_core_calls_f_max_iter_plus_grad_steps():
    cell, x = Cell(), torch.randn(3, 6)
    deq = get_deq(core="indexing", n_states=2, grad=[2, 3], f_max_iter=10, f_tol=0.0)
    deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert cell.calls == 10 + 2 + 3


def test_sliced_core_calls_f_max_iter_plus_n_states_times_grad():
    cell, x = Cell(), torch.randn(3, 6)
    deq = get_deq(core="sliced", n_states=2, grad=3, f_max_iter=10, f_tol=0.0)
    states, info = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert cell.calls == 10 + 2 * 3
    assert info["abs_trace"].shape == (3, 10)  # both slices joined into one trajectory


def test_phantom_sup_gap_returns_intermediate_states():
    cell, x = Cell(), torch.randn(3, 6)
    deq = get_deq(core="indexing", grad=4, sup_gap=2, f_max_iter=10)
    states, _ = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert len(states) == 2  # phantom steps 2 and 4


def test_per_call_solver_kwargs_and_eval_iterations():
    cell, x = Cell(scale=0.9), torch.randn(3, 6)
    deq = get_deq(f_max_iter=10, f_tol=0.0, eval_f_max_iter=4)
    _, info = deq(lambda z: cell(z, x), torch.zeros(3, 6), solver_kwargs={"f_max_iter": 6})
    assert info["abs_trace"].shape == (3, 6)
    deq.eval()
    _, info = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert info["abs_trace"].shape == (3, 4)
    deq = get_deq(f_max_iter=10, f_tol=0.0, eval_factor=1.5).eval()
    _, info = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert info["abs_trace"].shape == (3, 15)
    with pytest.raises(OptionError, match="f_max_iterr"):
        deq(lambda z: cell(z, x), torch.zeros(3, 6), solver_kwargs={"f_max_iterr": 6})


def test_no_stat_uses_unmonitored_iteration():
    deq = get_deq(no_stat=True)
    assert deq.f_solver_name == "simple_fixed_point_iter"
    cell, x = Cell(), torch.randn(3, 6)
    states, _ = deq(lambda z: cell(z, x), torch.zeros(3, 6))
    assert states[0].shape == (3, 6)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("ift", [False, True])
def test_tuple_states_round_trip_and_carry_gradients(core, ift):
    torch.manual_seed(1)
    a_lin, b_lin = torch.nn.Linear(3, 3), torch.nn.Conv2d(2, 2, 3, padding=1)
    xa, xb = torch.randn(4, 3), torch.randn(4, 2, 5, 5)

    def f(a, b):
        return (
            torch.tanh(0.3 * a_lin(a) + xa + b.mean(dim=(2, 3)).sum(1, keepdim=True)),
            torch.tanh(0.3 * b_lin(b) + xb),
        )

    deq = get_deq(core=core, ift=ift, n_states=2, f_max_iter=30)
    states, _ = deq(f, (torch.zeros(4, 3), torch.zeros(4, 2, 5, 5)))
    assert len(states) == 2
    a, b = states[-1]
    assert isinstance(states[-1], tuple) and a.shape == (4, 3) and b.shape == (4, 2, 5, 5)
    (a.sum() + b.sum()).backward()
    assert a_lin.weight.grad is not None and b_lin.weight.grad.abs().sum() > 0
    deq.eval()
    (z,), _ = deq(f, [torch.zeros(4, 3), torch.zeros(4, 2, 5, 5)])
    assert isinstance(z, list) and z[1].shape == (4, 2, 5, 5)


def test_tuple_state_shape_mismatch_names_the_element():
    deq = get_deq()
    with pytest.raises(ValueError, match="element 1"):
        deq(lambda a, b: (a, b[:, :2]), (torch.zeros(2, 3), torch.zeros(2, 4)))


def test_shape_mismatch_of_f_is_an_error():
    deq = get_deq()
    with pytest.raises(ValueError, match="shape"):
        deq(lambda z: z[:, :2], torch.zeros(2, 4))


def test_forward_rejects_unknown_keywords():
    with pytest.raises(OptionError, match="sradius"):
        get_deq()(lambda z: z, torch.zeros(2, 2), sradius=True)


def test_sradius_mode_estimates_spectral_radius_at_eval():
    A = torch.diag(torch.tensor([0.5, -0.8, 0.2]))
    deq = get_deq(f_max_iter=200, f_tol=1e-10).eval()
    _, info = deq(lambda z: z @ A.T + 1.0, torch.zeros(2, 3), sradius_mode=True)
    assert info["sradius"].shape == (2,)
    torch.testing.assert_close(info["sradius"], torch.full((2,), 0.8), atol=1e-3, rtol=0)


def test_register_deq_adds_a_core():
    class Custom(DEQIndexing):
        pass

    register_deq("custom_test", Custom)
    assert isinstance(get_deq(core="custom_test", n_states=2), Custom)


def test_reset_deq_redraws_dropout_masks():
    from torchdeq.dropout import VariationalDropout

    drop = VariationalDropout(0.5)
    x = torch.ones(8, 16)
    m1 = drop(x)
    assert torch.equal(m1, drop(x))
    reset_deq(drop)
    assert not torch.equal(m1, drop(x))


def test_add_deq_args_gives_the_types_code_indexes():
    from torchdeq.utils import add_deq_args

    parser = add_deq_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert (args.grad, args.indexing, args.sup_loc) == ([1], [], [])
    assert args.grad[-1] == 1 and list(args.indexing) == [] and list(args.sup_loc) == []
    deq = get_deq(args)
    assert (deq.grad, deq.arg_indexing, deq.sup_loc) == ([1], None, None)
    args = parser.parse_args(["--grad", "2", "3", "--n_states", "2", "--indexing", "4", "9"])
    assert args.grad == [2, 3] and args.indexing == [4, 9]
    assert all(isinstance(v, int) for v in args.grad + args.indexing)
    assert get_deq(args).grad == [2, 3]


def test_one_element_grad_list_and_empty_lists_are_the_plain_values():
    a = get_deq(core="indexing", grad=[3], indexing=[], sup_loc=[], n_states=2)
    b = get_deq(core="indexing", grad=3, indexing=None, sup_loc=None, n_states=2)
    assert (
        (a.grad, a.arg_indexing, a.sup_loc)
        == (b.grad, b.arg_indexing, b.sup_loc)
        == ([3, 3], None, None)
    )


def test_deqconfig_rejects_unknown_keys():
    with pytest.raises(OptionError, match="f_solvr"):
        DEQConfig.from_args(None, f_solvr="anderson")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DEQConfig.from_args({"f_max_iter": 3, "unrelated": 1}).f_max_iter == 3


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("solver", ["fixed_point_iter", "anderson", "broyden", "no_stat"])
@pytest.mark.parametrize("ift", [False, True])
def test_info_holds_every_stat_key_in_training_and_eval(core, solver, ift):
    from torchdeq.solver.stat import STAT_KEYS

    options = {"no_stat": True} if solver == "no_stat" else {"f_solver": solver}
    deq = get_deq(core=core, n_states=2, f_max_iter=8, ift=ift, **options)
    cell, x = Cell(), torch.randn(4, 6)
    for training in (True, False):
        deq.train(training)
        _, info = deq(lambda z: cell(z, x), torch.zeros(4, 6))
        assert set(STAT_KEYS) <= set(info), set(STAT_KEYS) - set(info)
        assert info["sradius"].shape == (4,) and (info["sradius"] == -1).all()
        if solver != "no_stat":
            for key in ("abs_lowest", "rel_lowest", "nstep", "nonfinite", "converged"):
                assert info[key].shape == (4,), key
            assert info["converged"].dtype == torch.bool
    _, info = deq(lambda z: cell(z, x), torch.zeros(4, 6), sradius_mode=True)
    assert info["sradius"].shape == (4,) and (info["sradius"] > 0).all()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_info_converged_is_the_lowest_residual_at_or_below_tol(core, stop_mode):
    # z = c z + 1 per sample: the residual of the j-th iterate shrinks like c^j
    c = torch.nn.Parameter(torch.tensor([0.1, 0.1, 0.9, 0.9, 0.9])[:, None])
    deq = get_deq(core=core, n_states=2, f_max_iter=6, f_tol=1e-3, f_stop_mode=stop_mode)
    for training in (True, False):
        deq.train(training)
        _, info = deq(lambda z: c * z + 1, torch.zeros(5, 6))
        assert torch.equal(info["converged"], info[f"{stop_mode}_lowest"] <= 1e-3)
        assert info["converged"].tolist() == [True, True, False, False, False]
    deq = get_deq(core=core, f_max_iter=300, f_tol=1e-9).eval()
    _, info = deq(lambda z: c * z + 1, torch.zeros(5, 6))
    assert info["converged"].all()
