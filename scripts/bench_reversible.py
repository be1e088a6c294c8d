"""The reversible DEQ core on the MDEQ cell: reconstruction error, gradient error, memory, time.

Builds the MDEQ net of ``conf/project/mdeq.yaml`` (Fashion-MNIST sizes, the config's batch) and,
on a random batch, in float32 unless ``--double``:

- reconstruction: runs ``N`` reversible steps from ``z_0`` and inverts them back; prints
  ``||z_0' - z_0|| / ||z_0||`` (the rounding error that the backward pass works with);
- gradient (from a random ``z_0``: from ``z_0 = 0`` the cell's first ReLUs see exactly 0 where
  its zero-initialised GroupNorm biases are, and the stored iteration takes ReLU's subgradient 0
  there while the rebuilt ``z_0`` is off by rounding, so the two differ in those biases'
  gradients by construction, not by error): the relative error of the reversible gradient of a random read-out against
  backpropagation through the same iteration stored in full (``||g_rev - g|| / ||g||`` over
  all parameters);
- memory: the bytes autograd saves for the training forward pass (saved-tensor hooks), for the
  reversible core and for the stored iteration;
- time: process CPU time of one forward + backward of the whole net for the reversible core, the
  one-step gradient and IFT, at the same number of forward calls of the cell.

Usage:
    python scripts/bench_reversible.py
    python scripts/bench_reversible.py --betas 0.5 0.8 --steps 3 6 12
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

from torchdeq import reset_norm
from torchdeq.reversible import _Run
from torchdeq.utils.packing import StatePacker

ROOT = Path(__file__).resolve().parents[1]


def build(overrides: list[str], double: bool):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["project=mdeq", *overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    if double:
        net = net.double()
    x = torch.randn(cfg.data.batch_size, 1, 28, 28, dtype=torch.float64 if double else None)
    return net, x


def cell_of(net, x):
    reset_norm(net)
    xs = net.injection(net.stem(x))
    gen = torch.Generator().manual_seed(2)
    zs = [0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in xs]
    packer = StatePacker(zs)
    return packer.wrap(lambda *z: net.cell(list(z), xs)), packer.pack(zs).detach()


def unrolled(f, z0, beta: float, steps: int):
    y = z = z0
    for _ in range(steps):
        y = torch.lerp(y, f(z), beta)
        z = torch.lerp(z, f(y), beta)
    return z


def accuracy(net, x, betas, steps_list) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    for beta in betas:
        for steps in steps_list:
            f, z0 = cell_of(net, x)
            run = _Run(f, beta)
            y, z, done, _, _ = run.forward(z0, steps, 0.0, False, collect=False)
            with torch.no_grad():
                _, (_, z_back) = run.backward(y, z, done, torch.zeros_like(z), [])
            rec = float(torch.linalg.vector_norm(z_back - z0) / torch.linalg.vector_norm(z0))
            w = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z.dtype)
            deq = _deq(beta, steps)
            f, z0 = cell_of(net, x)
            g_rev = torch.autograd.grad((w * deq(f, z0)[0][-1]).sum(), params, allow_unused=True)
            f, z0 = cell_of(net, x)
            g = torch.autograd.grad((w * unrolled(f, z0, beta, steps)).sum(), params,
                                    allow_unused=True)
            pairs = [(a, b) for a, b in zip(g_rev, g) if b is not None]
            num = sum(float((a - b).pow(2).sum()) for a, b in pairs) ** 0.5
            den = sum(float(b.pow(2).sum()) for _, b in pairs) ** 0.5
            print(f"| {beta} | {steps} | {rec:.1e} | {num / den:.1e} |", flush=True)


def _deq(beta: float, steps: int):
    from torchdeq import get_deq

    return get_deq(core="reversible", beta=beta, f_max_iter=steps, f_tol=0.0)


def saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def memory(net, x, steps: int) -> None:
    for name, fn in (
        ("reversible", lambda f, z0: _deq(0.5, steps)(f, z0)[0][-1]),
        ("stored iteration", lambda f, z0: unrolled(f, z0, 0.5, steps)),
    ):
        f, z0 = cell_of(net, x)
        cell_bytes = saved_bytes(lambda: None)
        b = saved_bytes(lambda f=f, z0=z0, fn=fn: fn(f, z0))
        print(f"| {name} | {steps} | {(b - cell_bytes) / 2**20:.1f} MiB |", flush=True)


def timing(x, double: bool, reps: int) -> None:
    nfe = 6
    setups = {
        "one-step gradient (f_max_iter=6)": ["deq.f_max_iter=6"],
        "IFT (f_max_iter=6, b_max_iter=12)": ["grad=ift", "deq.f_max_iter=6"],
        "reversible (f_max_iter=3, beta=0.5)": ["grad=reversible", f"deq.f_max_iter={nfe // 2}"],
    }
    for name, overrides in setups.items():
        net, _ = build([*overrides, "deq.f_tol=0"], double)
        net.train()

        def step():
            reset_norm(net)
            logits, _ = net(x)
            sum(out.float().mean() for out in logits).backward()

        step()
        best = float("inf")
        for _ in range(reps):
            t0 = time.process_time()
            step()
            best = min(best, time.process_time() - t0)
        print(f"| {name} | {1e3 * best:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net, x = build([], args.double)
    print(f"dtype={'float64' if args.double else 'float32'}, batch={x.shape[0]}, 1 thread\n")
    print("| beta | steps | reconstruction error | gradient error |\n|---|---|---|---|")
    accuracy(net, x, args.betas, args.steps)
    print("\n| autograd | steps | saved |\n|---|---|---|")
    for steps in (3, 12):
        memory(net, x, steps)
    print("\n| training step (forward + backward) | CPU ms |\n|---|---|")
    timing(x, args.double, args.reps)


if __name__ == "__main__":
    main()
