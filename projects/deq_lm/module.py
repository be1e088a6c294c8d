"""The language-model LightningModule: segment recurrence, corpus perplexity, tokens/s."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from deqzoo.module import DEQLitModule
from projects.deq_lm.net import count_parameters

__all__ = ["CorpusPerplexity", "LMModule"]

log = logging.getLogger(__name__)


class CorpusPerplexity(Metric):
    """exp of the mean negative log-likelihood over every token seen (DDP-summed).

    Not a mean of per-batch perplexities: the NLL and the token count are summed over the
    whole split (and over processes) and divided once.

    Example:
        >>> import math
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
    is the mean token NLL of each state the net returns, combined by the shared fixed-point
    correction (:meth:`~deqzoo.module.DEQLitModule.deq_loss`; the Jacobian term, when
    configured, is added by the base). Logged: ``train/loss``, ``train/ppl`` (of the batch),
    ``train/tokens_per_s`` (wall clock from one step's end to the next), ``val/ppl`` and
    ``test/ppl`` (corpus perplexity of the split, :class:`CorpusPerplexity`), ``val/loss``,
    ``test/loss`` (mean NLL), ``stage/tokens_per_s`` at evaluation; the DEQ statistics come
    from deqzoo's callbacks. The parameter count is logged once as ``params``.

    Weight decay skips what :func:`deqzoo.optim.is_no_decay` skips and the word tables of the
    input/output layer (``net.io``), which are tied between input and output.

    Args:
        net (nn.Module): The language model.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        scheduler (Callable[..., Any], optional): A partial scheduler.
        **kwargs: ``scheduler_interval``, ``scheduler_monitor``, ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(net, optimizer, scheduler, **kwargs)
        self.add_metric("ppl", CorpusPerplexity, stages=("val", "test"))
        self._mems: dict[str, list[Tensor] | None] = {}
        self._clock: dict[str, float] = {}

    # -- steps ---------------------------------------------------------------------------------

    def batch_size(self, batch: dict) -> int:
        return int(batch["target"].numel())

    def model_step(self, batch: dict, stage: str) -> dict[str, Any]:
        if batch["reset"]:
            self._mems[stage] = None
        out = self(batch["input"], mems=self._mems.get(stage))
        self._mems[stage] = out.mems
        target = batch["target"]
        nlls = [self.net.nll(h, target) for h in out.states]
        loss = self.deq_loss(nlls, lambda nll: nll.mean())
        if stage == "train":
            return {"loss": loss, "ppl": torch.exp(nlls[-1].detach().mean())}
        ppl = self.metric(stage, "ppl")
        ppl.update(nlls[-1])
        return {"loss": loss, "ppl": ppl}

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
        self._fit_clock = (time.perf_counter(), time.process_time())

    def on_train_end(self) -> None:
        # On a shared machine the process CPU time is the fairer measure of what a run cost.
        wall = time.perf_counter() - self._fit_clock[0]
        cpu = time.process_time() - self._fit_clock[1]
        log.info("training: %.0f s wall, %.0f s process CPU, %d steps", wall, cpu, self.global_step)
        for logger in self.loggers:
            logger.log_metrics({"fit_wall_s": wall, "fit_cpu_s": cpu}, step=int(self.global_step))

    # -- optimisation --------------------------------------------------------------------------

    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        return super().no_decay(name, param) or name.startswith("net.io.")
