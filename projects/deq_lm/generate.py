"""Text generation with a trained language model, one word per segment.

The prompt is read as one segment; then every new word is a segment of length 1 whose memory
holds the equilibrium states of all words before it (up to ``eval_mem_len``). A DEQ's solve for
the new word starts from the previous word's equilibrium (warm start) or from zero (cold); the
mean solver steps per word show what the warm start saves.

    python -m projects.deq_lm.generate ckpt_path=logs/deq_lm/runs/<time>/checkpoints/last.ckpt \\
        prompt="The history of" n_words=40 [strategy=greedy|sample top_k=40 temperature=0.8 seed=0]

The run's configuration is read from ``<run>/.hydra/config.yaml`` next to ``checkpoints/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from projects.deq_lm.corpus import Vocab, tokenize
from projects.deq_lm.net import TransformerLM

__all__ = ["Generation", "generate", "main"]

STRATEGIES = ("greedy", "sample")


@dataclass
class Generation:
    """Generated ids (prompt excluded) and the solver steps each word took (DEQ only)."""

    ids: list[int]
    steps: list[float]

    @property
    def mean_steps(self) -> float | None:
        return sum(self.steps) / len(self.steps) if self.steps else None


def _pick(log_probs: Tensor, strategy: str, top_k: int, temperature: float, generator) -> int:
    if strategy == "greedy":
        return int(log_probs.argmax())
    logits = log_probs / temperature
    if 0 < top_k < logits.numel():
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(
    net: TransformerLM,
    prompt: Sequence[int],
    n_words: int,
    strategy: str = "greedy",
    top_k: int = 0,
    temperature: float = 1.0,
    warm_start: bool = True,
    generator: torch.Generator | None = None,
    banned: Sequence[int] = (),
) -> Generation:
    """Continues ``prompt`` by ``n_words`` words.

    Args:
        net (TransformerLM): The model (put in eval mode here and left so).
        prompt (Sequence[int]): Word ids, at least one.
        n_words (int): Words to generate.
        strategy (str): ``'greedy'`` (argmax, deterministic) or ``'sample'``.
        top_k (int): Sample among the ``top_k`` most likely words (0: all).
        temperature (float): Divides the log-probabilities before sampling (> 0).
        warm_start (bool): Start each word's solve from the previous word's equilibrium.
        generator (torch.Generator, optional): Random numbers for sampling.
        banned (Sequence[int]): Ids never generated (e.g. ``<unk>``).

    Returns:
        Generation: The new ids and the solver steps of each new word's solve.

    Raises:
        ValueError: For an unknown strategy, an empty prompt or a non-positive temperature.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid choices: {list(STRATEGIES)}")
    if not prompt:
        raise ValueError("the prompt must hold at least one word")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    net.eval()
    device = next(net.parameters()).device
    tokens = torch.tensor([list(prompt)], device=device)
    out, _ = net(tokens)
    ids, steps = [], []
    for _ in range(n_words):
        log_probs = net.log_probs(out.states[-1][:, -1])[0]
        if banned:
            log_probs[list(banned)] = float("-inf")
        word = _pick(log_probs, strategy, top_k, temperature, generator)
        ids.append(word)
        z_init = out.z_star[:, -1:] if warm_start and net.mode == "deq" else None
        out, info = net(torch.tensor([[word]], device=device), mems=out.mems, z_init=z_init)
        if info is not None:
            steps.append(float(info["nstep"].float().mean()))
    return Generation(ids, steps)


def encode_prompt(text: str, vocab: Vocab, lowercase: bool = False) -> list[int]:
    """Word ids of a prompt, tokenised like the corpus."""
    return vocab.encode(tokenize(text, lowercase))


def detokenize(words: Sequence[str]) -> str:
    """Joins words, one line per ``<eos>``."""
    return " ".join(words).replace(" <eos> ", "\n").replace("<eos>", "\n").strip()


def _load(ckpt_path: Path, overrides: list[str]):
    import hydra
    from omegaconf import OmegaConf

    run_dir = ckpt_path.resolve().parent.parent
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no run configuration at {config} (next to checkpoints/)")
    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(overrides))
    module = hydra.utils.instantiate(cfg.model)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    datamodule = hydra.utils.instantiate(cfg.data)
    return module.net, datamodule


def main(argv: list[str] | None = None) -> None:
    """``key=value`` arguments: ckpt_path (required), prompt, n_words, strategy, top_k,
    temperature, seed; other ``a.b=c`` keys override the run's config (e.g.
    ``deq.eval_f_max_iter=20``)."""
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    if "ckpt_path" not in args:
        raise SystemExit("usage: python -m projects.deq_lm.generate ckpt_path=PATH [prompt=...]")
    own = ("ckpt_path", "prompt", "n_words", "strategy", "top_k", "temperature", "seed")
    overrides = [f"{k}={v}" for k, v in args.items() if k not in own]
    net, datamodule = _load(Path(args["ckpt_path"]), overrides)
    vocab = datamodule.vocab
    prompt = encode_prompt(
        args.get("prompt", "The history of"), vocab, datamodule.corpus_options["lowercase"]
    )
    options = dict(
        n_words=int(args.get("n_words", 40)),
        strategy=args.get("strategy", "greedy"),
        top_k=int(args.get("top_k", 0)),
        temperature=float(args.get("temperature", 1.0)),
        banned=[0],
    )
    seed = int(args.get("seed", 0))
    runs = {}
    for warm in (True, False):
        gen = torch.Generator().manual_seed(seed)
        runs[warm] = generate(net, prompt, warm_start=warm, generator=gen, **options)
    print(detokenize(vocab.decode(prompt + runs[True].ids)))
    if runs[True].steps:
        print(
            f"mean solver steps per word: warm start {runs[True].mean_steps:.2f}, "
            f"cold start {runs[False].mean_steps:.2f}"
        )


if __name__ == "__main__":
    main()
