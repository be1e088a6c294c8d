"""Semantics shared by every solver: convergence, statistics, indexing, best iterates, NaN."""

from __future__ import annotations

import pytest
import torch
from problems import (
    DOTTIE,
    PROBLEMS,
    Problem,
    affine,
    mixed_difficulty,
)

from torchdeq.solver import get_solver, loop, solver_stat_from_final_step, tracking
from torchdeq.solver.stat import STAT_KEYS

MONITORED = ["fixed_point_iter", "anderson", "broyden"]
SOLVERS = [*MONITORED, "simple_fixed_point_iter"]


@pytest.fixture(params=["host", "device"])
def tracker(request, monkeypatch):
    """Runs a test with each best-iterate tracker; both run on the CPU."""
    kind = {"host": tracking.HostTracker, "device": tracking.DeviceTracker}[request.param]
    monkeypatch.setattr(loop, "make_tracker", kind)
    return request.param


def line(c: float = 0.5, b: float = 1.0):
    """``f(z) = c z + b``: from 0 the iterates are ``z_j = b (1 - c^j) / (1 - c)``."""
    return lambda z: c * z + b


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", SOLVERS)
def test_solver_reaches_fixed_point(name: str, problem: Problem):
    z_star, _, info = get_solver(name)(
        problem.func, problem.x0, max_iter=problem.max_iter, tol=1e-12
    )
    assert z_star.shape == problem.x0.shape
    assert z_star.dtype == problem.x0.dtype
    torch.testing.assert_close(z_star, problem.solution, atol=1e-9, rtol=0)
    if name in MONITORED:
        assert not info["nonfinite"].any()
        assert (info["abs_lowest"] < 1e-11).all()


@pytest.mark.parametrize("name", MONITORED)
def test_solver_stops_early_once_every_sample_meets_tol(name: str, tracker):
    problem = PROBLEMS[0]
    _, _, info = get_solver(name)(problem.func, problem.x0, max_iter=200, tol=1e-6)
    steps = info["abs_trace"].shape[1]
    assert steps < 200
    assert (info["abs_lowest"] < 1e-6).all()
    # the previous step had not yet finished every sample
    assert (info["abs_trace"][:, : steps - 1].min(dim=1).values >= 1e-6).any()


@pytest.mark.parametrize(("shape", "batch"), [((), 1), ((5,), 5), ((3, 4), 3), ((2, 3, 4, 4), 2)])
@pytest.mark.parametrize("name", MONITORED)
def test_solver_stats_shapes(name: str, shape: tuple[int, ...], batch: int, tracker):
    x0 = torch.zeros(shape, dtype=torch.float64)
    z_star, states, info = get_solver(name)(torch.cos, x0, max_iter=7, tol=0.0, indexing=[2])
    assert z_star.shape == x0.shape and states[0].shape == x0.shape
    assert set(info) == set(STAT_KEYS)
    for key in ("abs_lowest", "rel_lowest", "nstep", "nonfinite", "converged", "sradius"):
        assert info[key].shape == (batch,), key
    assert info["abs_trace"].shape == info["rel_trace"].shape == (batch, 7)
    assert info["nonfinite"].dtype == info["converged"].dtype == torch.bool
    assert (info["sradius"] == -1).all()  # the sentinel: not estimated
    # the lowest residuals are those of the returned iterate, found in the trace at nstep
    pick = info["nstep"].long()[:, None]
    assert torch.equal(info["abs_trace"].gather(1, pick)[:, 0], info["abs_lowest"])
    assert torch.equal(info["rel_trace"].gather(1, pick)[:, 0], info["rel_lowest"])


@pytest.mark.parametrize("name", MONITORED)
def test_solver_residuals_match_definition(name: str):
    problem = PROBLEMS[0]
    z_star, _, info = get_solver(name)(problem.func, problem.x0, max_iter=5, tol=0.0)
    fz = problem.func(z_star)
    abs_res = (fz - z_star).norm(dim=1)
    torch.testing.assert_close(info["abs_lowest"], abs_res)
    torch.testing.assert_close(info["rel_lowest"], abs_res / (fz.norm(dim=1) + 1e-8))
    # column 0 is the initial guess
    torch.testing.assert_close(
        info["abs_trace"][:, 0], (problem.func(problem.x0) - problem.x0).norm(dim=1)
    )


