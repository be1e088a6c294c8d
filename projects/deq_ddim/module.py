"""The DEQ-DDIM LightningModule: trains the noise model (DDPM objective), evaluates the samplers.

Training minimises ``E ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2`` over
uniform ``t`` (Ho et al., NeurIPS 2020, arXiv 2006.11239). Sampling uses the exponential
moving average of the weights (Lightning's ``EMAWeightAveraging`` callback swaps it in for
validation, checkpoints and the test stage). The test stage, besides the loss, runs the
evaluation of :mod:`projects.deq_ddim.evaluate` (sequential DDIM against DEQ-DDIM, Frechet
distances, inversion) on the test images and logs its ``test/*`` metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqzoo.module import DEQLitModule
from projects.deq_ddim.net import NoiseSchedule

__all__ = ["DDIMModule"]


class DDIMModule(DEQLitModule):
    """Trains ``net`` (``eps_theta(x_t, t)``) to predict the noise of diffused images.

    Args:
        net (NoiseNet): The noise model under the net contract (``net(x_t, t)`` returns
            ``([eps], None)``; the DEQ lives in the sampler, not in the net). The samplers
            use ``net.unet``.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        scheduler (Callable[..., Any], optional): A partial scheduler; ``OneCycleLR`` gets its
            ``total_steps`` from the trainer. Default None.
        schedule (str): The beta schedule, ``'linear'`` or ``'cosine'``. Default ``'linear'``.
        diffusion_steps (int): Number of training diffusion steps. Default 1000.
        evaluation (Mapping, optional): Options of
            :func:`projects.deq_ddim.evaluate.evaluate` run at the end of the test stage
            (None: the test stage only measures the loss).
        deq (Mapping, optional): The ``deq`` node (solver, iterations, gradients) of the
            DEQ-DDIM sampler and inversion.
        **kwargs: ``scheduler_interval``, ``scheduler_monitor`` and ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        schedule: str = "linear",
        diffusion_steps: int = 1000,
        evaluation: Mapping[str, Any] | None = None,
        deq: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, scheduler, **kwargs)
        self.schedule = NoiseSchedule(diffusion_steps, schedule)
        self.evaluation = dict(evaluation) if evaluation is not None else None
        self.deq_args = deq
        self.results: dict[str, Any] = {}
        self._test_images: list[Tensor] = []
        self._test_labels: list[Tensor] = []

    def diffusion_loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The DDPM objective on clean images ``x0`` (B, C, H, W) in ``[-1, 1]``."""
        kw = {"device": x0.device, "generator": generator}
        t = torch.randint(0, self.schedule.steps, (x0.shape[0],), **kw)
        noise = torch.randn(x0.shape, dtype=x0.dtype, **kw)
        eps = self(self.schedule.diffuse(x0, t, noise), t)
        return self.deq_loss(eps, lambda e: F.mse_loss(e, noise))

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x0, y = batch
        if stage == "train":
            return {"loss": self.diffusion_loss(x0)}
        # evaluation losses with fixed draws, so epochs compare
        gen = torch.Generator(device=x0.device).manual_seed(0)
        if stage == "test" and self.evaluation is not None:
            self._test_images.append(x0.detach())
            self._test_labels.append(y.detach())
        return {"loss": self.diffusion_loss(x0, gen)}

    def on_test_epoch_start(self) -> None:
        self._test_images, self._test_labels = [], []

    def on_test_epoch_end(self) -> None:
        if self.evaluation is None:
            return
        from projects.deq_ddim.evaluate import evaluate

        images, labels = torch.cat(self._test_images), torch.cat(self._test_labels)
        self._test_images, self._test_labels = [], []
        train = self.trainer.datamodule.data["train"].tensors if self.trainer.datamodule else None
        metrics, self.results = evaluate(
            self.net.unet, self.schedule, images, labels, train, deq=self.deq_args, **self.evaluation
        )
        # computed once on the whole test set (every process gets the same numbers)
        self.log_dict({f"test/{k}": float(v) for k, v in metrics.items()}, sync_dist=False)
