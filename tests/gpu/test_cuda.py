"""CUDA checks (``pytest -m gpu``): solvers per dtype, exact IFT gradients, spectral norm, mixed-
precision training through every core, and the zoo framework on a GPU.

Skipped without a CUDA device; ``python scripts/gpu_check.py`` runs them and times the solvers.
"""

from __future__ import annotations

import json

import pytest
import torch
from framework_toy import compose_config
from torch import nn

from deqzoo.train import train
from torchdeq import apply_norm, get_deq, reset_deq
from torchdeq.dropout import VariationalDropout2d
from torchdeq.solver import get_solver

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = torch.device("cuda")


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "broyden"])
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4), (torch.bfloat16, 5e-2)]
)
def test_cuda_solver_reaches_the_linear_fixed_point(name, dtype, tol):
    torch.manual_seed(0)
    B, D = 8, 64
    A = 0.5 * torch.randn(B, D, D, device=DEV, dtype=torch.float64) / D**0.5
    b = torch.randn(B, D, device=DEV, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(D, device=DEV, dtype=torch.float64) - A, b)
    Ad, bd = A.to(dtype), b.to(dtype)
    z, _, info = get_solver(name)(
        lambda z: torch.einsum("bij,bj->bi", Ad, z) + bd,
        torch.zeros(B, D, device=DEV, dtype=dtype),
        max_iter=200,
        tol=tol * 1e-2,
    )
    err = ((z.double() - exact).norm() / exact.norm()).item()
    assert z.dtype == dtype and z.device.type == "cuda"
    assert err < tol, f"rel err {err:.1e}, nstep {info['nstep'].float().mean():.1f}"


@pytest.mark.parametrize("hook", [False, True])
def test_cuda_ift_gradient_is_exact(hook):
    torch.manual_seed(0)
    D, B = 6, 3
    f64 = dict(device=DEV, dtype=torch.float64)
    W = nn.Parameter(0.5 * torch.randn(D, D, **f64) / D**0.5)
    x, c = torch.randn(B, D, **f64), torch.randn(B, D, **f64)

    def f(z):
        return torch.tanh(z @ W.T + x)

    deq = get_deq(ift=True, hook_ift=hook, f_max_iter=300, f_tol=1e-13, b_max_iter=300,
                  b_tol=1e-13, f_solver="anderson")  # fmt: skip
    (z,), _ = deq(f, torch.zeros(B, D, **f64))
    (g,) = torch.autograd.grad((c * z).sum(), [W])
    zs = z.detach().requires_grad_()
    J = torch.autograd.functional.jacobian(f, zs.detach())
    eye = torch.eye(D, **f64)
    ys = torch.stack([torch.linalg.solve(eye - J[i, :, i, :].T, c[i]) for i in range(B)])
    (e,) = torch.autograd.grad(f(zs), [W], ys)
    assert ((g - e).norm() / e.norm()).item() < 1e-6


def test_cuda_spectral_norm_bounds_the_largest_singular_value():
    conv = nn.Conv2d(16, 16, 3, padding=1).to(DEV)
    apply_norm(conv, "spectral_norm", learn_scale=False, n_power_iterations=50)
    conv(torch.randn(2, 16, 8, 8, device=DEV))
    assert torch.linalg.matrix_norm(conv.weight.reshape(16, -1), ord=2).item() <= 1.0 + 1e-3


class Cell(nn.Module):
    """conv-relu-conv with variational dropout and group norm, injected with ``x``."""

    def __init__(self, c=32):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm, self.drop = nn.GroupNorm(8, c), VariationalDropout2d(0.1, token_first=False)

    def forward(self, z, x):
        return self.norm(torch.relu(self.drop(self.conv2(torch.relu(self.conv1(z))))) + x)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("core", ["indexing", "sliced"])
@pytest.mark.parametrize("ift", [False, True])
def test_cuda_mixed_precision_training_lowers_the_loss(core, ift, amp_dtype):
    torch.manual_seed(0)
    cell, head = Cell().to(DEV), nn.Linear(32, 10).to(DEV)
    apply_norm(cell, "weight_norm")
    deq = get_deq(core=core, ift=ift, f_solver="anderson", f_max_iter=12, grad=3, tau=0.8,
                  n_states=2)  # fmt: skip
    params = [*cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    x, y = torch.randn(16, 32, 8, 8, device=DEV), torch.randint(0, 10, (16,), device=DEV)
    losses = []
    for _ in range(15):
        reset_deq(cell)
        with torch.autocast("cuda", dtype=amp_dtype):
            zs, _ = deq(lambda z: cell(z, x), torch.zeros_like(x))
            loss = sum(nn.functional.cross_entropy(head(z.float().mean((2, 3))), y) for z in zs)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_cuda_framework_trains_with_the_jacobian_term(precision, tmp_path):
    overrides = ["project=toy", "trainer=gpu", f"trainer.precision={precision}", "debug=fdr",
                 "loss.jac_loss_weight=1", "loss.jac_loss_freq=1"]  # fmt: skip
    train(compose_config(overrides, tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/jac_loss"] > 0 and 0 <= metrics["test/acc"] <= 1
