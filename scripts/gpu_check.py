"""The CUDA check: ``pytest -m gpu`` (solvers, gradients, norms, mixed precision, the zoo on a
GPU), then the solvers' times against the cost of their function evaluations.

Run on a machine with a GPU: ``python scripts/gpu_check.py``. Exits non-zero if a check fails
or there is no CUDA device. The timings are printed, not checked: a solve of 30 steps is
compared with 30 calls of its function (the floor), on a launch-bound cell and on one the size
of a DEQ layer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from timing import measure
from torch import nn

from torchdeq.solver import get_solver

ROOT = Path(__file__).resolve().parents[1]


class Cell(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(8, c)

    def forward(self, z, x):
        return self.norm(torch.relu(self.conv2(torch.relu(self.conv1(z)))) + x)


def _solver_times(batch: int, channels: int, size: int, steps: int) -> None:
    torch.manual_seed(0)
    cell = Cell(channels).cuda().eval()
    x = torch.randn(batch, channels, size, size, device="cuda")

    def f(z):
        return cell(z, x)

    t_f = measure(lambda: f(x), reps=30, rounds=3, warmup=3).wall_ms
    for name in ("fixed_point_iter", "anderson", "broyden"):
        solver = get_solver(name)

        def solve(solver=solver):
            return solver(f, torch.zeros_like(x), max_iter=steps, tol=0.0)

        t = measure(solve, reps=5, rounds=1, warmup=2).wall_ms
        print(
            f"TIME {name} B={batch} C={channels} {size}x{size}: {t:.2f} ms per {steps}-step "
            f"solve = {t / (steps * t_f):.2f}x the limit (f: {t_f:.3f} ms)",
            flush=True,
        )


@torch.no_grad()
def solver_times(steps: int = 30) -> None:
    """Prints each solver's time per ``steps``-step solve over ``steps`` calls of ``f``."""
    for batch, channels, size in ((16, 32, 16), (64, 64, 32)):
        _solver_times(batch, channels, size, steps)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    checks = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu"], cwd=ROOT)
    solver_times()
    return checks.returncode


if __name__ == "__main__":
    sys.exit(main())
