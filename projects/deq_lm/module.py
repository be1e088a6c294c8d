"""The language-model LightningModule: segment recurrence, corpus perplexity, tokens/s."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from deqzoo.module import DEQLitModule
from projects.deq_lm.net import count_parameters
from torchdeq import fp_correction

__all__ = ["CorpusPerplexity", "LMModule"]

log = logging.getLogger(__name__)


class CorpusPerplexity(Metric):
    """exp of the mean negative log-likelihood over every token seen (DDP-summed).

    Not a mean of per-batch perplexities: the NLL and the token count are summed over the
    whole split (and over processes) and divided once.

    Example:
        >>> m = CorpusPerplexity()
        >>> m.update(torch.tensor([1.0, 3.0]))
        >>> m.update(torch.tensor([2.0]))
        >>> round(float(m.compute()), 4) == round(math.exp(2.0), 4)
        True
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll: Tensor) -> None:
        self.nll += nll.detach().double().sum()
        self.tokens += nll.numel()

    def compute(self) -> Tensor:
        return torch.exp(self.nll / self.tokens.clamp(min=1)).float()


class LMModule(DEQLitModule):
    """Trains a :class:`~projects.deq_lm.net.TransformerLM` on ordered stream segments.

    The memory (the previous segment's detached states) is kept per stage and cleared when a
    batch has ``reset=True`` (the first segment of every pass over a split). The training loss
    is the mean token NLL of each state the net returns, combined by fixed-point correction
    (``gamma ** (n - 1 - k)`` weights; one state: the plain mean NLL); with a Jacobian
    regularisation weight it adds ``jac_loss_weight * info['jac_loss']`` on a fraction
    ``jac_loss_freq`` of the steps. Logged: ``train/loss``, ``train/ppl`` (of the batch),
    ``train/tokens_per_s`` (wall clock from one step's end to the next), ``val/ppl`` and
    ``test/ppl`` (corpus perplexity of the split), ``val/loss``, ``test/loss`` (mean NLL)
    and, for evaluation, ``stage/tokens_per_s``; the DEQ statistics come from deqzoo's
    callbacks. The parameter count is logged once as ``params``.

    Weight decay applies to matrices only (not to biases, LayerNorm gains, weight-norm
    scales ``*_g``, embeddings or the output tables tied with them).

    Args:
        net (nn.Module): The language model.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        scheduler (Callable[..., Any], optional): A partial scheduler.
        gamma (float): Fixed-point correction decay. Default 0.8.
        jac_loss_weight (float): Weight of the Jacobian regulariser. Default 0.
        jac_loss_freq (float): Fraction of training steps that compute it. Default 0.
        **kwargs: ``scheduler_interval``, ``scheduler_monitor`` of :class:`DEQLitModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        gamma: float = 0.8,
        jac_loss_weight: float = 0.0,
        jac_loss_freq: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(net, optimizer, scheduler, **kwargs)
        if jac_loss_weight < 0 or not 0 <= jac_loss_freq <= 1:
            raise ValueError(
                f"jac_loss_weight must be >= 0 and jac_loss_freq in [0, 1], got "
                f"{jac_loss_weight}, {jac_loss_freq}"
            )
        if jac_loss_weight > 0 and getattr(net, "mode", "deq") != "deq":
            raise ValueError("the Jacobian regulariser needs a DEQ (model.net.mode=deq)")
        self.gamma, self.jac_loss_weight, self.jac_loss_freq = gamma, jac_loss_weight, jac_loss_freq
        self.ppl = nn.ModuleDict({s: CorpusPerplexity() for s in ("val", "test")})
        self._mems: dict[str, list[Tensor] | None] = {}
        self._clock: dict[str, float] = {}

    # -- steps ---------------------------------------------------------------------------------

    def batch_size(self, batch: dict) -> int:
        return int(batch["target"].numel())

    def model_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        if batch["reset"]:
            self._mems[stage] = None
        jac = (
            stage == "train"
            and self.jac_loss_weight > 0
            and float(torch.rand(())) < self.jac_loss_freq
        )
        out = self(
            batch["input"], mems=self._mems.get(stage), **({"jac_loss": True} if jac else {})
        )
        self._mems[stage] = out.mems
        target = batch["target"]
        nlls = [self.net.nll(h, target) for h in out.states]
        if len(nlls) == 1:
            loss = nlls[0].mean()
        else:
            loss = fp_correction(lambda nll, _: nll.mean(), (nlls, target), gamma=self.gamma)
        metrics = {"loss": loss}
        if stage == "train":
            if jac:
                jac_loss = self.deq_info["jac_loss"]
                metrics["loss"] = loss + self.jac_loss_weight * jac_loss
                metrics["jac_loss"] = jac_loss
            metrics["ppl"] = torch.exp(nlls[-1].detach().mean())
        else:
            self.ppl[stage].update(nlls[-1])
            self.log(f"{stage}/ppl", self.ppl[stage], on_step=False, on_epoch=True, prog_bar=True)
        return metrics

    def _tokens_per_s(self, stage: str, batch: dict) -> None:
        now = time.perf_counter()
        last = self._clock.get(stage)
        self._clock[stage] = now
        if last is not None and now > last:
            rate = batch["target"].numel() / (now - last)
            self.log(
                f"{stage}/tokens_per_s",
                rate,
                on_step=stage == "train",
                on_epoch=stage != "train",
                batch_size=1,
                sync_dist=stage != "train",
            )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._tokens_per_s("train", batch)

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tokens_per_s("val", batch)

    def on_test_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._tokens_per_s("test", batch)

    def on_train_epoch_start(self) -> None:
        self._clock.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._clock.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._clock.pop("test", None)

    def on_fit_start(self) -> None:
        n = count_parameters(self.net)
        log.info(
            "%s (%s): %d parameters", type(self.net).__name__, getattr(self.net, "mode", ""), n
        )
        for logger in self.loggers:
            logger.log_metrics({"params": float(n)}, step=0)

    # -- optimisation --------------------------------------------------------------------------

    def optim_params(self) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        seen = set()
        for name, p in self.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = p.ndim > 1 and not name.endswith("_g")
            tied_table = ".io." in f".{name}"
            (decay if is_matrix and not tied_table else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        factory = self.scheduler_factory
        if factory is None:
            return super().configure_optimizers()
        given = getattr(factory, "keywords", {})
        if given.get("budget_s") is not None or given.get("total_steps") is not None:
            return super().configure_optimizers()
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError(
                "the scheduler needs total_steps or budget_s: the trainer's length is unbounded "
                "(max_steps=-1, max_epochs=-1); set trainer.max_steps or scheduler budget_s"
            )
        self.scheduler_factory = lambda optimizer: factory(
            optimizer=optimizer, total_steps=int(steps)
        )
        try:
            return super().configure_optimizers()
        finally:
            self.scheduler_factory = factory
