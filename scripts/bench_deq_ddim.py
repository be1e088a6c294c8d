"""Wall clock of sequential DDIM against DEQ-DDIM (the parallel sampler) on one device.

Sequential DDIM makes T noise-model calls of batch B one after the other; DEQ-DDIM makes K
calls of batch B * T (K parallel iterations). On a CPU one call of batch B * T costs about T
calls of batch B, so DEQ-DDIM is about K times slower there; on an accelerator that is not
saturated by batch B the batched call costs little more than one call, and the parallel
sampler wins when K < T. This script measures both, with the cost of one call against its
batch size, on a trained checkpoint (or a freshly initialised model, for timing only)::

    python scripts/bench_deq_ddim.py --ckpt logs/deq_ddim/runs/<time>/checkpoints/last.ckpt
    python scripts/bench_deq_ddim.py --ckpt ... --device cuda --batch 64 --steps 25 50 100
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from projects.deq_ddim.net import NoiseSchedule, UNet
from projects.deq_ddim.sampling import DDIMSystem, ddim_sample, deq_sample
from torchdeq import get_deq


def load_unet(ckpt: str | None, channels: list[int], device: str) -> UNet:
    """The EMA noise model of a DEQ-DDIM checkpoint (or a fresh one without ``ckpt``)."""
    unet = UNet(channels=channels)
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        prefix = "net.unet."
        unet.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return unet.to(device).eval()


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default=None, help="a DEQ-DDIM checkpoint (last.ckpt)")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rms", type=float, default=1e-3, help="agreement that ends a solve")
    parser.add_argument("--m", type=int, default=6, help="Anderson's history")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = load_unet(args.ckpt, args.channels, args.device)
    sched = NoiseSchedule(1000).to(args.device)
    x_T = torch.randn(args.batch, 1, args.size, args.size, device=args.device)
    rows = []
    with torch.no_grad():
        for T in args.steps:
            batch_one = torch.zeros(args.batch, dtype=torch.long, device=args.device)
            one = timed(lambda: unet(x_T, batch_one), args.device, args.repeats)
            xs = x_T.repeat(T, 1, 1, 1)
            ts = torch.zeros(len(xs), dtype=torch.long, device=args.device)
            big = timed(lambda: unet(xs, ts), args.device, args.repeats)
            reference = ddim_sample(unet, sched, x_T, T)
            seq = timed(lambda: ddim_sample(unet, sched, x_T, T), args.device, args.repeats)
            system = DDIMSystem(unet, sched, T).to(args.device)
            layer = get_deq(f_solver="anderson", f_solver_kwargs={"m": args.m})
            # iterations to the agreement, then the solve with exactly that budget is timed
            _, _, traces = deq_sample(system, x_T, layer, T, reference=reference)
            rms = traces["rms"].pow(2).mean(0).sqrt().tolist()
            k = next((i for i, v in enumerate(rms) if v < args.rms), T)
            par = timed(lambda: deq_sample(system, x_T, layer, k), args.device, args.repeats)
            rows.append(
                dict(T=T, iters=k, call_s=one[0], batched_call_s=big[0], sequential_s=seq[0],
                     sequential_cpu_s=seq[1], deq_s=par[0], deq_cpu_s=par[1],
                     speedup=seq[0] / par[0], batched_over_single=big[0] / one[0])  # fmt: skip
            )
            r = rows[-1]
            print(
                f"T={T:3d}: DEQ-DDIM {k:2d} iterations to RMS<{args.rms:g}; one call "
                f"{1e3 * r['call_s']:.2f} ms, batched (x{T}) {1e3 * r['batched_call_s']:.1f} ms "
                f"({r['batched_over_single']:.1f}x); sequential {r['sequential_s']:.3f} s, "
                f"DEQ {r['deq_s']:.3f} s: speed-up {r['speedup']:.2f}x",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=args.device, batch=args.batch, rows=rows), f, indent=1)
    if not math.isfinite(sum(r["speedup"] for r in rows)):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()
