"""Forward-solve speed of the fixed-point solvers against the physical limit NFE x t(f).

Each implementation runs in its own long-lived worker process (ours, and the original
torchdeq 0.1.0 when ``--reference DIR`` points at a ``pip install --no-deps --target DIR
torchdeq==0.1.0``; the two packages share a name, so the worker's PYTHONPATH holds only that
folder), single-threaded, through the public API only: ``get_solver(name)(f, z0,
max_iter=N, tol=0.0)`` under ``torch.no_grad()``, as a DEQ forward pass calls it. ``tol=0``
makes every step run. NFE is counted by wrapping ``f``. One measurement times NFE chained plain
calls of ``f`` (the physical limit) and then one solve.

Workloads (fixed seeds, the same weights in both workers):

- conv: ``f(z) = GroupNorm(ReLU(conv(ReLU(conv(z)))) + x)``, ``z`` of shape (16, 32, 16, 16),
  3x3 convolutions with padding 1, GroupNorm with 8 groups.
- mlp: ``f(z) = tanh(Linear(z) + x)``, ``z`` of shape (64, 512).

Next to each solver the worker times its *floor*: the tensor passes that the method cannot
avoid in eager PyTorch, with no bookkeeping at all (:func:`floor_loop`): the residual and
its norm and the norm of ``f(z)`` for every method, plus for Anderson (m=6) the new row of
the residual Gram matrix and the mixing over the last ``m`` iterates, and for Broyden the
Gram row and the step over every residual so far. A solver's distance to its floor is its
own overhead; the floor's distance to the limit is the price of the method's memory traffic.

The machine may be shared: the parent asks the workers for one measurement at a time,
alternating between them, and each cell is the minimum over ``--repeats`` measurements. The
default clock is the worker's CPU time (``time.process_time``), which, for single-threaded
work, excludes the time the process waits for a core; ``--clock wall`` uses wall time.

With ``--json`` the last line printed is one JSON object with, for each
``"<solver>/<workload>"``, the keys ``ours_ms``, ``floor_ms``, ``limit_ms`` and ``original_ms``
(null without ``--reference``), each the minimum over the repeats.

A solver may carry options for our implementation, ``name:key=value,...`` (values are Python
literals), e.g. ``--solvers anderson anderson:safeguard=False`` to time an option's cost; the
original gets the plain name.

Usage:
    python scripts/bench_solvers.py --reference .reference
    python scripts/bench_solvers.py --reference .reference --json
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("fixed_point_iter", "anderson", "broyden")
WORKLOADS = ("conv", "mlp")


def make_workload(name: str):
    """Returns ``(f, z0)`` for a workload, built from a fixed seed."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "conv":
        B, C, H = 16, 32, 16
        conv1, conv2 = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)
        norm = nn.GroupNorm(8, C)
        x = torch.randn(B, C, H, H)

        def f(z):
            return norm(torch.relu(conv2(torch.relu(conv1(z)))) + x)

        return f, torch.zeros(B, C, H, H)
    B, D = 64, 512
    linear = nn.Linear(D, D)
    with torch.no_grad():
        # a contraction, so the residuals in the report mean something
        linear.weight.mul_(0.9 / torch.linalg.matrix_norm(linear.weight, ord=2))
    x = torch.randn(B, D)

    def f(z):
        return torch.tanh(linear(z) + x)

    return f, torch.zeros(B, D)


def floor_history(name: str, z0, max_iter: int, m: int = 6):
    """The history :func:`floor_loop` works in, allocated (and touched) before timing."""
    import torch

    rows = {"anderson": min(m, max_iter), "broyden": max_iter}.get(name, 1)
    return torch.zeros(z0.shape[0], 2 if name == "anderson" else 1, rows, z0[0].numel())


def floor_loop(name: str, f, z0, max_iter: int, history) -> None:
    """The passes over memory that ``name`` needs per step, without any bookkeeping."""
    import torch

    batch = z0.shape[0]
    z = z0.reshape(batch, -1)
    g = torch.empty_like(z)
    rows = history.shape[2] if name in ("anderson", "broyden") else 0
    res, mix = history[:, 0], history[:, -1]
    for k in range(max_iter):
        fz = f(z.view(z0.shape)).view(batch, -1)
        slot, n = (k % rows, min(k + 1, rows)) if rows else (0, 0)
        if n:
            torch.sub(fz, z, out=res[:, slot])
            torch.bmm(res[:, slot, None], res[:, :n].mT)  # the new Gram row
        else:
            torch.sub(fz, z, out=g)
        torch.linalg.vector_norm(res[:, slot] if n else g, dim=1).tolist()
        torch.linalg.vector_norm(fz, dim=1)
        if name == "anderson":
            mix[:, slot].copy_(fz)
            z = torch.bmm(torch.full((batch, 1, n), 1.0 / n), mix[:, :n])[:, 0]
        elif name == "broyden":
            coef = torch.full((batch, 1, n), 0.1 / n)
            z = torch.baddbmm(z[:, None], coef, res[:, :n])[:, 0]
        else:
            z = fz


