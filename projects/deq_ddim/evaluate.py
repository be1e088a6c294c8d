"""The evaluation of a trained noise model: agreement, sample quality and inversion.

* Agreement: RMS and max-abs difference between DEQ-DDIM's and sequential DDIM's samples from
  the same ``x_T`` after each parallel iteration, for several ``T``, next to Picard iteration.
* Quality: Frechet distance (Heusel et al., NeurIPS 2017, arXiv 1706.08500) between generated
  and test images in the penultimate-layer features of a small classifier trained here with a
  fixed seed (:class:`FeatureNet`), for sequential DDIM and DEQ-DDIM at a fixed budget
  (and DDPM with all training steps when asked).
* Inversion: :mod:`projects.deq_ddim.inversion` through the equilibrium and through the
  unrolled chain, both from the analytic inversion.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from projects.deq_ddim.inversion import ddim_invert, invert_deq, invert_unrolled, psnr
from projects.deq_ddim.net import NoiseSchedule
from projects.deq_ddim.sampling import DDIMSystem, ddim_sample, ddpm_sample, deq_sample
from torchdeq import get_deq

__all__ = [
    "FeatureNet",
    "agreement_curves",
    "evaluate",
    "first_below",
    "frechet_distance",
    "train_feature_net",
]

log = logging.getLogger(__name__)


class FeatureNet(nn.Module):
    """A small CNN classifier; :meth:`features` gives its penultimate layer (``dim`` values).

    Example:
        >>> FeatureNet(1, 10).features(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 64])
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * width, dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_feature_net(
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    epochs: int = 2,
    seed: int = 0,
    dim: int = 64,
    batch_size: int = 128,
    lr: float = 2e-3,
) -> tuple[FeatureNet, float]:
    """Trains :class:`FeatureNet` with Adam from a fixed seed; returns it and its test accuracy."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x, y = train
        classes = int(max(y.max(), test[1].max())) + 1
        net = FeatureNet(x.shape[1], classes, dim=dim).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        _fit(net, opt, x, y, epochs, batch_size, gen)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(c).argmax(1) for c in test[0].split(1000)])
    return net, float((pred == test[1]).float().mean())


def _fit(net, opt, x, y, epochs, batch_size, gen) -> None:
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(x.device)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` of feature sets.

    Example:
        >>> x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
        >>> frechet_distance(x, x) < 1e-6
        True
    """
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(sa)
    root_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp_min(0).sqrt().sum()
    return float(mu @ mu + sa.trace() + sb.trace() - 2 * cross)


def first_below(curve: Sequence[float], level: float) -> int | None:
    """The first index whose value is below ``level`` (None if none is)."""
    return next((k for k, v in enumerate(curve) if v < level), None)


def _batch_rms(traces: Mapping[str, Tensor]) -> tuple[list[float], list[float]]:
    """RMS over the whole batch and max-abs over the batch, per iterate."""
    rms = traces["rms"].pow(2).mean(0).sqrt()
    return rms.tolist(), traces["maxabs"].amax(0).tolist()


def agreement_curves(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_T: Tensor,
    steps: Sequence[int],
    deq: Mapping[str, Any] | None,
    param: str = "x0",
    iters: Mapping[int, int] | None = None,
    clip: bool = True,
    stop_rms: float = 1e-6,
) -> dict[int, dict[str, Any]]:
    """RMS / max-abs of DEQ-DDIM (the ``deq`` solver) and Picard against sequential DDIM.

    Args:
        model (nn.Module): ``eps_theta``.
        schedule (NoiseSchedule): The training schedule.
        x_T (Tensor): Starting noise (B, C, H, W), shared by every curve.
        steps (Sequence[int]): The ``T`` values.
        deq (Mapping, optional): The DEQ options (solver) of DEQ-DDIM.
        param (str): Parametrisation of the state. Default ``'x0'``.
        iters (Mapping[int, int], optional): Iterations per ``T`` (default ``T``).
        clip (bool): Clip ``x0_hat``. Default True.
        stop_rms (float): A curve stops once its batch RMS is below this (the remaining
            iterations change nothing measurable). Default 1e-6.

    Returns:
        dict: Per ``T``: ``deq_rms``, ``deq_maxabs``, ``picard_rms``, ``picard_maxabs`` (lists,
        entry ``k`` after ``k`` parallel iterations), ``final_rms`` / ``final_maxabs`` of the
        samples the DEQ returned, and the CPU ``seconds`` of each sampler.
    """
    layer = get_deq(deq or {})
    out = {}
    for T in steps:
        with torch.no_grad():
            t0 = time.process_time()
            reference = ddim_sample(model, schedule, x_T, T, clip)
            seq_s = time.process_time() - t0
        system = DDIMSystem(model, schedule, T, clip, param).to(x_T.device)
        n = (iters or {}).get(T, T)
        # the solver stops a sample once its residual norm says the state has settled
        tol = stop_rms * math.sqrt(T * x_T[0].numel())
        t0 = time.process_time()
        sample, info, traces = deq_sample(system, x_T, layer, n, tol=tol, reference=reference)
        deq_s = time.process_time() - t0
        diff = (sample - reference).double()
        d_rms, d_max = _batch_rms(traces)
        picard = get_deq(f_solver="fixed_point_iter", f_solver_kwargs={})
        t0 = time.process_time()
        _, _, p_traces = deq_sample(system, x_T, picard, T, tol=tol, reference=reference)
        p_s = time.process_time() - t0
        p_rms, p_max = _batch_rms(p_traces)
        out[T] = dict(
            deq_rms=d_rms, deq_maxabs=d_max, picard_rms=p_rms, picard_maxabs=p_max,
            final_rms=float(diff.pow(2).mean().sqrt()), final_maxabs=float(diff.abs().max()),
            seconds=dict(sequential=seq_s, deq=deq_s, picard=p_s),
            nstep=info["nstep"].tolist(),
        )  # fmt: skip
        log.info(
            "T=%d: DEQ rms %s after %d iterations; first below 1e-3 at %s (Picard %s)",
            T, f"{d_rms[-1]:.2e}", len(d_rms) - 1, first_below(d_rms, 1e-3),
            first_below(p_rms, 1e-3),
        )  # fmt: skip
    return out


