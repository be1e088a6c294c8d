"""A short CUDA check of the library: solvers, gradients, norms and mixed precision.

Run on a machine with a GPU: ``python scripts/gpu_check.py`` (falls back to the CPU otherwise,
which only checks the script). Prints one line per check and exits non-zero on a failure.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from torchdeq import apply_norm, get_deq, reset_deq
from torchdeq.dropout import VariationalDropout2d
from torchdeq.solver import get_solver

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FAILED = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def solvers():
    torch.manual_seed(0)
    B, D = 8, 64
    A = 0.5 * torch.randn(B, D, D, device=DEV, dtype=torch.float64) / D**0.5
    b = torch.randn(B, D, device=DEV, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(D, device=DEV, dtype=torch.float64) - A, b)
    for name in ("fixed_point_iter", "anderson", "broyden"):
        for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
            Ad, bd = A.to(dtype), b.to(dtype)
            z, _, info = get_solver(name)(
                lambda z, Ad=Ad, bd=bd: torch.einsum("bij,bj->bi", Ad, z) + bd,
                torch.zeros(B, D, device=DEV, dtype=dtype),
                max_iter=200,
                tol=tol * 1e-2,
            )
            err = ((z.double() - exact).norm() / exact.norm()).item()
            check(
                f"solver {name} {dtype}",
                err < tol and z.dtype == dtype and z.device.type == DEV.type,
                f"rel err {err:.1e}, nstep {info['nstep'].float().mean():.1f}",
            )


class Cell(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm, self.drop = nn.GroupNorm(8, c), VariationalDropout2d(0.1, token_first=False)

    def forward(self, z, x):
        return self.norm(torch.relu(self.drop(self.conv2(torch.relu(self.conv1(z))))) + x)


def training(core, ift, amp_dtype):
    torch.manual_seed(0)
    cell, head = Cell().to(DEV), nn.Linear(32, 10).to(DEV)
    apply_norm(cell, "weight_norm")
    deq = get_deq(
        core=core, ift=ift, f_solver="anderson", f_max_iter=12, grad=3, tau=0.8, n_states=2
    )
    params = [*cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    scaler = torch.amp.GradScaler(DEV.type, enabled=amp_dtype == torch.float16)
    x, y = torch.randn(16, 32, 8, 8, device=DEV), torch.randint(0, 10, (16,), device=DEV)
    losses = []
    for _ in range(15):
        reset_deq(cell)
        with torch.autocast(DEV.type, dtype=amp_dtype):
            zs, info = deq(lambda z: cell(z, x), torch.zeros_like(x))
            loss = sum(nn.functional.cross_entropy(head(z.float().mean((2, 3))), y) for z in zs)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    check(
        f"train core={core} ift={ift} {amp_dtype}",
        finite and losses[-1] < losses[0],
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}",
    )


def ift_exact():
    torch.manual_seed(0)
    D, B = 6, 3
    W = nn.Parameter(0.5 * torch.randn(D, D, device=DEV, dtype=torch.float64) / D**0.5)
    x, c = (
        torch.randn(B, D, device=DEV, dtype=torch.float64),
        torch.randn(B, D, device=DEV, dtype=torch.float64),
    )

    def f(z):
        return torch.tanh(z @ W.T + x)

    for hook in (False, True):
        deq = get_deq(
            ift=True,
            hook_ift=hook,
            f_max_iter=300,
            f_tol=1e-13,
            b_max_iter=300,
            b_tol=1e-13,
            f_solver="anderson",
        )
        (z,), _ = deq(f, torch.zeros(B, D, device=DEV, dtype=torch.float64))
        (g,) = torch.autograd.grad((c * z).sum(), [W])
        zs = z.detach().requires_grad_()
        J = torch.autograd.functional.jacobian(f, zs.detach())
        ys = torch.stack(
            [
                torch.linalg.solve(
                    torch.eye(D, device=DEV, dtype=torch.float64) - J[i, :, i, :].T, c[i]
                )
                for i in range(B)
            ]
        )
        (e,) = torch.autograd.grad(f(zs), [W], ys)
        err = ((g - e).norm() / e.norm()).item()
        check(f"ift exact hook_ift={hook}", err < 1e-6, f"rel err {err:.1e}")


def spectral():
    conv = nn.Conv2d(16, 16, 3, padding=1).to(DEV)
    apply_norm(conv, "spectral_norm", learn_scale=False, n_power_iterations=50)
    conv(torch.randn(2, 16, 8, 8, device=DEV))
    sigma = torch.linalg.matrix_norm(conv.weight.reshape(16, -1), ord=2).item()
    check("spectral norm", sigma <= 1.0 + 1e-3, f"sigma {sigma:.4f}")


def timing():
    """Solve time against NFE x t(f) on a launch-bound cell and on one the size of a DEQ layer."""
    for batch, channels, size in ((16, 32, 16), (64, 64, 32)):
        torch.manual_seed(0)
        cell = Cell(channels).to(DEV).eval()
        x = torch.randn(batch, channels, size, size, device=DEV)
        f = lambda z, cell=cell, x=x: cell(z, x)  # noqa: E731
        with torch.no_grad():
            for _ in range(3):
                f(x)
            torch.cuda.synchronize() if DEV.type == "cuda" else None
            t0 = time.perf_counter()
            for _ in range(30):
                f(x)
            torch.cuda.synchronize() if DEV.type == "cuda" else None
            t_f = (time.perf_counter() - t0) / 30
        for name in ("fixed_point_iter", "anderson", "broyden"):
            solver = get_solver(name)
            for _ in range(2):
                solver(f, torch.zeros_like(x), max_iter=30, tol=0.0)
            torch.cuda.synchronize() if DEV.type == "cuda" else None
            t0 = time.perf_counter()
            for _ in range(5):
                solver(f, torch.zeros_like(x), max_iter=30, tol=0.0)
            torch.cuda.synchronize() if DEV.type == "cuda" else None
            t = (time.perf_counter() - t0) / 5
            print(
                f"TIME {name} B={batch} C={channels} {size}x{size}: {1e3 * t:.2f} ms per 30-step"
                f" solve = {t / (30 * t_f):.2f}x the limit (f: {1e3 * t_f:.3f} ms)",
                flush=True,
            )


if __name__ == "__main__":
    print(
        "device:",
        torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu",
        "torch",
        torch.__version__,
    )
    solvers()
    ift_exact()
    spectral()
    for amp in (torch.bfloat16, torch.float16) if DEV.type == "cuda" else (torch.bfloat16,):
        for core in ("indexing", "sliced"):
            for ift in (False, True):
                training(core, ift, amp)
    timing()
    print("FAILED:", FAILED if FAILED else "none")
    sys.exit(1 if FAILED else 0)
