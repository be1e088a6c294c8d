"""torchdeq.utils.mem: mem_gc gradients equal a plain backward, also with normalised weights."""

import pytest
import torch
from torch import nn

from torchdeq.utils.mem import mem_gc


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class Cell(nn.Module):
    """A few unrolled fixed-point steps z <- tanh(W z + x): an iterative graph."""

    def __init__(self, d=6, steps=5):
        super().__init__()
        self.linear = nn.Linear(d, d).double()
        self.steps = steps

    def forward(self, z, x):
        for _ in range(self.steps):
            z = torch.tanh(self.linear(z) + x)
        return z


def grads(model, *inputs):
    return [p.grad.clone() for p in model.parameters()] + [t.grad.clone() for t in inputs]


def test_mem_gc_gradients_equal_plain_backward():
    cell = Cell()
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    out = cell(z, x)
    out.pow(2).sum().backward()
    expected = grads(cell, z, x)
    cell.zero_grad()
    z.grad = x.grad = None

    out_gc = mem_gc(cell, (z, x))
    torch.testing.assert_close(out_gc, out.detach(), rtol=0, atol=0)
    out_gc.pow(2).sum().backward()
    for got, want in zip(grads(cell, z, x), expected):
        torch.testing.assert_close(got, want)


def test_mem_gc_stores_fewer_tensors_than_plain_forward():
    cell = Cell(steps=10)
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 6, dtype=torch.float64)

    def count_saved(fn):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        return len(saved)

    assert count_saved(lambda: mem_gc(cell, (z, x))) < count_saved(lambda: cell(z, x)) // 4


def test_mem_gc_accepts_single_tensor_and_no_arguments():
    layer = nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(mem_gc(layer, x), layer(x))
    constant = torch.randn(2, dtype=torch.float64)
    torch.testing.assert_close(mem_gc(lambda: constant * 2), constant * 2)


NORMS = ["weight_norm", "spectral_norm", "none"]


def normed_net(norm_type):
    from torchdeq.norm import apply_norm

    net = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5)).double()
    apply_norm(net, norm_type)
    return net


@pytest.mark.parametrize("norm_type", NORMS)
@pytest.mark.parametrize("before", ["nothing", "reset_norm", "no_grad_solve", "grad_call"])
@pytest.mark.parametrize("calls", [1, 3])
def test_mem_gc_with_norms_equals_plain_backward(norm_type, before, calls):
    import copy

    from torchdeq.norm import reset_norm

    net = normed_net(norm_type)
    x = torch.randn(4, 5, dtype=torch.float64)
    if before == "reset_norm":
        reset_norm(net)
    elif before == "no_grad_solve":  # a DEQ solve: the weight cached without a graph
        with torch.no_grad():
            for _ in range(3):
                net(x)
    elif before == "grad_call":  # the weight cached with a graph
        net(x)
    reference = copy.deepcopy(net)  # the same weights, an empty cache

    def f(z):
        for _ in range(calls):  # the normalised module several times in one checkpoint
            z = torch.tanh(net(z) + x)
        return z

    mem_gc(f, (x,)).pow(2).sum().backward()
    z = x
    for _ in range(calls):
        z = torch.tanh(reference(z) + x)
    z.pow(2).sum().backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("norm_type", NORMS)
def test_mem_gc_with_norms_matches_finite_differences(norm_type):
    from torchdeq.norm import reset_norm

    net = normed_net(norm_type)
    reset_norm(net)
    x = torch.randn(4, 5, dtype=torch.float64)
    c = torch.randn(4, 5, dtype=torch.float64)

    def loss():
        return (c * mem_gc(lambda z: net(torch.tanh(net(z) + x)), (x,))).sum()

    loss().backward()
    name, param = next((n, p) for n, p in net.named_parameters() if p.shape == (5, 5))
    grad = param.grad[1, 3].item()
    with torch.no_grad():
        param[1, 3] += 1e-6
        up = loss().item()
        param[1, 3] -= 2e-6
        down = loss().item()
        param[1, 3] += 1e-6
    assert abs((up - down) / 2e-6 - grad) < 1e-6 * max(1.0, abs(grad)), name