def _features(net: FeatureNet, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([net.features(c) for c in x.split(1000)])


def evaluate(
    model: nn.Module,
    schedule: NoiseSchedule,
    test_images: Tensor,
    test_labels: Tensor,
    train: tuple[Tensor, Tensor] | None,
    deq: Mapping[str, Any] | None = None,
    steps: int = 50,
    curve_steps: Sequence[int] = (10, 25, 50, 100),
    curve_samples: int = 8,
    curve_iters: Mapping[int, int] | None = None,
    param: str = "x0",
    clip: bool = True,
    budget: int = 15,
    stop_rms: float = 1e-5,
    fd_samples: int = 128,
    fd_features: int = 32,
    ddpm_samples: int = 0,
    grid_samples: int = 64,
    classifier_epochs: int = 2,
    inversion_images: int = 16,
    inversion_iters: int = 20,
    inversion_lr: float = 0.01,
    inversion_solve_iters: int = 3,
    inversion_first_iters: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Runs the whole evaluation; returns scalar metrics and the artefacts' data.

    Args:
        model (nn.Module): ``eps_theta`` (the EMA weights).
        schedule (NoiseSchedule): The training schedule.
        test_images (Tensor): Test images (N, C, H, W) in ``[-1, 1]``.
        test_labels (Tensor): Their labels (N,).
        train (tuple, optional): Training images and labels for the feature classifier
            (None: the classifier trains on the first half of the test set, scored on the rest).
        deq (Mapping, optional): The DEQ options (solver, gradients) of DEQ-DDIM.
        steps (int): The ``T`` of the scalar metrics. Default 50.
        curve_steps (Sequence[int]): The ``T`` values of the agreement curves.
        curve_samples (int): Samples per agreement curve. Default 8.
        curve_iters (Mapping[int, int], optional): DEQ iterations per ``T`` (default ``T``).
        param (str): Parametrisation of the joint state. Default ``'x0'``.
        clip (bool): Clip ``x0_hat``. Default True.
        budget (int): DEQ-DDIM's largest number of iterations for the Frechet distance (the
            paper's 15). Default 15.
        stop_rms (float): DEQ-DDIM stops a sample once the RMS of its residual (over the
            whole state) is below this; the agreement curves stop at a tenth of it.
            Default 1e-5.
        fd_samples (int): Samples per Frechet distance. Default 128.
        fd_features (int): Feature dimension of the classifier. Default 32.
        ddpm_samples (int): DDPM samples (all training steps) for its Frechet distance; 0
            skips it. Default 0.
        grid_samples (int): Samples in the artefact grids. Default 64.
        classifier_epochs (int): Epochs of the feature classifier. Default 2.
        inversion_images (int): Test images to invert. Default 16.
        inversion_iters (int): Optimisation steps of each inversion. Default 20.
        inversion_lr (float): Adam's learning rate of the inversions. Default 0.01.
        inversion_solve_iters (int): Warm-started solver iterations per inversion step.
        inversion_first_iters (int, optional): Solver iterations of the first inversion
            solve (from the zero state; default ``steps``).
        seed (int): Seed of the noise draws. Default 0.

    Returns:
        tuple[dict, dict]: Metrics (``ddim_deq_rms``, ``ddim_deq_maxabs``, ``deq_iters``,
        ``picard_iters``, ``fd_ddim``, ``fd_deq``, ``fd_test``, ``fd_ddpm``,
        ``classifier_acc``, ``inversion_psnr_*``, ...) and the data of the artefacts
        (``curves``, ``samples``, ``inversion``).
    """
    device = test_images.device
    shape = test_images.shape[1:]
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def noise(n: int) -> Tensor:
        return torch.randn(n, *shape, generator=gen).to(device)

    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    metrics: dict[str, float] = {}
    results: dict[str, Any] = {}
    try:
        # agreement
        curves = agreement_curves(
            model, schedule, noise(curve_samples), sorted(set(curve_steps) | {steps}), deq,
            param, curve_iters, clip, stop_rms / 10,
        )  # fmt: skip
        results["curves"] = curves
        main = curves[steps]
        metrics["ddim_deq_rms"] = main["final_rms"]
        metrics["ddim_deq_maxabs"] = main["final_maxabs"]
        for name, key in (("deq_iters", "deq_rms"), ("picard_iters", "picard_rms")):
            k = first_below(main[key], 1e-3)
            metrics[name] = float("nan") if k is None else float(k)

        # quality
        if train is None:
            half = len(test_labels) // 2
            train = (test_images[:half], test_labels[:half])
            held = (test_images[half:], test_labels[half:])
        else:
            held = (test_images, test_labels)
        t0 = time.process_time()
        classifier, acc = train_feature_net(
            (train[0].to(device), train[1].to(device)), held, classifier_epochs, seed, fd_features
        )
        log.info("feature classifier: %.4f accuracy (%.0f s)", acc, time.process_time() - t0)
        metrics["classifier_acc"] = acc
        test_feats = _features(classifier, held[0])
        x_T = noise(fd_samples)
        layer = get_deq(deq or {})
        system = DDIMSystem(model, schedule, steps, clip, param).to(device)
        with torch.no_grad():
            ddim = ddim_sample(model, schedule, x_T, steps, clip)
        tol = stop_rms * math.sqrt(steps * x_T[0].numel())
        deq_x, info, traces = deq_sample(system, x_T, layer, budget, tol=tol, reference=ddim)
        rms_budget, max_budget = _batch_rms(traces)
        metrics["deq_iters_budget"] = len(rms_budget) - 1
        metrics["deq_nstep_budget"] = float(info["nstep"].mean())
        metrics["ddim_deq_rms_budget"] = rms_budget[-1]
        metrics["ddim_deq_maxabs_budget"] = max_budget[-1]
        metrics["fd_ddim"] = frechet_distance(_features(classifier, ddim), test_feats)
        metrics["fd_deq"] = frechet_distance(_features(classifier, deq_x), test_feats)
        # the floor: test images against other test images, as many as the samples
        perm = torch.randperm(len(held[0]), generator=gen)[:fd_samples].to(device)
        metrics["fd_test"] = frechet_distance(test_feats[perm], test_feats)
        samples = {"ddim": ddim[:grid_samples], "deq": deq_x[:grid_samples]}
        if ddpm_samples:
            with torch.no_grad():
                ddpm = ddpm_sample(model, schedule, x_T[:ddpm_samples], clip, generator=None)
            metrics["fd_ddpm"] = frechet_distance(_features(classifier, ddpm), test_feats)
            samples["ddpm"] = ddpm[:grid_samples]
        results["samples"] = samples

        # inversion
        if inversion_images:
            target = test_images[:inversion_images]
            t0 = time.perf_counter()
            start = ddim_invert(model, schedule, target, steps)
            invert_s = time.perf_counter() - t0
            with torch.no_grad():
                recon = ddim_sample(model, schedule, start, steps, clip)
            metrics["inversion_psnr_analytic"] = float(psnr(recon, target).mean())
            common = dict(iters=inversion_iters, lr=inversion_lr, clip=clip)
            with torch.enable_grad():
                unrolled = invert_unrolled(model, schedule, target, steps, start, **common)
                through = invert_deq(
                    model, schedule, target, steps, start, deq=deq, param=param,
                    first_iters=inversion_first_iters, solve_iters=inversion_solve_iters,
                    **common,
                )  # fmt: skip
            for name, res in (("unrolled", unrolled), ("deq", through)):
                metrics[f"inversion_psnr_{name}"] = res.psnr[-1]
                metrics[f"inversion_seconds_{name}"] = res.seconds[-1] + invert_s
                metrics[f"inversion_mib_{name}"] = res.peak_bytes / 2**20
            results["inversion"] = dict(
                target=target, analytic=recon, unrolled=unrolled, deq=through, analytic_s=invert_s
            )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return metrics, results
