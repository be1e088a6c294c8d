"""The language model through the real Hydra config: every experiment's debug run, pinned
first losses, corpus perplexity, greedy generation."""

from __future__ import annotations

import json
import math

import hydra
import pytest
import torch
from framework_toy import compose_config

from deqzoo.train import train
from projects.deq_lm.generate import generate

TINY = [
    "data=lm_tiny",
    "model.net.d_model=16",
    "model.net.n_head=2",
    "model.net.d_head=8",
    "model.net.d_inner=32",
    "model.net.cutoffs=[50,100]",
    "model.net.mem_len=8",
    "model.net.eval_mem_len=12",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "data.tgt_len=8",
    "data.eval_tgt_len=8",
]

# experiment -> the first training loss of its debug run (seed 12345), pinned so that a silent
# change of the model, the data or the loss is caught.
EXPERIMENTS = {
    "project=deq_lm": 5.4254,
    "experiment=deq_lm/explicit": 5.2070,
    "experiment=deq_lm/explicit_tied": 5.4254,
    "experiment=deq_lm/wt103": 5.3321,
    "experiment=deq_lm/wt103_ift": 5.3321,
}


@pytest.mark.parametrize("choice", list(EXPERIMENTS), ids=lambda c: c.split("/")[-1])
def test_deq_lm_debug_run_of_every_experiment(choice, tmp_path):
    overrides = [choice, "debug=fdr", "trainer=cpu", *TINY, f"data.cache_dir={tmp_path}/cache"]
    if "wt103" in choice:  # its 8k warm-up steps do not fit a one-step run
        overrides.append("model.scheduler.warmup=0")
    cfg = compose_config(overrides, tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/loss"] == pytest.approx(EXPERIMENTS[choice], abs=2e-4)
    assert math.isfinite(metrics["test/ppl"]) and metrics["test/ppl"] > 1
    assert (tmp_path / "samples.txt").read_text().startswith("step 1")
    if "explicit" not in choice:
        assert "test/nstep" in metrics


def test_deq_lm_perplexity_is_over_every_token_and_generation_is_deterministic(tmp_path):
    cfg = compose_config(["project=deq_lm", *TINY, f"data.cache_dir={tmp_path}/cache"], tmp_path)
    torch.manual_seed(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model).eval()
    nll, count, mems = 0.0, 0, None
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            model.model_step(batch, "val")
            out, _ = model.net(batch["input"], mems=mems)
            mems = out.mems
            token_nll = model.net.nll(out.states[-1], batch["target"])
            nll, count = nll + float(token_nll.sum()), count + token_nll.numel()
    assert count > 100
    assert float(model.metric("val", "ppl").compute()) == pytest.approx(math.exp(nll / count), rel=1e-5)

    prompt = datamodule.vocab.encode(["And", "God", "said"])
    first = generate(model.net, prompt, 12)
    again = generate(model.net, prompt, 12)
    assert first.ids == again.ids and len(first.ids) == 12
    assert len(first.steps) == 12 and all(s >= 1 for s in first.steps)
    sampled = [
        generate(
            model.net, prompt, 12, "sample", top_k=5, generator=torch.Generator().manual_seed(s)
        ).ids
        for s in (1, 2)
    ]
    assert sampled[0] != sampled[1]
