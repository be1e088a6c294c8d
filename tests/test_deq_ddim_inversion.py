"""Inversion through the DEQ-DDIM equilibrium and through the unrolled chain."""

import torch

from projects.deq_ddim.inversion import SavedBytes, ddim_invert, invert_deq, invert_unrolled, psnr
from projects.deq_ddim.net import NoiseSchedule
from projects.deq_ddim.sampling import ddim_sample
from tests.test_deq_ddim_sampling import tiny_unet


def _problem(steps=4):
    net = tiny_unet(seed=7, dtype=torch.float32)
    for p in net.parameters():
        p.requires_grad_(False)
    sched = NoiseSchedule(1000)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        target = ddim_sample(net, sched, torch.randn(2, 1, 4, 4, generator=gen), steps)
    return net, sched, target


class GaussianModel(torch.nn.Module):
    """The exact noise predictor for data ``x_0 ~ N(0, s^2 I)``: the DDIM ODE is known."""

    def __init__(self, s=0.5):
        super().__init__()
        self.s2 = s * s
        self.abar = NoiseSchedule(1000).alphas_cumprod.float()

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * self.s2 + 1 - a)


def test_analytic_inversion_inverts_the_ode():
    model, sched = GaussianModel(), NoiseSchedule(1000)
    target = 0.5 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for steps, floor in ((10, 20.0), (100, 35.0)):
        x_T = ddim_invert(model, sched, target, steps)
        recon = ddim_sample(model, sched, x_T, steps, clip=False)
        # more steps, closer to the ODE: the inversion becomes exact
        assert psnr(recon, target).min() > floor, steps
    # and x_T is the standard-normal noise the ODE maps the target to
    assert abs(float(x_T.std()) - 1.0) < 0.3


def test_inversion_reduces_the_loss():
    net, sched, target = _problem()
    start = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    unrolled = invert_unrolled(net, sched, target, 4, start, iters=6, lr=0.2)
    assert unrolled.loss[-1] < 0.5 * unrolled.loss[0]
    # the one-step phantom gradient (IFT: the next test)
    through = invert_deq(net, sched, target, 4, start, deq={"grad": 1}, iters=6, lr=0.2,
                         solve_iters=2)  # fmt: skip
    assert through.loss[-1] < 0.5 * through.loss[0]
    assert through.psnr[-1] > through.psnr[0]


def test_deq_gradient_with_ift_matches_backprop_through_the_chain():
    # at the exact fixed point the implicit gradient is the chain's gradient
    net, sched, target = _problem(steps=3)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    sgd = torch.optim.SGD
    a = invert_unrolled(net, sched, target, 3, x_T, iters=1, lr=100.0, optimizer=sgd)
    b = invert_deq(net, sched, target, 3, x_T, deq={"ift": True, "b_max_iter": 10, "b_tol": 0},
                   iters=1, lr=100.0, first_iters=10, solve_iters=10, optimizer=sgd)  # fmt: skip
    # one SGD step: x_T - lr * grad; equal steps mean equal gradients
    step = (a.x_T - x_T).abs().max()
    assert step > 1e-4
    assert torch.allclose(a.x_T - x_T, b.x_T - x_T, atol=1e-5 * float(step), rtol=1e-4)
    assert abs(a.loss[0] - b.loss[0]) < 1e-6


def test_saved_bytes_counts_what_backward_holds():
    x = torch.randn(1000, requires_grad=True)
    with SavedBytes() as mem:
        y = (x * 2).exp()  # exp saves its output: 4000 bytes
        y.sum().backward()
    assert mem.peak == 4000 and mem.live == 0
