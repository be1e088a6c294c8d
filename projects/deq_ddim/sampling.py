"""DDIM and DDPM sampling, and DEQ-DDIM: the whole DDIM chain solved as one fixed point.

Sequential DDIM (Song, Meng, Ermon, ICLR 2021, arXiv 2010.02502) with ``eta = 0`` runs ``T``
steps on a subsequence ``tau_T > ... > tau_1`` of the training steps. Each step predicts the
clean image ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, clips it to ``[-1, 1]``
(``clip=True``), recovers the noise consistent with the clipped ``x0_hat`` and moves to
``x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat``, which is the affine step

    ``x_{t'} = c_t x_t + d_t x0_hat(x_t)``,  ``c_t = sqrt(1 - abar_t') / sqrt(1 - abar_t)``,
    ``d_t = sqrt(abar_t') - c_t sqrt(abar_t)``.

Without clipping it is exactly Song et al.'s update. The last step goes to ``abar = 1``, so the
sample is the last clipped ``x0_hat``.

DEQ-DDIM (Pokle, Geng, Kolter, NeurIPS 2022, arXiv 2210.12867) solves the ``T`` steps jointly:
the state holds all of them for a batch of starts, and one evaluation of the map recomputes
every step from the current state in one batched call of the noise model (batch ``B * T``).
Its Jacobian is strictly block-lower-triangular, so plain fixed-point (Picard) iteration is
exact after ``T`` iterations. :class:`DDIMSystem` offers three parametrisations of the state:

* ``'x'``: the trajectory ``(x_{tau_{T-1}}, ..., x_0)`` (the paper's); the map's gain from one
  step to the next is about ``sqrt(abar_t' / abar_t)``, up to ~150 at the noisy end, so
  residuals are badly scaled across timesteps;
* ``'y'``: the same trajectory divided by ``sqrt(abar)`` (the probability-flow ODE's
  variable), whose entries grow to ``1 / sqrt(abar_T)`` instead;
* ``'x0'``: the ``T`` clipped predictions ``x0_hat``; the trajectory is the affine recurrence
  above run from ``x_T`` (cheap, no network call), every entry lies in ``[-1, 1]`` and a change
  of one prediction moves every later state by at most its own size (in ``y = x / sqrt(abar)``
  the step is the convex combination ``y_t' = r y_t + (1 - r) x0_hat``, ``r = sigma_t'/sigma_t``).
  Picard iteration here propagates the linear part of the whole chain in one iteration, as
  the cumulative-sum form of ParaDiGMS (Shih et al., NeurIPS 2023, arXiv 2305.16317) does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from projects.deq_ddim.net import NoiseSchedule

__all__ = [
    "DDIMSystem",
    "PARAMS",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "deq_sample",
    "rms",
]

PARAMS = ("x", "y", "x0")
Model = Callable[[Tensor, Tensor], Tensor]


def ddim_timesteps(steps: int, train_steps: int = 1000) -> Tensor:
    """The DDIM subsequence ``tau_1 < ... < tau_T``: ``round(i * train_steps / T) - 1``.

    ``tau_T = train_steps - 1``, so the chain starts from (nearly) pure noise.

    Example:
        >>> ddim_timesteps(4, 1000).tolist()
        [249, 499, 749, 999]
    """
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be in [1, {train_steps}], got {steps}")
    i = torch.arange(1, steps + 1, dtype=torch.float64)
    return (torch.round(i * train_steps / steps) - 1).long()


def rms(a: Tensor, b: Tensor) -> Tensor:
    """Root-mean-square difference over everything."""
    return (a - b).double().pow(2).mean().sqrt()


class DDIMSystem(nn.Module):
    """The DDIM chain of ``T`` steps as one fixed-point system for a batch of starts.

    Steps are numbered ``k = 0 .. T-1`` in sampling order (step ``k`` goes from ``tau_{T-k}`` to
    ``tau_{T-k-1}``; ``tau_0`` means ``abar = 1``). The state is ``(B, T, C, H, W)``: batch
    first, so a torchdeq solver keeps per-sample statistics.

    Args:
        model (callable): ``eps_theta(x, t)`` on ``(N, C, H, W)`` and integer steps ``(N,)``.
        schedule (NoiseSchedule): The training schedule.
        steps (int): ``T``, the number of DDIM steps.
        clip (bool): Clip ``x0_hat`` to ``[-1, 1]``. Default True.
        param (str): The state's parametrisation, one of :data:`PARAMS`. Default ``'x0'``.
        chunk (int, optional): Largest batch of one noise-model call; a map evaluation over
            ``B * T`` images is split into such calls (memory), all in one iteration.
        checkpoint (bool): When autograd records, keep only each chunk's input and recompute
            its noise-model call in the backward pass (gradient checkpointing). Default False.

    Example:
        >>> sched = NoiseSchedule(1000)
        >>> sys = DDIMSystem(lambda x, t: 0 * x, sched, steps=5)
        >>> x_T = torch.randn(2, 1, 4, 4)
        >>> z = sys.picard(x_T, iters=5)
        >>> bool(torch.allclose(sys.sample_of(z, x_T), ddim_sample(sys.model, sched, x_T, 5)))
        True
    """

    def __init__(
        self,
        model: Model,
        schedule: NoiseSchedule,
        steps: int,
        clip: bool = True,
        param: Literal["x", "y", "x0"] = "x0",
        chunk: int | None = None,
        checkpoint: bool = False,
    ):
        super().__init__()
        if param not in PARAMS:
            raise ValueError(f"unknown parametrisation {param!r}; valid choices: {PARAMS}")
        self.model = model
        self.schedule = schedule
        self.steps = steps
        self.clip = clip
        self.param = param
        self.chunk = chunk
        self.checkpoint = checkpoint
        taus = ddim_timesteps(steps, schedule.steps).flip(0)  # sampling order tau_T .. tau_1
        abar = schedule.alphas_cumprod[taus]
        abar_next = torch.cat([abar[1:], abar.new_ones(1)])
        c = (1 - abar_next).sqrt() / (1 - abar).sqrt()
        d = abar_next.sqrt() - c * abar.sqrt()
        self.register_buffer("taus", taus, persistent=False)
        for name, v in dict(abar=abar, abar_next=abar_next, c=c, d=d).items():
            self.register_buffer(name, v, persistent=False)

    # ---------------------------------------------------------------------------------------
    # the steps

    def _coef(self, name: str, like: Tensor, k: Tensor | int | slice | None = None) -> Tensor:
        v = getattr(self, name)
        v = v if k is None else v[k]
        v = v.to(like.dtype)
        return v.view(*v.shape, *([1] * (like.dim() - v.dim())))

    def predict_x0(self, x: Tensor, k: Tensor) -> Tensor:
        """Clipped ``x0_hat`` of ``x`` (N, C, H, W) at steps ``k`` (N,) in one model call."""
        outs = []
        n = x.shape[0]
        size = self.chunk or n
        for s in range(0, n, size):
            xs, ks = x[s : s + size], k[s : s + size]
            if self.checkpoint and torch.is_grad_enabled() and xs.requires_grad:
                eps = checkpoint(self.model, xs, self.taus[ks], use_reentrant=False)
            else:
                eps = self.model(xs, self.taus[ks])
            a = self._coef("abar", xs, ks)
            x0 = (xs - (1 - a).sqrt() * eps) / a.sqrt()
            outs.append(x0.clamp(-1, 1) if self.clip else x0)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def step(self, x: Tensor, k: int) -> Tensor:
        """One sequential DDIM step ``k`` from ``x`` (B, C, H, W)."""
        ks = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        c, d = self._coef("c", x, k), self._coef("d", x, k)
        return c * x + d * self.predict_x0(x, ks)

    def batched_x0(self, xs: Tensor) -> Tensor:
        """``x0_hat`` of every step's input ``xs`` (B, T, C, H, W) in one batched call."""
        B, T = xs.shape[:2]
        k = torch.arange(T, device=xs.device).repeat(B)
        return self.predict_x0(xs.reshape(B * T, *xs.shape[2:]), k).view(xs.shape)

    # ---------------------------------------------------------------------------------------
    # the joint system

    def inputs_of(self, z: Tensor, x_T: Tensor) -> Tensor:
        """Every step's input ``x_{tau_{T-k}}`` (B, T, C, H, W) implied by the state ``z``."""
        if self.param == "x0":
            xs = [x_T]
            c, d = self._coef("c", x_T), self._coef("d", x_T)
            for k in range(self.steps - 1):
                xs.append(c[k] * xs[-1] + d[k] * z[:, k])
            return torch.stack(xs, dim=1)
        x = z if self.param == "x" else z * self._scale(z)
        return torch.cat([x_T[:, None], x[:, :-1]], dim=1)

    def _scale(self, z: Tensor) -> Tensor:
        """``sqrt(abar)`` of each state entry (the ``'y'`` parametrisation's unit)."""
        return self._coef("abar_next", z[0]).sqrt()

    def forward(self, z: Tensor, x_T: Tensor) -> Tensor:
        """One evaluation of the map: every step recomputed from ``z`` in one batched call."""
        xs = self.inputs_of(z, x_T)
        x0 = self.batched_x0(xs)
        if self.param == "x0":
            return x0
        c, d = self._coef("c", xs[0]), self._coef("d", xs[0])
        nxt = c * xs + d * x0
        return nxt if self.param == "x" else nxt / self._scale(z)

    def sample_of(self, z: Tensor, x_T: Tensor) -> Tensor:
        """The sample ``x_0`` (B, C, H, W) that the state ``z`` stands for (no model call)."""
        if self.param == "x0":
            return z[:, -1]  # the last step goes to abar = 1: x_0 is its x0_hat
        return z[:, -1] if self.param == "x" else z[:, -1] * self._scale(z)[-1]

    def state_of(self, trajectory: Tensor, x0_hats: Tensor) -> Tensor:
        """The state of a trajectory: ``trajectory`` (B, T, ...) holds each step's output."""
        if self.param == "x0":
            return x0_hats
        return trajectory if self.param == "x" else trajectory / self._scale(trajectory)

    def init(self, x_T: Tensor, kind: str = "auto") -> Tensor:
        """An initial state without network calls: ``'zeros'``, ``'repeat'`` (x_T at every
        step) or ``'auto'`` (zeros for ``'x0'``, x_T repeated for ``'x'`` and ``'y'``)."""
        kinds = ("auto", "zeros", "repeat")
        if kind not in kinds:
            raise ValueError(f"unknown init {kind!r}; valid choices: {kinds}")
        shape = (x_T.shape[0], self.steps, *x_T.shape[1:])
        if kind == "zeros" or (kind == "auto" and self.param == "x0"):
            return x_T.new_zeros(shape)
        z = x_T[:, None].expand(shape).clone()
        return z if self.param == "x" else z / self._scale(z)

    def coarse_init(self, x_T: Tensor, coarse: int) -> Tensor:
        """A warm start from a sequential pass of ``coarse`` DDIM steps (``coarse`` calls).

        Each fine step takes the ``x0_hat`` (for ``'x0'``) of the coarse step at or before its
        noise level; for ``'x'``/``'y'`` the fine trajectory is filled with the coarse states
        re-noised along the DDIM direction of that step.
        """
        if not 1 <= coarse <= self.steps:
            raise ValueError(f"coarse must be in [1, {self.steps}], got {coarse}")
        rough = DDIMSystem(self.model, self.schedule, coarse, self.clip, self.param, self.chunk)
        rough = rough.to(x_T.device)
        x, x0s, xs = x_T, [], []
        for k in range(coarse):
            ks = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            xs.append(x)
            x0s.append(rough.predict_x0(x, ks))
            x = rough._coef("c", x, k) * x + rough._coef("d", x, k) * x0s[-1]
        # fine step k uses the coarse step whose noise level is the nearest one at or above it
        pick = torch.searchsorted(-rough.taus.double(), -self.taus.double(), right=True) - 1
        pick = pick.clamp(0, coarse - 1)
        x0 = torch.stack(x0s, 1)[:, pick]
        if self.param == "x0":
            return x0
        a_next = self._coef("abar_next", x0[0])
        src = torch.stack(xs, 1)[:, pick]
        src_abar = rough._coef("abar", x0[0], pick)
        eps = (src - src_abar.sqrt() * x0) / (1 - src_abar).sqrt()
        traj = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return self.state_of(traj, x0)

    def picard(self, x_T: Tensor, iters: int, z0: Tensor | None = None) -> Tensor:
        """``iters`` plain fixed-point iterations (exact after ``T``)."""
        z = self.init(x_T) if z0 is None else z0
        for _ in range(iters):
            z = self(z, x_T)
        return z


