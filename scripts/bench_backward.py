"""Cost of the implicit backward solve: vector-Jacobian products and time to reach ``b_tol``.

The IFT backward pass solves ``y = J_f(z*)^T y + g``. For each workload this script builds
``z*`` and ``g``, and runs every backward solver on that system through the public API
(``get_solver(name)(h, zeros, max_iter=..., tol=b_tol, stop_mode='rel')``, as the IFT backward
calls it), counting the calls of ``h`` (one VJP each) until every sample's relative residual
``||h(y) - y|| / ||h(y)||`` is below ``b_tol``; the time is the process CPU time of the solve
(the minimum over ``--repeats``), single-threaded.

Workloads (fixed seeds):

- ``linear-<rho>``: ``f(z) = W z + x`` on ``(8, 512)`` with ``W = S diag(l) S^-1``, the
  eigenvalues ``l`` evenly spread over ``[-rho, rho]`` and ``S = I + 0.3 N / sqrt(512)`` (a
  mildly non-normal map of spectral radius ``rho``);
- ``mdeq``: the multi-resolution cell of ``conf/project/mdeq.yaml`` (Fashion-MNIST sizes, a
  batch of ``--mdeq-batch`` random images), at its fixed point from Anderson, with ``g`` the gradient of a random linear
  read-out; its spectral radius (power method) is printed beside it.

Usage:
    python scripts/bench_backward.py
    python scripts/bench_backward.py --workloads linear-0.99 --repeats 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = {
    "fixed_point_iter": ("fixed_point_iter", {}),
    "anderson": ("anderson", {}),
    "broyden": ("broyden", {}),
    "gmres": ("gmres", {}),
    "gmres(20)": ("gmres", {"restart": 20}),
    "bicgstab": ("bicgstab", {}),
}
WORKLOADS = ("linear-0.5", "linear-0.9", "linear-0.99", "mdeq")


def linear_cell(rho: float, batch: int = 8, dim: int = 512):
    """``(f, z*)`` of a linear map with spectral radius ``rho``."""
    gen = torch.Generator().manual_seed(0)
    s = torch.eye(dim) + 0.3 * torch.randn(dim, dim, generator=gen) / dim**0.5
    w = s @ torch.diag(torch.linspace(-rho, rho, dim)) @ torch.linalg.inv(s)
    x = torch.randn(batch, dim, generator=gen)
    z_star = torch.linalg.solve(torch.eye(dim) - w, x.T).T
    return (lambda z: z @ w.T + x), z_star, rho


def mdeq_cell(batch: int):
    """``(f, z*, spectral radius)`` of the MDEQ cell of the default config, packed to (B, D)."""
    import hydra
    from hydra import compose, initialize_config_dir

    from torchdeq import reset_norm
    from torchdeq.loss import power_method
    from torchdeq.solver import get_solver
    from torchdeq.utils.packing import StatePacker

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["project=mdeq"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net).eval()
    reset_norm(net)
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        xs = net.injection(net.stem(x))
    zs = [torch.zeros_like(t) for t in xs]
    packer = StatePacker(zs)
    cell = packer.wrap(lambda *z: net.cell(list(z), xs))
    for p in net.parameters():
        p.requires_grad_(False)
    z0 = packer.pack(zs).detach()
    with torch.no_grad():
        z_star, _, _ = get_solver("anderson")(cell, z0, max_iter=200, tol=1e-7, stop_mode="rel")
    with torch.enable_grad():
        z = z_star.clone().requires_grad_()
        _, radius = power_method(cell(z), z, n_iters=100)
    return cell, z_star, float(radius.max())


def backward_system(f, z_star: torch.Tensor):
    """``h(y) = J_f(z*)^T y + g`` with a fixed random ``g``; returns ``(h, g, counter)``."""
    z = z_star.detach().clone().requires_grad_()
    with torch.enable_grad():
        f_z = f(z)
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    calls = [0]

    def h(y):
        calls[0] += 1
        return torch.autograd.grad(f_z, z, y, retain_graph=True)[0] + g

    return h, g, calls


def run(workload: str, args: argparse.Namespace) -> None:
    from torchdeq.solver import get_solver

    b_tol, max_iter, repeats = args.b_tol, args.max_iter, args.repeats
    if workload == "mdeq":
        f, z_star, radius = mdeq_cell(args.mdeq_batch)
    else:
        f, z_star, radius = linear_cell(float(workload.split("-")[1]))
    h, g, calls = backward_system(f, z_star)
    fp = None
    for label in args.solvers:
        name, opts = SOLVERS[label]
        solver = get_solver(name)
        best = float("inf")
        solver(h, torch.zeros_like(g), max_iter=3, tol=0.0, **opts)  # warm-up
        for _ in range(repeats):
            calls[0] = 0
            t0 = time.process_time()
            _, _, info = solver(
                h, torch.zeros_like(g), max_iter=max_iter, tol=b_tol, stop_mode="rel", **opts
            )
            best = min(best, time.process_time() - t0)
        reached = bool((info["rel_lowest"] < b_tol).all())
        vjps, ms, res = calls[0], 1e3 * best, float(info["rel_lowest"].max())
        if label == "fixed_point_iter" and reached:
            fp = vjps
        ratio = f"{fp / vjps:.1f}x" if fp and reached else "-"
        mark = "" if reached else f" (not reached: {res:.1e})"
        print(
            f"| {workload} | {radius:.3f} | {label} | {vjps}{mark} | {ms:.0f} | {ratio} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument("--b-tol", type=float, default=1e-6)
    parser.add_argument("--max-iter", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mdeq-batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"b_tol={args.b_tol} (relative), max_iter={args.max_iter}, 1 thread, CPU time\n")
    print("| workload | spectral radius | solver | VJPs | ms | fewer VJPs than fixed-point |")
    print("|---|---|---|---|---|---|")
    for workload in args.workloads:
        run(workload, args)


if __name__ == "__main__":
    main()
