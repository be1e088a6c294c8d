"""A base LightningModule for DEQ projects: the net, logging, solver info and optimisers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

__all__ = ["DEQLitModule", "compile_cell"]


def compile_cell(net: nn.Module) -> None:
    """Compiles ``net.cell``, the equilibrium cell of a zoo net, in place with ``torch.compile``.

    Raises:
        ValueError: If ``net`` has no ``cell`` module.
    """
    cell = getattr(net, "cell", None)
    if not isinstance(cell, nn.Module):
        raise ValueError(
            f"compile=true compiles the net's equilibrium cell, but {type(net).__name__} has no "
            "`cell` module; expose the map the DEQ iterates as `self.cell`"
        )
    cell.compile()


class DEQLitModule(L.LightningModule):
    """Base class for the LightningModule of a DEQ project.

    A project subclasses it and implements :meth:`model_step`; the base does the rest:

    * holds the injected ``net`` (a plain ``nn.Module`` built by Hydra) and calls it in
      :meth:`forward`;
    * keeps the solver statistics of the last forward pass in :attr:`deq_info`, which the
      callbacks of :mod:`deqzoo.callbacks` log as ``train/nstep``, ``val/abs_residual``, ...;
    * asks the net for the spectral radius (``sradius_mode=True``) while :attr:`sradius_mode`
      is set, which the ``SpectralRadius`` callback does during validation;
    * logs every entry of the dict that :meth:`model_step` returns as ``stage/name``;
    * finishes the ``_partial_`` optimiser and scheduler configs in
      :meth:`configure_optimizers`.

    The net's contract: ``net(*inputs, **kwargs)`` returns ``(output, info)``, where ``info`` is
    the info dict of its DEQ (or ``None`` for a net without one), and it passes a
    ``sradius_mode`` keyword on to its DEQ call. ``output`` is whatever the project's loss needs
    (e.g. one prediction per sampled state when ``n_states > 1``).

    Args:
        net (nn.Module): The network.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser, completed with
            ``params=`` (Hydra: ``_target_: torch.optim.Adam``, ``_partial_: true``, ``lr: ...``).
        scheduler (Callable[..., Any], optional): A partial learning-rate scheduler, completed
            with ``optimizer=``. Default None (constant learning rate).
        scheduler_interval (str, optional): ``'epoch'`` or ``'step'``: when the scheduler steps.
            Default ``'epoch'``.
        scheduler_monitor (str, optional): The metric a ``ReduceLROnPlateau`` scheduler watches.
            Default ``'val/loss'``.
        compile (bool, optional): Compile the net's equilibrium cell ``net.cell`` in place with
            ``torch.compile`` (``nn.Module.compile``: parameter names and checkpoints are
            unchanged). The cell is what a DEQ calls dozens of times per batch; the solvers, both
            IFT implementations, phantom gradients and the reversible core all work with it.
            Default False.

    Example:
        >>> import functools, torch
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(4, 2)
        ...     def forward(self, x, sradius_mode=False):
        ...         return self.lin(x), None
        >>> class Classifier(DEQLitModule):
        ...     def model_step(self, batch, stage):
        ...         x, y = batch
        ...         logits = self(x)
        ...         loss = torch.nn.functional.cross_entropy(logits, y)
        ...         return {"loss": loss, "acc": (logits.argmax(-1) == y).float().mean()}
        >>> module = Classifier(Net(), functools.partial(torch.optim.SGD, lr=0.1))
        >>> sorted(module.model_step((torch.randn(3, 4), torch.tensor([0, 1, 0])), "val"))
        ['acc', 'loss']
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"unknown scheduler_interval {scheduler_interval!r}; valid choices: 'epoch', 'step'"
            )
        # The net's weights live in the checkpoint's state_dict, and the optimiser factories are
        # config (saved by Hydra with the run): pickling them into the checkpoint would keep it
        # from loading with torch.load(weights_only=True).
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        if compile:
            compile_cell(net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.deq_info: Mapping[str, torch.Tensor] | None = None
        self.sradius_mode = False

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Runs the net, keeps its DEQ info in :attr:`deq_info` and returns its output."""
        if self.sradius_mode and not self.training:
            kwargs.setdefault("sradius_mode", True)
        output, info = self.net(*inputs, **kwargs)
        self.deq_info = info
        return output

    def model_step(self, batch: Any, stage: str) -> dict[str, torch.Tensor]:
        """Computes the loss and metrics of one batch; implemented by each project.

        Args:
            batch (Any): The batch from the data loader.
            stage (str): ``'train'``, ``'val'`` or ``'test'``.

        Returns:
            dict[str, torch.Tensor]: Scalars to log; ``'loss'`` is required in training.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement model_step")

    def batch_size(self, batch: Any) -> int | None:
        """Number of samples in ``batch``, for epoch averages; None lets Lightning infer it."""
        return None

    def log_metrics(self, stage: str, metrics: Mapping[str, torch.Tensor], batch: Any) -> None:
        """Logs ``metrics`` as ``stage/name``: per step in training, per epoch otherwise."""
        train = stage == "train"
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            on_step=train,
            on_epoch=not train,
            prog_bar=True,
            # Epoch averages are reduced across processes; per-step training values need not be.
            sync_dist=not train,
            batch_size=self.batch_size(batch),
        )

    def _step(self, batch: Any, stage: str) -> torch.Tensor | None:
        # A step that runs no DEQ must not leave the previous step's statistics to be logged.
        self.deq_info = None
        metrics = self.model_step(batch, stage)
        self.log_metrics(stage, {k: v.detach() for k, v in metrics.items()}, batch)
        return metrics.get("loss")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if loss is None:
            raise KeyError(f"{type(self).__name__}.model_step must return a 'loss' in training")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def optim_params(self) -> Iterable[nn.Parameter] | Iterable[dict[str, Any]]:
        """Parameters (or parameter groups) for the optimiser; override to e.g. skip decay."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.optim_params())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                "monitor": self.hparams.scheduler_monitor,
                "frequency": 1,
            },
        }
