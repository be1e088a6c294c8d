"""DEQ-DDIM sampling: the DDIM step, the joint system's fixed point, batched calls."""

import math

import numpy as np
import pytest
import torch

from projects.deq_ddim.net import NoiseSchedule, UNet
from projects.deq_ddim.sampling import (
    PARAMS,
    DDIMSystem,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    deq_sample,
)
from torchdeq import get_deq


class TinyModel(torch.nn.Module):
    """A tiny UNet as a noise model whose clean-image predictions stay inside (-1, 1).

    An untrained UNet's noise predictions make ``x0_hat`` explode at high noise (every value
    clipped, the chain insensitive to its input); this one predicts the noise that goes with
    ``x0_hat = 0.8 tanh(unet(x, t) + 0.3 x)``.
    """

    def __init__(self, seed: int, dtype):
        super().__init__()
        torch.manual_seed(seed)
        self.unet = UNet(channels=(4, 8), groups=2, attention=True).to(dtype)
        for p in self.unet.parameters():  # the zero-initialised output layers get weights
            if p.dim() > 1 and not p.detach().any():
                torch.nn.init.normal_(p, std=0.3)
        self.abar = NoiseSchedule(1000).alphas_cumprod.to(dtype)

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        x0 = 0.8 * torch.tanh(self.unet(x, t) + 0.3 * x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def tiny_unet(seed: int = 0, dtype=torch.float64) -> TinyModel:
    return TinyModel(seed, dtype).eval()


def test_ddim_step_matches_a_hand_computed_step():
    # linear betas by hand: abar_t = prod_{s<=t} (1 - beta_s)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    sched = NoiseSchedule(1000, "linear")
    taus = ddim_timesteps(4).tolist()  # [249, 499, 749, 999]
    assert taus == [249, 499, 749, 999]
    x = torch.tensor([[[[0.3, -2.0]]]], dtype=torch.float64)

    def model(x, t):  # a fixed "noise prediction" that depends on x and t
        return 0.5 * x + t.double().view(-1, 1, 1, 1) / 1000

    for clip in (False, True):
        sys = DDIMSystem(model, sched, steps=4, clip=clip)
        for k, (t, t_next) in enumerate([(999, 749), (749, 499), (499, 249), (249, None)]):
            a, a_next = abar[t], (abar[t_next] if t_next is not None else 1.0)
            out = []
            for v in x.flatten().tolist():
                eps = 0.5 * v + t / 1000
                x0 = (v - math.sqrt(1 - a) * eps) / math.sqrt(a)
                if clip:
                    x0 = min(max(x0, -1.0), 1.0)
                    eps = (v - math.sqrt(a) * x0) / math.sqrt(1 - a)
                out.append(math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps)
            got = sys.step(x, k).flatten().tolist()
            assert got == pytest.approx(out, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("param", PARAMS)
def test_joint_fixed_point_is_the_sequential_chain(param):
    net = tiny_unet()
    sched = NoiseSchedule(1000)
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    steps = 6
    with torch.no_grad():
        reference, traj, x0s = ddim_sample(net, sched, x_T, steps, return_trajectory=True)
        sys = DDIMSystem(net, sched, steps, param=param)
        # the chain itself is a fixed point of the map
        z_chain = sys.state_of(traj, x0s)
        assert torch.allclose(sys(z_chain, x_T), z_chain, atol=1e-12, rtol=0)
        # and a solver finds it from the cold start, to 1e-8
        layer = get_deq(f_solver="anderson", f_solver_kwargs={"m": 5, "lam": 1e-8})
        sample, info, _ = deq_sample(sys, x_T, layer, iters=60, tol=1e-12)
        assert (sample - reference).abs().max() < 1e-8
        assert info["nstep"].shape == (3,)
        # Picard is exact after T iterations and not before
        assert (sys.sample_of(sys.picard(x_T, steps), x_T) - reference).abs().max() < 1e-12
        assert (sys.sample_of(sys.picard(x_T, steps - 1), x_T) - reference).abs().max() > 1e-6


def test_batched_calls_equal_per_timestep_calls():
    net = tiny_unet(seed=2)
    sys = DDIMSystem(net, NoiseSchedule(1000), steps=5)
    xs = torch.randn(2, 5, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        batched = sys.batched_x0(xs)
        for k in range(5):
            one = sys.predict_x0(xs[:, k], torch.full((2,), k))
            assert torch.allclose(batched[:, k], one, atol=1e-13, rtol=0)
        # chunked calls give the same map
        sys.chunk = 3
        assert torch.allclose(sys.batched_x0(xs), batched, atol=1e-13, rtol=0)


def test_deq_sample_traces_reach_the_reference():
    net = tiny_unet(seed=3)
    sched = NoiseSchedule(1000)
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        reference = ddim_sample(net, sched, x_T, 5)
    sys = DDIMSystem(net, sched, 5, param="x")
    layer = get_deq(f_solver="fixed_point_iter")
    _, _, traces = deq_sample(sys, x_T, layer, iters=5, reference=reference)
    assert traces["rms"].shape == (2, 6)
    assert traces["rms"][:, 0].min() > 1e-3 and traces["rms"][:, -1].max() < 1e-12


def test_coarse_warm_start_is_exact_when_as_fine_as_the_chain():
    net = tiny_unet(seed=4)
    sched = NoiseSchedule(1000)
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        _, traj, x0s = ddim_sample(net, sched, x_T, 4, return_trajectory=True)
        for param in PARAMS:
            sys = DDIMSystem(net, sched, 4, param=param)
            z = sys.coarse_init(x_T, 4)
            assert torch.allclose(z, sys.state_of(traj, x0s), atol=1e-12, rtol=0)
            assert sys.coarse_init(x_T, 2).shape == z.shape


def test_ddpm_sample_is_finite_and_clipped_at_the_end():
    net = tiny_unet(seed=5, dtype=torch.float32)
    sched = NoiseSchedule(50)
    with torch.no_grad():
        x = ddpm_sample(net, sched, torch.randn(2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-5


def test_bad_options_name_the_choices():
    with pytest.raises(ValueError, match="valid choices"):
        DDIMSystem(lambda x, t: x, NoiseSchedule(10), 2, param="eps")
    with pytest.raises(ValueError, match="valid choices"):
        NoiseSchedule(10, "quadratic")


def test_triangular_anderson_solves_a_block_triangular_system():
    from projects.deq_ddim.solvers import triangular_anderson

    gen = torch.Generator().manual_seed(0)
    T, D = 6, 5
    # a strictly block-lower-triangular affine map with large gains, like the DDIM chain's
    A = torch.randn(T * D, T * D, dtype=torch.float64, generator=gen)
    mask = torch.kron(torch.tril(torch.ones(T, T), -1), torch.ones(D, D)).double()
    A = 1.5 * A * mask / D**0.5
    b = torch.randn(2, T * D, dtype=torch.float64, generator=gen)
    exact = torch.linalg.solve(torch.eye(T * D, dtype=torch.float64) - A, b.T).T
    z, _, info = triangular_anderson(lambda z: z @ A.T + b, torch.zeros_like(b), blocks=T,
                                     m=T, lam=0.0, tol=1e-10, max_iter=40)  # fmt: skip
    assert torch.allclose(z, exact, atol=1e-8)
    assert info["nstep"].shape == (2,)
    # a DEQ takes it as its solver, with the block count per call
    layer = get_deq(f_solver=triangular_anderson, f_solver_kwargs={"m": T, "lam": 0.0})
    (z2,), _ = layer.eval()(lambda z: z @ A.T + b, torch.zeros_like(b),
                            solver_kwargs={"blocks": T, "f_tol": 1e-10, "f_max_iter": 40})
    assert torch.allclose(z2, exact, atol=1e-8)
    with pytest.raises(ValueError, match="equal blocks"):
        triangular_anderson(lambda z: z, torch.zeros(1, 7), blocks=3)