def parse_solver(spec: str) -> tuple[str, dict]:
    """``'anderson:m=5,safeguard=False'`` -> ``('anderson', {'m': 5, 'safeguard': False})``."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = ast.literal_eval(value)
    return name, kwargs


def serve(max_iter: int, clock: str, with_options: bool) -> None:
    """Worker loop: answers one measurement per request line ``solver workload``."""
    import torch

    from torchdeq.solver import get_solver

    torch.set_num_threads(1)
    now = time.process_time if clock == "cpu" else time.perf_counter
    workloads = {}
    for line in sys.stdin:
        name, workload = line.split()
        if workload not in workloads:
            workloads[workload] = make_workload(workload)
        f, z0 = workloads[workload]
        name, kwargs = parse_solver(name)
        if not with_options:
            kwargs = {}
        solver = functools.partial(get_solver(name), **kwargs)
        calls = [0]

        def counted(z, f=f, calls=calls):
            calls[0] += 1
            return f(z)

        with torch.no_grad():
            solver(counted, z0, max_iter=max_iter, tol=0.0)  # warm-up, and counts NFE
            nfe, calls[0] = calls[0], 0
            t0 = now()
            z = z0
            for _ in range(nfe):
                z = f(z)
            t1 = now()
            _, _, info = solver(f, z0, max_iter=max_iter, tol=0.0)
            t2 = now()
            history = floor_history(name, z0, nfe)
            t3 = now()
            floor_loop(name, f, z0, nfe, history)
            t4 = now()
        row = {"nfe": nfe, "limit": t1 - t0, "solve": t2 - t1, "floor": t4 - t3}
        row["abs_lowest"] = float(info["abs_lowest"].max())
        print(json.dumps(row), flush=True)


class Worker:
    """A worker process for one implementation, found through PYTHONPATH alone."""

    def __init__(self, pythonpath: str, args: argparse.Namespace, with_options: bool):
        env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--serve", "--max-iter", str(args.max_iter)]
        cmd += ["--clock", args.clock] + (["--with-options"] if with_options else [])
        self.proc = subprocess.Popen(
            cmd, env=env, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def measure(self, solver: str, workload: str) -> dict:
        self.proc.stdin.write(f"{solver} {workload}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker failed on {solver} / {workload}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def summarise(rows: list[dict]) -> dict:
    """Minimum times over the repeats, and the ratio of the minima."""
    solve = min(r["solve"] for r in rows)
    limit = min(r["limit"] for r in rows)
    floor = min(r["floor"] for r in rows)
    return {
        "ms": 1e3 * solve,
        "floor_ms": 1e3 * floor,
        "limit_ms": 1e3 * limit,
        "x_limit": solve / limit,
        "x_floor": floor / limit,
        "nfe": rows[0]["nfe"],
    }


def json_summary(rows: dict, cases: list[tuple[str, str]], with_original: bool) -> dict:
    """The ``--json`` object: ``{"<solver>/<workload>": {ours_ms, floor_ms, limit_ms, original_ms}}``."""
    out = {}
    for case in cases:
        ours = summarise(rows["ours", case])
        orig = summarise(rows["original", case])["ms"] if with_original else None
        out[f"{case[0]}/{case[1]}"] = {
            "ours_ms": round(ours["ms"], 3),
            "floor_ms": round(ours["floor_ms"], 3),
            "limit_ms": round(ours["limit_ms"], 3),
            "original_ms": None if orig is None else round(orig, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7, help="measurements per cell")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument(
        "--reference", default=None, help="folder holding the original torchdeq 0.1.0"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object of the times last"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--with-options", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.max_iter, args.clock, args.with_options)
        return
    paths = {"ours": str(ROOT)}
    if args.reference:
        paths["original"] = str(Path(args.reference).resolve())
    workers = {name: Worker(path, args, name == "ours") for name, path in paths.items()}
    cases = [(s, w) for w in args.workloads for s in args.solvers]
    rows = {(name, case): [] for name in paths for case in cases}
    try:
        for rep in range(args.repeats):
            for case in cases:
                order = list(workers) if rep % 2 == 0 else list(reversed(workers))
                for name in order:
                    rows[name, case].append(workers[name].measure(*case))
    finally:
        for worker in workers.values():
            worker.close()
    print(
        f"max_iter={args.max_iter}, tol=0, 1 thread, {args.clock} time; "
        f"minimum of {args.repeats} alternating measurements\n"
    )
    head = "| solver | workload | floor x-limit | ours ms | ours x-limit |"
    if args.reference:
        head += " original ms | original x-limit | speed-up |"
    head += " NFE |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for case in cases:
        ours = summarise(rows["ours", case])
        line = f"| {case[0]} | {case[1]} | {ours['x_floor']:.2f} | {ours['ms']:.1f} |"
        line += f" {ours['x_limit']:.2f} |"
        nfe = str(ours["nfe"])
        if args.reference:
            orig = summarise(rows["original", case])
            line += f" {orig['ms']:.1f} | {orig['x_limit']:.2f} | {orig['ms'] / ours['ms']:.2f}x |"
            nfe += f" / {orig['nfe']}"
        print(line + f" {nfe} |")
    if args.json:
        print(json.dumps(json_summary(rows, cases, bool(args.reference))))


if __name__ == "__main__":
    main()
