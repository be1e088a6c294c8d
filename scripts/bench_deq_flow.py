"""DEQ-Flow vs its explicit baseline at equal iterations: training-step memory and time, inference.

Training memory is the peak CUDA allocation on a GPU; on a CPU it is the bytes autograd saves
for the backward pass (the activations, which is what grows with unrolled depth). Times are
process CPU seconds on a CPU (wall seconds with synchronisation on a GPU), median of --reps.

    python scripts/bench_deq_flow.py                         # small size, 96x128, batch 2
    python scripts/bench_deq_flow.py --size B --height 368 --width 496 --batch 2 --iters 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from projects.deq_flow.net import DEQFlow, RAFTFlow, count_parameters, flow_l1
from torchdeq import fp_correction


class SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward inside the context."""

    def __init__(self):
        self.bytes = 0

    def __enter__(self):
        def pack(t):
            self.bytes += t.numel() * t.element_size()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def _clock(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def bench(net, batch, device, reps):
    image1, image2, target, valid = batch
    times, memory = [], 0
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = _clock(device)
        with SavedBytes() as saved:
            flows, _ = net(image1, image2)
            loss = fp_correction(flow_l1, (flows, target, valid))
        loss.backward()
        net.zero_grad(set_to_none=True)
        times.append(_clock(device) - start)
        memory = (
            (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else saved.bytes
        )
    return statistics.median(times[1:]), memory


@torch.no_grad()
def infer(net, batch, device, reps):
    net.eval()
    times = []
    for _ in range(reps + 1):
        start = _clock(device)
        net(batch[0], batch[1])
        times.append(_clock(device) - start)
    net.train()
    return statistics.median(times[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=8, help="solver steps = unrolled iterations")
    parser.add_argument("--n-states", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (args.batch, 3, args.height, args.width)
    batch = (
        torch.rand(shape, device=device),
        torch.rand(shape, device=device),
        torch.randn(args.batch, 2, args.height, args.width, device=device),
        torch.ones(args.batch, args.height, args.width, dtype=torch.bool, device=device),
    )
    nets = {
        "deq_flow": DEQFlow(
            args.size,
            deq={"f_max_iter": args.iters, "n_states": args.n_states, "f_tol": 0.0},
            norm={"norm_type": "weight_norm"},
        ),
        "raft": RAFTFlow(args.iters, size=args.size, norm={"norm_type": "weight_norm"}),
    }
    results = {"config": vars(args)}
    for name, net in nets.items():
        net.to(device).train()
        seconds, memory = bench(net, batch, device, args.reps)
        results[name] = {
            "params": count_parameters(net),
            "train_step_s": seconds,
            "train_memory_mb": memory / 2**20,
            "inference_s": infer(net, batch, device, args.reps),
        }
        print(name, results[name], flush=True)
    ratio = results["raft"]["train_memory_mb"] / results["deq_flow"]["train_memory_mb"]
    results["memory_ratio_raft_over_deq"] = ratio
    print(f"training memory, explicit / DEQ: {ratio:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
