"""Benchmarks of the DEQ transformer language model (projects/deq_lm).

``memory``: one training step (forward + backward) of the DEQ at 4/8/16/32 solver steps and of
the explicit untied stack at 2/4/8/16 layers, at the default width: bytes autograd saves for
the backward pass (a ``saved_tensors_hooks`` count), the process's peak RSS growth during the
step (measured in a fresh subprocess per configuration), and tokens/s (CPU time). The DEQ runs
``f_max_iter`` forward steps without a graph and then a one-step phantom gradient (or IFT), so
its memory stays flat; the explicit stack stores every layer.

``eval-iters``: the perplexity of a trained checkpoint on a split as the evaluation solve gets
more steps (``eval_f_max_iter``): does more test-time compute help or hurt?

    python scripts/bench_deq_lm.py memory [--grad ift]
    python scripts/bench_deq_lm.py eval-iters \\
        --ckpt logs/deq_lm/runs/<time>/checkpoints/last.ckpt --iters 2 4 6 8 12 16 24 --split valid
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

import torch
from timing import measure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH = dict(d_model=256, n_head=4, d_head=64, d_inner=1024, adaptive=True, cutoffs=[2000, 6000])
VOCAB, BATCH, TGT_LEN = 14198, 16, 64


def _one_config(mode: str, depth: int, grad: str, batch: int, tgt_len: int) -> dict:
    from projects.deq_lm.net import TransformerLM
    from torchdeq.dropout import reset_dropout
    from torchdeq.norm import reset_norm

    torch.manual_seed(0)
    torch.set_num_threads(1)
    if mode == "deq":
        deq = dict(f_max_iter=depth, f_tol=0.0, grad=1)
        if grad == "ift":
            deq.update(ift=True, b_max_iter=depth, b_tol=0.0)
        net = TransformerLM(VOCAB, mode="deq", mem_len=tgt_len, deq=deq, norm={}, **WIDTH)
    else:
        net = TransformerLM(VOCAB, mode="untied", n_layer=depth, mem_len=tgt_len, norm={}, **WIDTH)
    net.train()
    tokens = torch.randint(0, VOCAB, (batch, tgt_len + 1))
    mems = net(tokens[:, :-1])[0].mems  # a full memory, as in the middle of an epoch

    def step() -> int:
        saved = 0

        def pack(t):
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        reset_norm(net)
        reset_dropout(net)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = net(tokens[:, :-1], mems=mems)
            loss = net.nll(out.states[-1], tokens[:, 1:]).mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        return saved

    step()  # warm-up: allocator, weight caches
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = step()
    seconds = measure(step, reps=3, rounds=1, warmup=0).cpu_ms / 1e3  # the shared harness
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(
        mode=mode,
        depth=depth,
        autograd_mib=saved / 2**20,
        peak_rss_mib=rss1 / 1024,
        rss_growth_mib=(rss1 - rss0) / 1024,
        tokens_per_s=batch * tgt_len / seconds,
    )


def memory(args: argparse.Namespace) -> None:
    rows = []
    configs = [("deq", n) for n in (4, 8, 16, 32)] + [("untied", n) for n in (2, 4, 8, 16)]
    for mode, depth in configs:
        cmd = [sys.executable, __file__, "_one", mode, str(depth), args.grad]
        cmd += [str(args.batch), str(args.tgt_len)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    label = {"deq": f"DEQ ({args.grad}), solver steps", "untied": "explicit untied, layers"}
    print(f"batch {args.batch} x {args.tgt_len} tokens, memory {args.tgt_len}, width {WIDTH}")
    print("| model | steps/layers | autograd-saved MiB | peak RSS MiB | tokens/s (CPU time) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {label[r['mode']]} | {r['depth']} | {r['autograd_mib']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {r['tokens_per_s']:.0f} |"
        )


def eval_iters(args: argparse.Namespace) -> None:
    from projects.deq_lm.generate import _load

    net, datamodule = _load(Path(args.ckpt), [])
    torch.set_num_threads(args.threads)
    datamodule.setup()
    loader = getattr(datamodule, {"valid": "val", "test": "test"}[args.split] + "_dataloader")
    print(f"{args.ckpt}: {args.split} perplexity by evaluation solver steps")
    print("| eval_f_max_iter | perplexity | mean steps | mean relative residual |")
    print("|---|---|---|---|")
    net.eval()
    for iters in args.iters:
        nll, count, steps, resid, batches, mems = 0.0, 0, 0.0, 0.0, 0, None
        with torch.no_grad():
            for batch in loader():
                if batch["reset"]:
                    mems = None
                out, info = net(
                    batch["input"], mems=mems, solver_kwargs=dict(f_max_iter=iters, f_tol=0.0)
                )
                mems = out.mems
                token_nll = net.nll(out.states[-1], batch["target"])
                nll, count = nll + float(token_nll.sum()), count + token_nll.numel()
                steps += float(info["nstep"].mean())
                resid += float(info["rel_lowest"].mean())
                batches += 1
        print(
            f"| {iters} | {math.exp(nll / count):.2f} | {steps / batches:.1f} | "
            f"{resid / batches:.4f} |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        mode, depth, grad, batch, tgt_len = sys.argv[2:7]
        print(json.dumps(_one_config(mode, int(depth), grad, int(batch), int(tgt_len))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--grad", choices=["phantom", "ift"], default="phantom")
    mem.add_argument("--batch", type=int, default=BATCH)
    mem.add_argument("--tgt-len", type=int, default=TGT_LEN)
    ev = sub.add_parser("eval-iters")
    ev.add_argument("--ckpt", required=True)
    ev.add_argument("--iters", type=int, nargs="+", default=[2, 4, 6, 8, 12, 16, 24])
    ev.add_argument("--split", choices=["valid", "test"], default="valid")
    ev.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    memory(args) if args.command == "memory" else eval_iters(args)


if __name__ == "__main__":
    main()
