"""Artefacts of the language model written into the run folder."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from deqzoo.artefacts import run_file
from projects.deq_lm.generate import detokenize, encode_prompt, generate

__all__ = ["GenerateSample"]


class GenerateSample(Callback):
    """Appends a greedy continuation of ``prompt`` to ``samples.txt`` at each validation.

    Each entry names the step and the mean solver steps per generated word (DEQ). The model's
    own evaluation memory is untouched: generation keeps its own.

    Args:
        prompt (str): Text to continue (tokenised like the corpus).
        n_words (int): Words to generate. Default 30.
        filename (str): File in the run folder. Default ``samples.txt``.
    """

    def __init__(self, prompt: str = "The", n_words: int = 30, filename: str = "samples.txt"):
        if n_words < 1:
            raise ValueError(f"n_words must be >= 1, got {n_words}")
        self.prompt, self.n_words, self.filename = prompt, n_words, filename

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        vocab = datamodule.vocab
        ids = encode_prompt(self.prompt, vocab, datamodule.corpus_options["lowercase"])
        with torch.random.fork_rng(devices=[]):
            gen = generate(pl_module.net, ids, self.n_words, banned=[0])
        text = detokenize(vocab.decode(ids + gen.ids)).replace("\n", " / ")
        steps = f" (solver steps per word {gen.mean_steps:.2f})" if gen.steps else ""
        path = run_file(trainer, self.filename)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"step {trainer.global_step}{steps}: {text}\n")
