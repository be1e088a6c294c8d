"""Inversion: find the noise ``x_T`` from which DDIM generates a given image.

Three ways (Pokle, Geng, Kolter, NeurIPS 2022, arXiv 2210.12867, section 4):

* :func:`ddim_invert`: the analytic DDIM inversion, the probability-flow ODE run forward with
  the same ``T`` steps (each step uses the noise predicted at its start); the starting point
  and reference of the other two;
* :func:`invert_unrolled`: gradient descent on ``||DDIM(x_T) - x_0||^2`` with backpropagation
  through the ``T`` sequential steps (the activations of all ``T`` calls are kept);
* :func:`invert_deq`: the same descent through the DEQ-DDIM equilibrium: each step solves the
  joint system (warm-started from the previous step's solution) and attaches the gradient
  with torchdeq's phantom or implicit (IFT) gradient; the map's one batched evaluation is
  recomputed timestep by timestep in the backward pass (gradient checkpointing), so the
  gradient needs the activations of one chunk of ``B`` images instead of ``T``.

Each records the loss and PSNR after every optimisation step with the elapsed time, and the
peak bytes held for the backward pass (:class:`SavedBytes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from projects.deq_ddim.net import NoiseSchedule
from projects.deq_ddim.sampling import DDIMSystem, ddim_sample
from torchdeq import get_deq

__all__ = [
    "InversionResult",
    "SavedBytes",
    "ddim_invert",
    "invert_deq",
    "invert_unrolled",
    "psnr",
]

Model = Callable[[Tensor, Tensor], Tensor]


def psnr(x: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in ``[-1, 1]`` (peak-to-peak 2), shape (B,)."""
    mse = (x - target).double().pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-20))


class SavedBytes:
    """Peak bytes of the tensors autograd holds for backward while the context is open.

    Counts each storage once, from the time an operation saves it until the graph releases
    it, so recomputation inside the backward pass (checkpointing) is counted when it happens.
    A device-independent stand-in for peak memory (on CUDA compare
    ``torch.cuda.max_memory_allocated``).

    Example:
        >>> x = torch.randn(100, requires_grad=True)
        >>> with SavedBytes() as mem:
        ...     (x * x).sum().backward()
        >>> mem.peak
        400
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}

    def _pack(self, t: Tensor) -> Any:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        entry = self._refs.setdefault(key, [0, storage.nbytes()])
        if entry[0] == 0:
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Held(t, self, key)

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Held:
    __slots__ = ("tensor", "owner", "key")

    def __init__(self, tensor: Tensor, owner: SavedBytes, key: int):
        self.tensor, self.owner, self.key = tensor, owner, key

    def __del__(self) -> None:
        self.owner._release(self.key)


@dataclass
class InversionResult:
    """The recovered noise and the optimisation's history (one entry per step, step 0 first)."""

    x_T: Tensor
    loss: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    per_image_psnr: Tensor | None = None


@torch.no_grad()
def ddim_invert(model: Model, schedule: NoiseSchedule, x0: Tensor, steps: int) -> Tensor:
    """The analytic DDIM inversion of images ``x0`` (B, C, H, W): ``T`` model calls.

    Runs the DDIM update backwards in time, from ``abar = 1`` up to ``tau_T``, with the noise
    predicted at the start of each step (at the first, the clean image at ``tau_1``).

    Returns:
        Tensor: ``x_T`` (B, C, H, W).
    """
    sys = DDIMSystem(model, schedule, steps, clip=False).to(x0.device)
    abar = sys.abar.flip(0)  # tau_1 .. tau_T
    taus = sys.taus.flip(0)
    x, a_prev = x0, 1.0
    for i in range(steps):
        t = taus[max(i - 1, 0)]
        eps = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device))
        a_prev_t = torch.as_tensor(a_prev, dtype=x.dtype, device=x.device)
        x0_hat = (x - (1 - a_prev_t).sqrt() * eps) / a_prev_t.sqrt()
        a = abar[i].to(x.dtype)
        x = a.sqrt() * x0_hat + (1 - a).sqrt() * eps
        a_prev = abar[i]
    return x


def _history(result: InversionResult, loss: float, sample: Tensor, target: Tensor, t0: float):
    result.loss.append(loss)
    result.psnr.append(float(psnr(sample, target).mean()))
    result.seconds.append(time.perf_counter() - t0)