def test_fixed_point_iter_nstep_is_per_sample(tracker):
    # residual of z_j is exactly c^j: the first j with c^j < 2e-3 is 3, 9 and 59
    problem = mixed_difficulty()
    z_star, _, info = get_solver("fixed_point_iter")(
        problem.func, problem.x0, max_iter=100, tol=2e-3
    )
    assert info["nstep"].tolist() == [3.0, 9.0, 59.0]
    assert info["abs_trace"].shape == (3, 60)
    c = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    j = torch.tensor([3.0, 9.0, 59.0], dtype=torch.float64)
    torch.testing.assert_close(z_star, (1 - c**j) / (1 - c))
    torch.testing.assert_close(info["abs_lowest"], c**j)


@pytest.mark.parametrize("name", MONITORED)
def test_solver_nstep_differs_with_difficulty(name: str, tracker):
    # sample 0 starts at the solution, sample 2 far from it
    x0 = torch.tensor([DOTTIE, 0.5, -2.0], dtype=torch.float64)
    _, _, info = get_solver(name)(torch.cos, x0, max_iter=100, tol=1e-10)
    nstep = info["nstep"].tolist()
    assert nstep[0] == 0 and 0 < nstep[1] and 0 < nstep[2]
    assert (info["abs_lowest"] < 1e-10).all()


def test_fixed_point_iter_best_iterate_against_return_final(tracker):
    # f(z) = 2z moves away from its fixed point 0: x0 is the best iterate
    f = lambda z: 2 * z  # noqa: E731
    x0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    solver = get_solver("fixed_point_iter")
    z_best, _, info = solver(f, x0, max_iter=6, tol=0.0)
    assert torch.equal(z_best, x0) and z_best is not x0
    assert info["nstep"].tolist() == [0.0, 0.0]
    assert info["abs_lowest"].tolist() == [1.0, 1.0]
    z_last, _, info = solver(f, x0, max_iter=6, tol=0.0, return_final=True)
    assert torch.equal(z_last, 64 * x0)
    assert info["nstep"].tolist() == [6.0, 6.0]
    assert info["abs_lowest"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_indexing_returns_iterates_in_given_order(name: str):
    # the first update of every solver is the plain step, so z_1 = f(0) = 1 exactly
    x0 = torch.zeros(2, dtype=torch.float64)
    z_star, states, _ = get_solver(name)(line(), x0, max_iter=8, tol=0.0, indexing=[8, 1, 1])
    assert len(states) == 3
    assert torch.equal(states[1], torch.ones(2, dtype=torch.float64))
    assert torch.equal(states[2], states[1])
    if name in ("fixed_point_iter", "simple_fixed_point_iter"):
        assert torch.equal(states[0], torch.full((2,), 2 * (1 - 0.5**8), dtype=torch.float64))
    assert get_solver(name)(line(), x0, max_iter=3)[1] == []


def test_fixed_point_iter_indexing_after_early_stop_holds_z_star(tracker):
    # residual of z_j is 0.5^j: z_4 is the first below 0.1, found at step 5
    x0 = torch.zeros(1, dtype=torch.float64)
    z_star, states, info = get_solver("fixed_point_iter")(
        line(), x0, max_iter=50, tol=0.1, indexing=[2, 5, 6, 40]
    )
    z = lambda j: torch.tensor([2 * (1 - 0.5**j)], dtype=torch.float64)  # noqa: E731
    assert info["abs_trace"].shape == (1, 5)
    assert torch.equal(z_star, z(4))
    assert [s.item() for s in states] == [z(2).item(), z(5).item(), z(4).item(), z(4).item()]


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "simple_fixed_point_iter"])
def test_solver_tau_damps_the_first_step(name: str):
    # z_1 = z_0 + tau (f(z_0) - z_0) = 0.5 for tau = 0.5, for every damped solver
    x0 = torch.zeros(1, dtype=torch.float64)
    _, states, _ = get_solver(name)(line(), x0, max_iter=3, tol=0.0, tau=0.5, indexing=[1])
    assert states[0].item() == 0.5


