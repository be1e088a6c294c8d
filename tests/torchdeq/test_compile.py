"""``torch.compile``d cells: every solver and backward pass gives the eager results.

The default run compiles with the ``aot_eager`` backend: TorchDynamo's tracing and AOTAutograd's
joint forward-backward graphs (the parts that interact with the solvers and gradient code)
without Inductor's C++ code generation, which takes tens of seconds on a CPU. The ``slow``
test uses Inductor (the zoo's ``model.compile=true``: tests/deqzoo/test_compile.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchdeq import get_deq


class Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, z, x):
        return torch.tanh(0.5 * self.lin(z) + x)


torch.manual_seed(0)
CELL = Cell()
COMPILED = {"aot_eager": torch.compile(CELL, backend="aot_eager")}

SETUPS = [
    *[
        dict(f_solver=solver, ift=ift, hook_ift=hook, grad=grad, b_solver=b_solver)
        for solver in ("fixed_point_iter", "simple_fixed_point_iter", "anderson", "broyden")
        for ift, hook, grad, b_solver in (
            (False, False, 1, "fixed_point_iter"),
            (False, False, 3, "fixed_point_iter"),
            (True, False, 1, "fixed_point_iter"),
            (True, True, 1, "gmres"),
        )
    ],
    dict(core="reversible", f_max_iter=5),
]


def run(cell, options):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    deq = get_deq(**options)
    z = deq(lambda z: cell(z, x), torch.zeros(4, 8))[0][-1]
    z.pow(2).sum().backward()
    grads = (CELL.lin.weight.grad.clone(), x.grad.clone())
    CELL.zero_grad(set_to_none=True)
    return z.detach(), *grads


def assert_same(cell, options):
    for got, expected in zip(run(cell, options), run(CELL, options), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", SETUPS, ids=lambda o: "-".join(map(str, o.values())))
def test_compiled_cell_matches_eager(options):
    assert_same(COMPILED["aot_eager"], options)


@pytest.mark.slow
@pytest.mark.parametrize("options", [SETUPS[10], SETUPS[-1]], ids=["anderson-ift", "reversible"])
def test_inductor_compiled_cell_matches_eager(options):
    compiled = COMPILED.setdefault("inductor", torch.compile(CELL))
    assert_same(compiled, options)