def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: Tensor,
    steps: int,
    clip: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Sequential DDIM (``eta = 0``): ``T`` network calls one after the other.

    Args:
        model (callable): ``eps_theta(x, t)``.
        schedule (NoiseSchedule): The training schedule.
        x_T (Tensor): Starting noise (B, C, H, W).
        steps (int): ``T``.
        clip (bool): Clip ``x0_hat`` to ``[-1, 1]``. Default True.
        return_trajectory (bool): Also return every step's output and ``x0_hat``, each
            (B, T, C, H, W). Default False.

    Returns:
        Tensor | tuple: The samples ``x_0`` (B, C, H, W) [, trajectory, x0_hats].
    """
    sys = DDIMSystem(model, schedule, steps, clip)
    x, traj, x0s = x_T, [], []
    for k in range(steps):
        ks = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        x0 = sys.predict_x0(x, ks)
        x = sys._coef("c", x, k) * x + sys._coef("d", x, k) * x0
        traj.append(x)
        x0s.append(x0)
    if return_trajectory:
        return x, torch.stack(traj, 1), torch.stack(x0s, 1)
    return x


def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    x_T: Tensor,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM ancestral sampling over all training steps (Ho et al. 2020), the quality reference.

    Uses the posterior ``q(x_{t-1} | x_t, x0_hat)`` with ``x0_hat`` clipped to ``[-1, 1]`` and
    its variance ``beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``.

    Args:
        model (callable): ``eps_theta(x, t)``.
        schedule (NoiseSchedule): The training schedule.
        x_T (Tensor): Starting noise (B, C, H, W).
        clip (bool): Clip ``x0_hat``. Default True.
        generator (torch.Generator, optional): For the injected noise.

    Returns:
        Tensor: The samples (B, C, H, W).
    """
    betas = schedule.betas
    abar = schedule.alphas_cumprod
    x = x_T
    for t in range(schedule.steps - 1, -1, -1):
        a, a_prev = abar[t], abar[t - 1] if t > 0 else abar.new_tensor(1.0)
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x0 = (x - (1 - a).sqrt().to(x.dtype) * eps) / a.sqrt().to(x.dtype)
        x0 = x0.clamp(-1, 1) if clip else x0
        c0 = (a_prev.sqrt() * betas[t] / (1 - a)).to(x.dtype)
        ct = ((1 - betas[t]).sqrt() * (1 - a_prev) / (1 - a)).to(x.dtype)
        x = c0 * x0 + ct * x
        if t > 0:
            var = ((1 - a_prev) / (1 - a) * betas[t]).to(x.dtype)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + var.sqrt() * noise
    return x