@pytest.mark.parametrize("name", ["fixed_point_iter", "simple_fixed_point_iter"])
def test_fixed_point_iter_tau_iterates(name: str):
    # z_k = 0.75 z_{k-1} + 0.5 from 0: 0.5, 0.875, 1.15625
    x0 = torch.zeros(1, dtype=torch.float64)
    z, states, _ = get_solver(name)(
        line(), x0, max_iter=3, tol=0.0, tau=0.5, indexing=[2], return_final=True
    )
    assert states[0].item() == 0.875 and z.item() == 1.15625


@pytest.mark.parametrize("name", MONITORED)
def test_solver_nonfinite_sample_does_not_spoil_others(name: str, tracker):
    calls = []

    def f(z):
        calls.append(None)
        out = 0.5 * z + 1
        if len(calls) >= 3:  # sample 1 blows up from the third call on
            out = out.clone()
            out[1] = float("nan")
        return out

    x0 = torch.zeros(2, 3, dtype=torch.float64)
    z_star, _, info = get_solver(name)(f, x0, max_iter=60, tol=1e-10)
    torch.testing.assert_close(z_star[0], torch.full((3,), 2.0, dtype=torch.float64))
    assert info["nonfinite"].tolist() == [False, True]
    assert torch.isfinite(z_star).all()
    # sample 1 returns its best finite iterate: z_1, whose residual was measured at step 2
    assert info["nstep"][1].item() == 1
    assert torch.equal(z_star[1], torch.ones(3, dtype=torch.float64))
    assert torch.isfinite(info["abs_lowest"]).all()


