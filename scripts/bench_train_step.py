"""IFT training step: time and autograd memory against the number of forward iterations.

Runs one worker process per implementation (ours, and the original torchdeq 0.1.0 when
``--reference DIR`` points at a ``pip install --no-deps --target DIR torchdeq==0.1.0``), each
through the public API only: ``get_deq(ift=True, ...)``, forward, ``loss.backward()``.
Memory is the bytes of tensors that autograd saves for the backward pass (exact and
deterministic, unlike RSS), plus the peak RSS growth of the step.

Usage:
    python scripts/bench_train_step.py --reference .reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from timing import measure, saved_bytes

ROOT = Path(__file__).resolve().parents[1]


def worker(iters: list[int], repeats: int) -> list[dict]:
    import torch
    from torch import nn

    from torchdeq import get_deq

    torch.set_num_threads(1)
    torch.manual_seed(0)
    B, C, H = 16, 32, 16
    conv1, conv2 = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1)
    norm = nn.GroupNorm(8, C)
    for conv in (conv1, conv2):
        nn.init.normal_(conv.weight, std=0.02)
    x = torch.randn(B, C, H, H)

    def f(z):
        return norm(torch.relu(conv2(torch.relu(conv1(z)))) + x)

    results = []
    for n in iters:
        deq = get_deq(ift=True, f_max_iter=n, f_tol=0.0, b_max_iter=20, b_tol=0.0)

        def step(deq=deq):
            z_out, _ = deq(f, torch.zeros(B, C, H, H))
            z_out[-1].pow(2).mean().backward()

        saved = saved_bytes(step, distinct=False)
        timing = measure(step, reps=repeats, rounds=1)
        results.append({"f_max_iter": n, "ms": timing.wall_ms, "saved_MiB": saved / 2**20})
    return results


def run(pythonpath: str, iters: list[int], repeats: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--iters",
        *map(str, iters),
        "--repeats",
        str(repeats),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--reference",
        type=str,
        default=None,
        help="folder holding the original torchdeq 0.1.0 (pip --target)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.iters, args.repeats)))
        return
    impls = {"ours": str(ROOT)}
    if args.reference:
        impls["original"] = str(Path(args.reference).resolve())
    rows = {name: run(path, args.iters, args.repeats) for name, path in impls.items()}
    print("| f_max_iter | " + " | ".join(f"{n} ms | {n} autograd MiB" for n in impls) + " |")
    print("|---" * (1 + 2 * len(impls)) + "|")
    for i, n in enumerate(args.iters):
        cells = [f"{rows[k][i]['ms']:.1f} | {rows[k][i]['saved_MiB']:.2f}" for k in impls]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
