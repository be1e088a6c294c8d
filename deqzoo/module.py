"""A base LightningModule for DEQ projects: the net, the shared losses, metrics and optimisers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics import Metric

from deqzoo.loss import DEQLoss
from deqzoo.optim import complete_scheduler, decay_groups, is_no_decay

__all__ = ["DEQLitModule", "OUTPUTS", "compile_cell", "plain_hparams"]

#: The entry of :meth:`DEQLitModule.model_step`'s dict that is not logged but handed to the
#: callbacks (the ``outputs`` argument of ``on_validation_batch_end`` and the like).
OUTPUTS = "outputs"

STAGES = ("train", "val", "test")


def plain_hparams(module: L.LightningModule | L.LightningDataModule) -> None:
    """Turns the config containers in ``module.hparams`` into plain dicts and lists.

    Hydra passes nested config nodes as OmegaConf containers; saved into a checkpoint as they
    are, they keep it from loading with ``torch.load(weights_only=True)``, which Lightning does
    when a run tests its best checkpoint. Call it right after ``save_hyperparameters``.

    Example:
        >>> import lightning as L
        >>> class Data(L.LightningDataModule):
        ...     def __init__(self, sizes):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         plain_hparams(self)
        >>> type(Data(OmegaConf.create([1, 2])).hparams["sizes"]).__name__
        'list'
    """
    for key, value in list(module.hparams.items()):
        if isinstance(value, DictConfig | ListConfig):
            module.hparams[key] = OmegaConf.to_container(value, resolve=True)


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

    A project subclasses it and implements :meth:`model_step`, which computes the per-state task
    loss through :meth:`deq_loss` and updates its torchmetrics; the base does the rest:

    * **the net**: holds the injected ``net`` (a plain ``nn.Module`` built by Hydra) and calls it
      in :meth:`forward`, keeping its solver statistics in :attr:`deq_info` (logged by the
      callbacks of :mod:`deqzoo.callbacks`) and asking for the spectral radius while
      :attr:`sradius_mode` is set (the ``SpectralRadius`` callback);
    * **the shared losses** (:class:`deqzoo.loss.DEQLoss`, the ``loss:`` config node):
      :meth:`deq_loss` applies the fixed-point correction over the returned states; in training
      the base draws Jacobian-regularised steps (probability ``jac_loss_freq``), calls the net
      with ``jac_loss=True``, adds ``jac_loss_weight * info['jac_loss']`` to the loss and logs
      ``train/jac_loss``. With ``jac_loss_weight=0`` the net is never asked for it;
    * **logging**: every entry of :meth:`model_step`'s dict is logged as ``stage/name``: tensors
      per step in training and as epoch means otherwise, torchmetrics ``Metric`` objects
      (made with :meth:`add_metric`) by Lightning, which syncs them across processes. The
      entry :data:`~deqzoo.module.OUTPUTS` is not logged: it is returned to the callbacks that
      write artefacts;
    * **optimisation**: the ``_partial_`` optimiser gets two parameter groups (no weight decay
      for biases, norm affines and weight-norm gains, :func:`deqzoo.optim.is_no_decay`), the
      ``_partial_`` scheduler is completed with the run's length
      (:func:`deqzoo.optim.complete_scheduler`), and :meth:`after_optimizer_step` runs after
      every optimiser step (parameter constraints such as projections).

    The net's contract: ``net(*inputs, sradius_mode=False, jac_loss=False, **kwargs)`` returns
    ``(output, info)``: ``output`` is what the task loss needs (one prediction per sampled state
    when the DEQ returns several), ``info`` the DEQ's info dict (None for a net without one),
    holding ``'jac_loss'`` (e.g. :func:`deqzoo.loss.jac_loss_at` of the DEQ's function at the
    fixed point) when called with ``jac_loss=True``.

    Args:
        net (nn.Module): The network.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser, completed with
            ``params=`` (Hydra: ``_target_: torch.optim.Adam``, ``_partial_: true``, ``lr: ...``).
        scheduler (Callable[..., Any], optional): A partial learning-rate scheduler, completed
            with ``optimizer=`` and, if it needs one, the schedule length. Default None.
        scheduler_interval (str, optional): ``'epoch'`` or ``'step'``: when the scheduler steps.
            Default ``'epoch'``.
        scheduler_monitor (str, optional): The metric a ``ReduceLROnPlateau`` scheduler watches.
            Default ``'val/loss'``.
        compile (bool, optional): Compile the net's equilibrium cell ``net.cell`` in place with
            ``torch.compile`` (``nn.Module.compile``: parameter names and checkpoints are
            unchanged). The cell is what a DEQ calls dozens of times per batch; the solvers, both
            IFT implementations, phantom gradients and the reversible core all work with it.
            Default False.
        loss (Mapping | DEQLoss, optional): The shared loss options (``loss: ${loss}`` in the
            model node; keys of :class:`deqzoo.loss.DEQLoss`). Default None: the defaults.

    Example:
        >>> import functools, torch
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(4, 2)
        ...     def forward(self, x, sradius_mode=False, jac_loss=False):
        ...         return [self.lin(x)], None
        >>> class Classifier(DEQLitModule):
        ...     def __init__(self, net, optimizer, **kwargs):
        ...         super().__init__(net, optimizer, **kwargs)
        ...         self.add_metric("acc", lambda: MulticlassAccuracy(num_classes=2))
        ...     def model_step(self, batch, stage):
        ...         x, y = batch
        ...         logits = self(x)
        ...         loss = self.deq_loss(logits, lambda out: F.cross_entropy(out, y))
        ...         acc = self.metric(stage, "acc")
        ...         acc(logits[-1], y)
        ...         return {"loss": loss, "acc": acc}
        >>> F = torch.nn.functional
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
        loss: Mapping[str, Any] | DEQLoss | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"unknown scheduler_interval {scheduler_interval!r}; valid choices: 'epoch', 'step'"
            )
        # The net's weights live in the checkpoint's state_dict, and the optimiser factories are
        # config (saved by Hydra with the run): pickling them into the checkpoint would keep it
        # from loading with torch.load(weights_only=True).
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss"])
        plain_hparams(self)
        self.net = net
        if compile:
            compile_cell(net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        #: The DEQ ``info`` of the last forward pass (:doc:`/statistics`), which the
        #: :class:`~deqzoo.callbacks.DEQStats` and :class:`~deqzoo.callbacks.SpectralRadius`
        #: callbacks read.
        self.deq_info: Mapping[str, torch.Tensor] | None = None
        #: Set by :class:`~deqzoo.callbacks.SpectralRadius` while it wants the spectral radius;
        #: the module then asks its net for it.
        self.sradius_mode = False
        #: The shared loss options (:class:`deqzoo.loss.DEQLoss`) from the ``loss`` argument.
        self.loss_options = DEQLoss.from_config(loss)
        #: The torchmetrics registered by :meth:`add_metric`, keyed ``<stage>_<name>``.
        self.metrics = nn.ModuleDict()
        # Set for the one forward pass of a training step drawn for Jacobian regularisation.
        self._jac_pending = False
        self._jac_asked = False

    # -- the net -----------------------------------------------------------------------------

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Runs the net, keeps its DEQ info in :attr:`deq_info` and returns its output."""
        if self.sradius_mode and not self.training:
            kwargs.setdefault("sradius_mode", True)
        if self._jac_pending:
            # The first forward pass of the step regularises; a second one would add its cost
            # for nothing, as only one jac_loss is read.
            self._jac_pending = False
            self._jac_asked = True
            kwargs["jac_loss"] = True
        output, info = self.net(*inputs, **kwargs)
        self.deq_info = info
        return output

    # -- the shared losses -------------------------------------------------------------------

    def deq_loss(self, outputs: Any, task_loss: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """The fixed-point-corrected task loss over the states the net returned.

        ``sum_k w(n, k) * task_loss(outputs[k])`` with the configured weight function and
        ``gamma`` (:class:`deqzoo.loss.DEQLoss`); a single state (or a non-sequence) gives
        ``task_loss`` of it. The Jacobian term is added by the base, not here.

        Args:
            outputs (Any): Per-state predictions, last = the fixed-point estimate.
            task_loss (Callable[[Any], torch.Tensor]): The project's loss of one prediction.

        Returns:
            torch.Tensor: The scalar loss.
        """
        return self.loss_options.correction(outputs, task_loss)

    def _add_jac_loss(self, metrics: dict[str, Any]) -> None:
        info = self.deq_info
        if not isinstance(info, Mapping) or "jac_loss" not in info:
            raise RuntimeError(
                f"{type(self.net).__name__} was called with jac_loss=True but its info has no "
                f"'jac_loss'; a net without an equilibrium cannot be regularised: set "
                f"loss.jac_loss_weight=0 loss.jac_loss_freq=0"
            )
        jac = info["jac_loss"]
        weight = self.loss_options.jac_weight(int(self.global_step))
        metrics["loss"] = metrics["loss"] + weight * jac
        metrics["jac_loss"] = jac

    # -- metrics -----------------------------------------------------------------------------

    def add_metric(
        self,
        name: str,
        factory: Callable[[], Metric],
        stages: Iterable[str] = STAGES,
    ) -> None:
        """Registers one torchmetrics ``Metric`` per stage, made by ``factory``.

        Registered metrics are children of the module, so they move with it to the device and
        Lightning syncs, computes and resets them per epoch. In :meth:`model_step`, update with
        ``metric(preds, target)`` (the call also gives the batch value logged in training) and
        return the metric object.

        Args:
            name (str): The metric's name (logged as ``stage/name``).
            factory (Callable[[], Metric]): Builds a fresh metric.
            stages (Iterable[str], optional): Stages that get one. Default all three.
        """
        for stage in stages:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; valid choices: {list(STAGES)}")
            self.metrics[f"{stage}_{name}"] = factory()

    def metric(self, stage: str, name: str) -> Metric:
        """The metric ``name`` of ``stage`` registered by :meth:`add_metric`."""
        key = f"{stage}_{name}"
        if key not in self.metrics:
            known = sorted(self.metrics.keys())
            raise KeyError(f"no metric {name!r} for stage {stage!r}; registered: {known}")
        return self.metrics[key]

    # -- steps and logging -------------------------------------------------------------------

    def model_step(self, batch: Any, stage: str) -> dict[str, Any]:
        """Computes the loss and metrics of one batch; implemented by each project.

        Args:
            batch (Any): The batch from the data loader.
            stage (str): ``'train'``, ``'val'`` or ``'test'``.

        Returns:
            dict[str, Any]: Values to log as ``stage/name``: scalar tensors or torchmetrics
            ``Metric`` objects; ``'loss'`` is required in training. An
            :data:`~deqzoo.module.OUTPUTS` entry (anything) is not logged but handed to the
            callbacks.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement model_step")

    def batch_size(self, batch: Any) -> int | None:
        """Number of samples in ``batch``, for epoch averages; None lets Lightning infer it."""
        return None

    def log_metrics(self, stage: str, metrics: Mapping[str, Any], batch: Any) -> None:
        """Logs ``metrics`` as ``stage/name``: per step in training, per epoch otherwise."""
        train = stage == "train"
        values = {
            f"{stage}/{name}": value if isinstance(value, Metric) else value.detach()
            for name, value in metrics.items()
            if name != OUTPUTS
        }
        self.log_dict(
            values,
            on_step=train,
            on_epoch=not train,
            prog_bar=True,
            # Epoch averages are reduced across processes (Metric objects sync themselves);
            # per-step training values need not be.
            sync_dist=not train,
            batch_size=self.batch_size(batch),
        )

    def _step(self, batch: Any, stage: str) -> dict[str, Any]:
        # A step that runs no DEQ must not leave the previous step's statistics to be logged.
        self.deq_info = None
        self._jac_asked = False
        self._jac_pending = stage == "train" and self.loss_options.draw_jacobian()
        try:
            metrics = dict(self.model_step(batch, stage))
        finally:
            self._jac_pending = False
        if stage == "train" and "loss" not in metrics:
            raise KeyError(f"{type(self).__name__}.model_step must return a 'loss' in training")
        if self._jac_asked:
            self._add_jac_loss(metrics)
        self.log_metrics(stage, metrics, batch)
        return metrics

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        metrics = self._step(batch, "train")
        out = {"loss": metrics["loss"]}
        if OUTPUTS in metrics:
            out[OUTPUTS] = metrics[OUTPUTS]
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        # Training metrics are logged per step (their batch values): start each epoch afresh.
        for key, metric in self.metrics.items():
            if key.startswith("train_"):
                metric.reset()

    # -- optimisation ------------------------------------------------------------------------

    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        """Whether a parameter skips weight decay; default :func:`deqzoo.optim.is_no_decay`."""
        return is_no_decay(name, param)

    def optim_params(self) -> Iterable[nn.Parameter] | Iterable[dict[str, Any]]:
        """Parameter groups for the optimiser: decayed, and no decay where :meth:`no_decay`."""
        return decay_groups(self.named_parameters(), self.no_decay)

    def scheduler_steps(self) -> int:
        """The run's length in scheduler steps: optimiser steps or epochs (by the interval).

        Raises:
            ValueError: If the trainer's run has no length (``max_epochs=-1`` with only a
                ``max_time``): use a schedule that needs none, such as
                :class:`deqzoo.optim.WallClockExponentialLR`.
        """
        if self.hparams.scheduler_interval == "step":
            steps = self.trainer.estimated_stepping_batches
        else:
            steps = self.trainer.max_epochs
            steps = float("inf") if steps is None or steps < 0 else steps
        if steps == float("inf"):
            raise ValueError(
                f"the scheduler {self.scheduler_factory} needs the run's length, but the trainer "
                f"has none (max_epochs={self.trainer.max_epochs}, max_steps="
                f"{self.trainer.max_steps}); set trainer.max_steps or trainer.max_epochs"
            )
        return max(int(steps), 1)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.optim_params())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = complete_scheduler(self.scheduler_factory, optimizer, self.scheduler_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                "monitor": self.hparams.scheduler_monitor,
                "frequency": 1,
            },
        }

    def after_optimizer_step(self) -> None:
        """Runs after every optimiser step; override for parameter constraints (projections)."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()