@pytest.mark.parametrize("name", MONITORED)
@pytest.mark.parametrize("return_final", [False, True])
def test_solver_nonfinite_from_start_returns_x0(name: str, return_final: bool, tracker):
    def f(z):
        out = torch.cos(z)
        out[0] = float("inf")
        return out

    x0 = torch.full((2, 2), 0.3, dtype=torch.float64)
    z_star, _, info = get_solver(name)(f, x0, max_iter=20, tol=1e-3, return_final=return_final)
    assert torch.equal(z_star[0], x0[0])
    assert info["nonfinite"].tolist() == [True, False]
    assert info["abs_lowest"][0].item() == float("inf")
    assert info["nstep"][0].item() == 0


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_max_iter_zero_returns_x0(name: str, tracker):
    x0 = torch.ones(3, 2, dtype=torch.float64)
    z_star, states, info = get_solver(name)(torch.cos, x0, max_iter=0, indexing=[1])
    assert torch.equal(z_star, x0) and z_star is not x0
    assert torch.equal(states[0], x0)
    if name in MONITORED:
        assert info["abs_trace"].shape == (3, 0)
        assert info["nstep"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_shape_mismatch_names_both_shapes(name: str):
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        get_solver(name)(lambda z: z[..., :-1], torch.zeros(2, 3), max_iter=3)


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_builds_no_graph_and_leaves_x0_alone(name: str):
    weight = torch.nn.Parameter(torch.full((3, 3), 0.1))
    x0 = torch.ones(2, 3, requires_grad=True)
    before = x0.detach().clone()
    z_star, states, _ = get_solver(name)(
        lambda z: torch.tanh(z @ weight) + 1, x0, max_iter=10, indexing=[2]
    )
    assert not z_star.requires_grad and not states[0].requires_grad
    assert torch.equal(x0.detach(), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SOLVERS)
def test_solver_keeps_low_precision_dtype(name: str, dtype: torch.dtype):
    accuracy = 1e-5 if dtype == torch.float32 else 2e-2
    x0 = torch.zeros(4, 8, dtype=dtype)
    z_star, states, info = get_solver(name)(
        torch.cos, x0, max_iter=60, tol=accuracy / 10, indexing=[1]
    )
    assert z_star.dtype == dtype and states[0].dtype == dtype
    expected = torch.full((4, 8), DOTTIE, dtype=torch.float64)
    torch.testing.assert_close(z_star.double(), expected, atol=accuracy, rtol=0)
    if name in MONITORED:
        assert info["abs_trace"].dtype == torch.float32


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_takes_a_half_precision_map_under_autocast(name: str):
    # Under CPU autocast a float32 state goes in and Linear gives bfloat16 out; the solver
    # keeps its float32 state (and its host-side algebra) and still finds the fixed point.
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.mul_(0.3)
    x0 = torch.zeros(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_star, _, _ = get_solver(name)(lambda z: torch.tanh(layer(z)), x0, max_iter=40, tol=0)
    assert z_star.dtype == torch.float32
    residual = torch.tanh(layer(z_star)) - z_star
    assert residual.abs().max() < 2e-2


def test_simple_fixed_point_iter_returns_dummy_stats():
    _, _, info = get_solver("simple_fixed_point_iter")(torch.cos, torch.zeros(3), max_iter=2)
    assert set(info) == set(STAT_KEYS)
    for key, value in info.items():
        assert value.shape == (1, 1), key
        assert value.item() == (False if key in ("nonfinite", "converged") else -1), key


@pytest.mark.parametrize("name", MONITORED)
def test_solver_rel_stop_mode_ranks_by_relative_residual(name: str, tracker):
    problem = PROBLEMS[0]
    _, _, info = get_solver(name)(problem.func, problem.x0, max_iter=100, tol=1e-8, stop_mode="rel")
    assert (info["rel_lowest"] < 1e-8).all()
    pick = info["nstep"].long()[:, None]
    ranked = info["rel_trace"]
    assert torch.equal(ranked.gather(1, pick)[:, 0], info["rel_lowest"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("name", "options"), [(name, {}) for name in SOLVERS] + [("broyden", {"LBFGS_thres": 3})]
)
def test_solver_on_cuda_matches_cpu_without_host_syncs(name: str, options: dict):
    problem = PROBLEMS[0]
    expected, _, _ = get_solver(name)(problem.func, problem.x0, max_iter=20, tol=0.0, **options)
    cell = affine(device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host read in the loop raises
    try:
        z_star, states, _ = get_solver(name)(
            cell.func, cell.x0, max_iter=20, tol=0.0, indexing=[3], **options
        )
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert z_star.device.type == "cuda" and states[0].device.type == "cuda"
    torch.testing.assert_close(z_star.cpu(), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@pytest.mark.parametrize("name", MONITORED)
def test_solver_converged_is_lowest_residual_at_or_below_tol(name: str, stop_mode: str, tracker):
    # residual of z_j is c^j: with 10 steps (z_0 .. z_9) 0.1 and 0.5 reach 2e-3, 0.9 does not
    problem = mixed_difficulty()
    _, _, info = get_solver(name)(
        problem.func, problem.x0, max_iter=10, tol=2e-3, stop_mode=stop_mode
    )
    assert torch.equal(info["converged"], info[f"{stop_mode}_lowest"] <= 2e-3)
    if name == "fixed_point_iter" and stop_mode == "abs":
        assert info["converged"].tolist() == [True, True, False]
    _, _, info = get_solver(name)(problem.func, problem.x0, max_iter=400, tol=1e-10)
    assert info["converged"].all()


def test_solver_stat_from_final_step_has_every_key_and_the_residuals():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, float("nan")]], dtype=torch.float64)
    fz = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    stat = solver_stat_from_final_step(z, fz, nstep=7)
    assert set(stat) == set(STAT_KEYS)
    torch.testing.assert_close(stat["abs_lowest"][:2], torch.tensor([5.0, 0.0]).double())
    torch.testing.assert_close(stat["rel_lowest"][:2], torch.tensor([5 / (5 + 1e-8), 0.0]).double())
    assert stat["abs_trace"].shape == stat["rel_trace"].shape == (3, 1)
    assert stat["nstep"].tolist() == [7.0, 7.0, 7.0] and (stat["sradius"] == -1).all()
    assert stat["nonfinite"].tolist() == [False, False, True]
    assert stat["converged"].tolist() == [False, True, False]
    assert stat["abs_lowest"].device == z.device
    rel = solver_stat_from_final_step(z[:2], fz[:2], tol=1.5, stop_mode="rel")
    assert rel["converged"].tolist() == [True, True] and rel["nstep"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        solver_stat_from_final_step(z, fz[:, :1])
