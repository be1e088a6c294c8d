"""Memory and time of one DEQ-INR training step against the explicit baselines.

For each net built from the project's real config (``project=deq_inr`` plus overrides), on
batches of cameraman coordinates, this measures:

- ``saved MiB``: the bytes autograd keeps for the backward pass of one training step (every
  tensor packed by ``torch.autograd.graph.saved_tensors_hooks``, each storage counted once):
  the activation memory that grows with depth in an explicit net;
- ``cache MiB``: the DEQ's fixed-point cache (one state per coordinate), memory the explicit
  nets do not need;
- ``ms/step``: median CPU time (``scripts/timing.py``, one thread) of a full step (forward,
  backward, Adam), after the cache has warmed up so that the solver is skipped as in training.

Usage:
    python scripts/bench_deq_inr.py [--batch-size 2048] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from timing import measure, saved_bytes  # noqa: E402

from projects.deq_inr.net import count_parameters  # noqa: E402
from torchdeq.norm import reset_norm  # noqa: E402

NETS = {
    "DEQ, width 400 (default)": [],
    "DEQ, solver every step": ["model.net.skip_tol=null"],
    "DEQ, 8 unrolled grad steps": ["deq.grad=8"],
    "explicit 256 x (1+3)": ["project/deq_inr/net@model.net=explicit"],
    "explicit 400 x (1+1)": ["project/deq_inr/net@model.net=explicit", "model.net.width=400"],
}


def bench(overrides: list[str], batch_size: int, steps: int) -> dict[str, float]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["project=deq_inr", f"data.batch_size={batch_size}", *overrides])
    torch.manual_seed(0)
    data = hydra.utils.instantiate(cfg.data)
    data.setup()
    net = hydra.utils.instantiate(cfg.model).net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = iter(data.train_dataloader())

    def step(backward: bool = True) -> None:
        nonlocal loader
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(data.train_dataloader())
            batch = next(loader)
        reset_norm(net)
        preds, _ = net(batch["coords"], index=batch["index"])
        loss = sum(((p - batch["target"]) ** 2).mean() for p in preds)
        if backward:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Six passes over the image: every coordinate has a cached state and a recorded residual,
    # and the solver is skipped as in training.
    for _ in range(6 * -(-data.n_coords // batch_size)):
        step()
    timing = measure(step, reps=steps, rounds=1, warmup=0)
    cache = getattr(net, "cache", None)
    cache_bytes = 0 if cache is None else cache.states.nbytes + cache.residuals.nbytes
    return {
        "params": count_parameters(net),
        "saved": saved_bytes(lambda: step(backward=False)) / 2**20,
        "cache": cache_bytes / 2**20,
        "ms": timing.cpu_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch_size}, one thread, CPU time per step (median of {args.steps})")
    print(f"{'net':<28}{'params':>10}{'saved MiB':>11}{'cache MiB':>11}{'ms/step':>9}")
    for name, overrides in NETS.items():
        r = bench(overrides, args.batch_size, args.steps)
        print(f"{name:<28}{r['params']:>10,}{r['saved']:>11.1f}{r['cache']:>11.1f}{r['ms']:>9.1f}")


if __name__ == "__main__":
    main()