class _Recorder:
    """Wraps the map to record how far the sample of each iterate is from a reference.

    The solver evaluates the map at ``z_0, z_1, ...``; entry ``k`` of the traces belongs to
    ``z_k``, the state after ``k`` parallel iterations (``k`` batched model calls).
    """

    def __init__(self, system: DDIMSystem, x_T: Tensor, reference: Tensor | None):
        self.system, self.x_T, self.reference = system, x_T, reference
        self.rms: list[Tensor] = []
        self.maxabs: list[Tensor] = []

    def __call__(self, z: Tensor) -> Tensor:
        if self.reference is not None:
            diff = (self.system.sample_of(z, self.x_T) - self.reference).double().flatten(1)
            self.rms.append(diff.pow(2).mean(1).sqrt())
            self.maxabs.append(diff.abs().amax(1))
        return self.system(z, self.x_T)


def deq_sample(
    system: DDIMSystem,
    x_T: Tensor,
    layer: nn.Module,
    iters: int,
    z0: Tensor | None = None,
    tol: float = 0.0,
    reference: Tensor | None = None,
) -> tuple[Tensor, Mapping[str, Tensor], dict[str, Tensor]]:
    """DEQ-DDIM: solves the joint system with a torchdeq DEQ layer (its ``f_solver``).

    Args:
        system (DDIMSystem): The joint system.
        x_T (Tensor): Starting noise (B, C, H, W).
        layer (nn.Module): A DEQ from :func:`torchdeq.get_deq` (its solver and options).
        iters (int): Parallel iterations (batched model calls) after the initial state;
            without ``reference`` and ``tol`` exactly that many calls give the returned state,
            otherwise one more call measures the last state.
        z0 (Tensor, optional): Initial state (default :meth:`DDIMSystem.init`).
        tol (float): Stop a sample when its residual norm is below ``tol`` (0: run all).
        reference (Tensor, optional): Sequential DDIM's samples from the same ``x_T``; if
            given, the traces record the RMS and max-abs error of each iterate's sample.

    Returns:
        tuple: The samples (B, C, H, W), the solver's per-sample statistics, and traces
        ``{'rms': (B, K), 'maxabs': (B, K)}`` (K iterates; empty without ``reference``).
    """
    z0 = system.init(x_T) if z0 is None else z0
    record = _Recorder(system, x_T, reference)
    was_training = layer.training
    layer.eval()
    if reference is None and tol <= 0:
        # exactly `iters` calls: the state they produce, z_iters
        opts = {"f_max_iter": iters, "f_tol": 0.0, "return_final": True}
    else:
        # one call more: its input is z_iters, whose error it records; the solver returns
        # each sample's best iterate (the lowest residual) among z_0 .. z_iters
        opts = {"f_max_iter": iters + 1, "f_tol": tol}
    try:
        with torch.no_grad():
            states, info = layer(record, z0, solver_kwargs=opts)
    finally:
        layer.train(was_training)
    traces = {}
    if record.rms:
        traces = {"rms": torch.stack(record.rms, 1), "maxabs": torch.stack(record.maxabs, 1)}
    return system.sample_of(states[-1], x_T), info, traces
