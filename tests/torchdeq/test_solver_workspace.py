"""Solver history buffers are reused between CPU solves, never shared by two live solves."""

import pytest
import torch

from torchdeq.solver import get_solver, workspace


@pytest.fixture(autouse=True)
def empty_workspace():
    workspace.release()
    yield
    workspace.release()


def test_borrowed_buffer_is_reused_after_it_is_given_back():
    like = torch.zeros(2, dtype=torch.float64)
    first = workspace.borrow((3, 4), like)
    pointer = first.data_ptr()
    workspace.give_back(first)
    second = workspace.borrow((3, 4), like)
    assert second.data_ptr() == pointer
    assert second.dtype == torch.float64
    # a buffer on loan is not lent twice
    third = workspace.borrow((3, 4), like)
    assert third.data_ptr() != pointer


def test_workspace_keeps_at_most_max_kept_buffers():
    like = torch.zeros(1)
    buffers = [workspace.borrow((n + 1,), like) for n in range(workspace.MAX_KEPT + 3)]
    for buffer in buffers:
        workspace.give_back(buffer)
    assert workspace.idle_bytes() == 4 * sum(range(4, workspace.MAX_KEPT + 4))
    workspace.release()
    assert workspace.idle_bytes() == 0


def test_workspace_keeps_at_most_max_idle_bytes(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_IDLE_BYTES", 100)
    like = torch.zeros(1)
    workspace.give_back(workspace.borrow((30,), like))  # 120 bytes: never kept
    assert workspace.idle_bytes() == 0
    for n in (10, 12, 9):
        workspace.give_back(workspace.borrow((n,), like))
    # 40 + 48 fit; adding 36 drops the oldest (40)
    assert workspace.idle_bytes() == 48 + 36


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_history_is_given_back_and_reused_with_identical_results(name: str):
    torch.manual_seed(0)
    a = 0.3 * torch.randn(4, 6, 6, dtype=torch.float64)

    def f(z):
        return torch.tanh(torch.einsum("bij,bj->bi", a, z) + 1)

    x0 = torch.zeros(4, 6, dtype=torch.float64)
    first = get_solver(name)(f, x0, max_iter=12, tol=0.0)[0]
    held = workspace.idle_bytes()
    assert held > 0
    for kept in workspace._idle.values():
        for buffer in kept:
            buffer.fill_(float("nan"))  # stale rows must never be read
    second = get_solver(name)(f, x0, max_iter=12, tol=0.0)[0]
    assert torch.equal(first, second)
    assert workspace.idle_bytes() == held


def test_nested_solves_of_one_shape_get_separate_histories():
    x0 = torch.zeros(3, 5, dtype=torch.float64)
    solver = get_solver("anderson")

    def inner_then_cos(z):
        # a map that itself runs a solve of the same shape, as a DEQ inside a DEQ would
        inner = solver(torch.cos, torch.zeros_like(z), max_iter=8, tol=0.0)[0]
        return 0.5 * torch.cos(z) + 0.1 * inner

    nested = solver(inner_then_cos, x0, max_iter=15, tol=0.0)[0]
    workspace.release()
    inner = solver(torch.cos, torch.zeros_like(x0), max_iter=8, tol=0.0)[0]
    expected = solver(lambda z: 0.5 * torch.cos(z) + 0.1 * inner, x0, max_iter=15, tol=0.0)[0]
    torch.testing.assert_close(nested, expected, rtol=0, atol=1e-12)


def test_history_is_given_back_when_f_raises():
    calls = [0]

    def fails_late(z):
        calls[0] += 1
        if calls[0] > 3:
            raise RuntimeError("boom")
        return torch.cos(z)

    with pytest.raises(RuntimeError, match="boom"):
        get_solver("broyden")(fails_late, torch.zeros(2, 3), max_iter=10, tol=0.0)
    assert workspace.idle_bytes() > 0
