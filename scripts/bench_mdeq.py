"""Cost of an MDEQ training step and of evaluation, per part of the net, from the real config.

Builds the net of ``conf/project/mdeq.yaml`` (plus any Hydra overrides given on the command line)
and times, on random images of the configured batch sizes:

- step: one training step (``reset_norm``, forward, cross-entropy, backward, AdamW step);
- stem, cell, head: forward + backward of each part alone (the cell: one call with gradients);
- eval: a forward pass of one evaluation batch in ``eval()`` mode.

Times come from the shared harness (``scripts/timing.py``): the lowest of ``--rounds`` medians,
in wall and process-CPU milliseconds. On a shared machine the CPU time is the steadier number
(it does not count waiting for a core). The default
sizes are Fashion-MNIST's (1x28x28); ``--image 3 32 32`` gives CIFAR-10's.

Usage:
    python scripts/bench_mdeq.py --threads 1
    python scripts/bench_mdeq.py --threads 2 model.net.channels=[32,64,128] deq.f_max_iter=4
    python scripts/bench_mdeq.py --threads 1 --compile    # the cell under torch.compile
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from timing import measure

from torchdeq import reset_norm

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--image", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the cell (as model.compile=true)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. deq.f_max_iter=4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["project=mdeq", *args.overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    if args.compile:
        from deqzoo.module import compile_cell

        compile_cell(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    B, B_eval = cfg.data.batch_size, cfg.data.eval_batch_size or cfg.data.batch_size
    x = torch.randn(B, *args.image)
    y = torch.randint(0, cfg.model.net.num_classes, (B,))
    x_eval = torch.randn(B_eval, *args.image)

    def step() -> None:
        reset_norm(net)
        logits, _ = net(x)
        loss = sum(F.cross_entropy(out, y) for out in logits) / len(logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    h = net.stem(x).detach()
    xs = [t.detach() for t in net.injection(h)]
    zs = [torch.randn_like(t) for t in xs]
    feats = [t.detach() for t in net.cell(zs, xs)]

    def backward(out: object) -> None:
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in outs).backward()

    def evaluate() -> None:
        with torch.no_grad():
            net(x_eval)

    parts = {
        "step": step,
        "stem": lambda: backward(net.injection(net.stem(x))),
        "cell": lambda: (reset_norm(net), backward(net.cell(zs, xs))),
        "head": lambda: backward(net.head([f.requires_grad_() for f in feats])),
    }
    print(
        f"threads={args.threads} batch={B} eval_batch={B_eval} image={tuple(args.image)} "
        f"compile={args.compile} "
        f"deq: {net.deq.extra_repr()}"
    )
    net.train()
    for name, fn in parts.items():
        t = measure(fn, args.reps, args.rounds)
        print(f"{name:>6}: wall {t.wall_ms:8.1f} ms   cpu {t.cpu_ms:8.1f} ms")
    net.eval()
    t = measure(evaluate, args.reps, args.rounds)
    print(
        f"{'eval':>6}: wall {t.wall_ms:8.1f} ms   cpu {t.cpu_ms:8.1f} ms  (one batch of {B_eval})"
    )


if __name__ == "__main__":
    main()
