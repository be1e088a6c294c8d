"""A complete DEQ training step: the program of the Get Started page (it runs as a test)."""

import argparse

import torch

from torchdeq import apply_norm, get_deq, reset_norm
from torchdeq.utils import add_deq_args


class DEQDemo(torch.nn.Module):
    """A DEQ layer ``z* = tanh(W z* + x)`` and a linear read-out."""

    def __init__(self, args, width=16, classes=3):
        super().__init__()
        self.cell = torch.nn.Linear(width, width)
        apply_norm(self.cell, args=args)  # weight norm on every Linear / Conv weight
        self.deq = get_deq(args)
        self.decoder = torch.nn.Linear(width, classes)

    def forward(self, x):
        reset_norm(self.cell)  # once per training step
        f = lambda z: torch.tanh(self.cell(z) + x)  # noqa: E731 (the cell closes over x)
        z_out, info = self.deq(f, torch.zeros_like(x))
        return self.decoder(z_out[-1]), info


parser = argparse.ArgumentParser()
add_deq_args(parser)
args = parser.parse_args(["--f_solver", "anderson", "--f_max_iter", "20", "--ift"])

torch.manual_seed(0)
model = DEQDemo(args)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
losses = []
for step in range(3):
    logits, info = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    print(
        f"step {step}: loss {loss.item():.3f}, nstep {info['nstep'].mean().item():.1f}, "
        f"abs residual {info['abs_lowest'].mean().item():.2e}"
    )
