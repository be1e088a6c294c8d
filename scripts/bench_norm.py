"""Cost of weight / spectral normalisation in DEQ solver calls, ours against torchdeq 0.1.0.

A DEQ forward pass calls its layer ``f`` 20-40 times under ``torch.no_grad()`` and then a few
times with gradients (phantom-gradient or IFT steps). The norm's overhead per call is the time of
a call of the normalised ``f`` minus that of the same ``f`` with plain weights, measured in the
same process. The training step is ``reset_norm``, ``--solve`` no-grad calls, 2 grad-enabled
calls and a backward pass.

Each implementation runs in its own worker process (the two packages share a name), single
threaded, through the public API only (``apply_norm``, ``reset_norm``). The reference runs when
``--reference DIR`` points at a ``pip install --no-deps --target DIR torchdeq==0.1.0``.
Workers alternate for ``--rounds`` rounds; each cell is the lowest of the per-round medians.
Times are the process's CPU time (``time.process_time``), not wall time: on a shared machine
they do not count the time the worker waits for a core.

Workloads (fixed seeds):

- mlp: ``f(z) = tanh(Linear(z) + x)``, z of shape (64, 512).
- mlp-b1: the same with one sample, (1, 512): the weight dominates the cost of a call.
- conv: ``f(z) = GroupNorm(ReLU(conv(ReLU(conv(z)))) + x)``, z of shape (8, 32, 16, 16).

Usage:
    python scripts/bench_norm.py --reference .reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from timing import measure

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("mlp", "mlp-b1", "conv")
NORMS = ("weight_norm", "spectral_norm")


def make_workload(name: str):
    """Returns ``(model, f, z0)``; ``f`` closes over ``model``'s layers."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "conv":
        B, C, H = 8, 32, 16
        model = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)])
        norm = nn.GroupNorm(8, C)
        x = torch.randn(B, C, H, H)

        def f(z):
            return norm(torch.relu(model[1](torch.relu(model[0](z)))) + x)

        return model, f, torch.zeros(B, C, H, H)
    B, D = (1, 512) if name == "mlp-b1" else (64, 512)
    model = nn.Linear(D, D)
    x = torch.randn(B, D)

    def f(z):
        return torch.tanh(model(z) + x)

    return model, f, torch.zeros(B, D)


def median_time(fn, repeat: int) -> float:
    """Median CPU seconds of ``fn`` over ``repeat`` calls after one warm-up (the harness)."""
    return measure(fn, reps=repeat, rounds=1).cpu_ms / 1e3


def worker(repeat: int, solve: int) -> dict:
    import torch

    from torchdeq.norm import apply_norm, reset_norm

    torch.set_num_threads(1)
    results = {}
    for workload in WORKLOADS:
        _, f_plain, z0 = make_workload(workload)

        def plain_calls(f=f_plain, z0=z0):
            with torch.no_grad():
                for _ in range(solve):
                    f(z0)

        t_plain = median_time(plain_calls, repeat) / solve
        for norm_type in NORMS:
            model, f, z0 = make_workload(workload)
            apply_norm(model, norm_type)

            def calls(f=f, z0=z0):
                with torch.no_grad():
                    for _ in range(solve):
                        f(z0)

            def step(model=model, f=f, z0=z0):
                reset_norm(model)
                with torch.no_grad():
                    z = z0
                    for _ in range(solve):
                        z = f(z)
                for _ in range(2):
                    z = f(z)
                z.sum().backward()

            t_call = median_time(calls, repeat) / solve
            results[f"{workload}/{norm_type}"] = {
                "plain_call_us": 1e6 * t_plain,
                "overhead_per_call_us": 1e6 * (t_call - t_plain),
                "train_step_ms": 1e3 * median_time(step, repeat),
            }
    return results


def run_worker(path: str | None, repeat: int, solve: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = path if path else str(ROOT)
    cmd = [sys.executable, __file__, "--worker", "--repeat", str(repeat), "--solve", str(solve)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="directory holding torchdeq 0.1.0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--solve", type=int, default=30, help="no-grad calls per forward pass")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeat, args.solve)))
        return

    impls = {"ours": None}
    if args.reference:
        impls["torchdeq-0.1.0"] = str(Path(args.reference).resolve())
    rounds = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, path in impls.items():
            rounds[name].append(run_worker(path, args.repeat, args.solve))
    print(f"{'case':<26}{'impl':<16}{'plain f (us)':>14}{'norm +us/call':>15}{'step (ms)':>11}")
    for case in rounds["ours"][0]:
        for name in impls:
            best = {k: min(r[case][k] for r in rounds[name]) for k in rounds[name][0][case]}
            print(
                f"{case:<26}{name:<16}{best['plain_call_us']:>14.1f}"
                f"{best['overhead_per_call_us']:>15.1f}{best['train_step_ms']:>11.2f}"
            )


if __name__ == "__main__":
    main()