def invert_unrolled(
    model: Model,
    schedule: NoiseSchedule,
    target: Tensor,
    steps: int,
    x_T: Tensor,
    iters: int = 20,
    lr: float = 0.01,
    clip: bool = True,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
) -> InversionResult:
    """Adam on ``x_T`` with backpropagation through the unrolled sequential DDIM chain.

    Args:
        model (callable): ``eps_theta``; its parameters are not updated.
        schedule (NoiseSchedule): The training schedule.
        target (Tensor): Images to invert (B, C, H, W) in ``[-1, 1]``.
        steps (int): ``T``.
        x_T (Tensor): Starting noise (e.g. :func:`ddim_invert`).
        iters (int): Optimisation steps. Default 20.
        lr (float): Adam's learning rate. Default 0.01.
        clip (bool): Clip ``x0_hat`` in the chain. Default True.
        optimizer (callable): The optimiser's class (``optimizer([x_T], lr=lr)``). Default Adam.

    Returns:
        InversionResult: ``psnr[k]`` is the reconstruction after ``k`` steps.
    """
    return _descend(
        lambda x, k: ddim_sample(model, schedule, x, steps, clip), target, x_T, iters, lr, optimizer
    )


def invert_deq(
    model: Model,
    schedule: NoiseSchedule,
    target: Tensor,
    steps: int,
    x_T: Tensor,
    deq: Mapping[str, Any] | None = None,
    iters: int = 20,
    lr: float = 0.01,
    clip: bool = True,
    param: str = "x0",
    first_iters: int | None = None,
    solve_iters: int | None = None,
    checkpoint: bool = True,
    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
) -> InversionResult:
    """Adam on ``x_T`` through the DEQ-DDIM equilibrium with torchdeq's gradients.

    Each step solves the joint system for the current ``x_T`` (``first_iters`` iterations from
    the zero state at the first step, ``solve_iters`` warm-started from the last solution
    afterwards), then ``torchdeq`` attaches the gradient (``deq.grad`` phantom steps, or IFT
    with ``deq.ift=True``).

    Args:
        model (callable): ``eps_theta``; its parameters are not updated.
        schedule (NoiseSchedule): The training schedule.
        target (Tensor): Images to invert (B, C, H, W) in ``[-1, 1]``.
        steps (int): ``T``.
        x_T (Tensor): Starting noise.
        deq (Mapping, optional): Options of :func:`torchdeq.get_deq` (the ``deq`` node).
        iters (int): Optimisation steps. Default 20.
        lr (float): Adam's learning rate. Default 0.01.
        clip (bool): Clip ``x0_hat``. Default True.
        param (str): Parametrisation of the joint state (see :class:`DDIMSystem`).
        first_iters (int, optional): Solver iterations of the first solve (default ``T``).
        solve_iters (int, optional): Solver iterations of later, warm-started solves (default
            the DEQ's ``f_max_iter``).
        checkpoint (bool): Recompute the map's noise-model calls chunk by chunk in the backward
            pass instead of keeping all ``B * T`` activations. Default True.
        optimizer (callable): The optimiser's class (``optimizer([x_T], lr=lr)``). Default Adam.

    Returns:
        InversionResult: ``psnr[k]`` is the reconstruction after ``k`` steps.
    """
    layer = get_deq(deq or {})
    layer.train()  # attach gradients (phantom or IFT) to the solution
    chunk = target.shape[0]
    system = DDIMSystem(model, schedule, steps, clip, param, chunk, checkpoint)
    system = system.to(target.device)
    warm = {"z": system.init(x_T.detach())}
    first = steps if first_iters is None else first_iters

    def generate(x: Tensor, k: int) -> Tensor:
        budget = first if k == 0 else solve_iters
        kwargs = {} if budget is None else {"f_max_iter": budget}
        states, _ = layer(lambda s: system(s, x), warm["z"], solver_kwargs=kwargs)
        warm["z"] = states[-1].detach()  # the next step starts from this solution
        return system.sample_of(states[-1], x)

    return _descend(generate, target, x_T, iters, lr, optimizer)


def _descend(
    generate: Callable[[Tensor, int], Tensor],
    target: Tensor,
    x_T: Tensor,
    iters: int,
    lr: float,
    optimizer: Callable[..., torch.optim.Optimizer],
) -> InversionResult:
    """Descends ``||generate(x_T, k) - target||^2`` in ``x_T``, recording every step."""
    x_T = x_T.detach().clone().requires_grad_()
    opt = optimizer([x_T], lr=lr)
    result = InversionResult(x_T)
    t0 = time.perf_counter()
    for k in range(iters + 1):
        with SavedBytes() as mem:
            sample = generate(x_T, k)
            loss = (sample - target).pow(2).mean()
            if k < iters:
                opt.zero_grad(set_to_none=True)
                loss.backward()
        result.peak_bytes = max(result.peak_bytes, mem.peak)
        _history(result, float(loss.detach()), sample.detach(), target, t0)
        if k < iters:
            opt.step()
    result.x_T = x_T.detach()
    result.per_image_psnr = psnr(sample.detach(), target)
    return result
