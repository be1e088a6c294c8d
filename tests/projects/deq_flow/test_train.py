"""DEQ-Flow through the real Hydra config: fast_dev_run of the default and of every experiment."""

from __future__ import annotations

import json

import hydra
import pytest
import torch
from framework_toy import compose_config

from deqzoo.train import train
from projects.deq_flow.net import DEQFlow, RAFTFlow

TINY_NET = [
    "model.net.size=small",
    "model.net.widths={encoder_dims:[8,8,16],feature_dim:16,hidden:8,context:8}",
]
PAPER = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "data.crop=[16,24]",
    "data.batch_size=1",
    "data.num_workers=0",
    "deq.f_max_iter=2",
    "deq.eval_f_max_iter=2",
]

# First training losses of the debug=fdr runs (seed 12345): a silent change shows up here.
FIRST_LOSS = {
    "default": 6.08645,
    "raft": 13.87651,
    "chairs_b": 6.05639,
    "things_b": 3.03041,
    "sintel_b": 3.03041,
    "kitti_b": 28.10688,
    "chairs_h": 7.89102,
    "things_h": 3.93969,
}


def _run(overrides, tmp_path, tiny=True):
    cfg = compose_config([*overrides, "debug=fdr", *(TINY_NET if tiny else [])], tmp_path)
    train(cfg)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_default_fast_dev_run_writes_metrics_and_flow_images(tmp_path):
    metrics = _run(["project=deq_flow", "data=flow_synthetic_tiny"], tmp_path)
    # fast_dev_run tests one batch: the first real pair.
    for key in (
        "test/epe",
        "test/epe_motorcycle",
        "test/f1_motorcycle",
        "test/nstep",
        "train/loss",
    ):
        assert key in metrics, key
    for kind in ("pred", "gt", "error"):
        assert (tmp_path / "flow_images" / f"motorcycle_{kind}.png").is_file()
    assert metrics["train/loss"] == pytest.approx(FIRST_LOSS["default"], rel=1e-3)


@pytest.mark.parametrize(
    "name", ["chairs_b", "things_b", "sintel_b", "kitti_b", "chairs_h", "things_h"]
)
def test_paper_experiments_fast_dev_run_on_files_in_the_benchmark_formats(
    name, tmp_path, fake_benchmarks
):
    # The recipes' own model sizes (B, H), on tiny crops.
    metrics = _run(
        [f"experiment=deq_flow/{name}", f"data.root={fake_benchmarks}", *PAPER],
        tmp_path,
        tiny=False,
    )
    # One test batch: the first validation benchmark's first pair.
    assert "test/epe" in metrics and any(k.startswith("test/f1_") for k in metrics)
    assert metrics["train/loss"] == pytest.approx(FIRST_LOSS[name], rel=1e-3)


def test_raft_experiment_fast_dev_run(tmp_path):
    metrics = _run(["experiment=deq_flow/raft", "data=flow_synthetic_tiny"], tmp_path)
    assert "test/epe_motorcycle" in metrics and "test/nstep" not in metrics
    assert metrics["train/loss"] == pytest.approx(FIRST_LOSS["raft"], rel=1e-3)


def test_experiments_build_their_nets(tmp_path):
    cfg = compose_config(["experiment=deq_flow/raft"], tmp_path)
    assert isinstance(hydra.utils.instantiate(cfg.model.net), RAFTFlow)
    cfg = compose_config(["experiment=deq_flow/things_b"], tmp_path)
    assert (cfg.model.net.size, cfg.deq.n_states, cfg.deq.grad, cfg.deq.f_max_iter) == (
        "B",
        2,
        3,
        40,
    )
    cfg = compose_config(["project=deq_flow", "solver=anderson"], tmp_path)
    # Lightning ignores the CPU-time stop before min_epochs.
    assert cfg.trainer.min_epochs is None and cfg.callbacks.cpu_budget.budget_s == cfg.budget_s
    net = hydra.utils.instantiate(cfg.model.net)
    assert isinstance(net, DEQFlow) and net.deq.f_solver_name == "anderson"


def test_a_few_optimisation_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    cfg = compose_config(["project=deq_flow", "data=flow_synthetic_tiny", *TINY_NET], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    model = hydra.utils.instantiate(cfg.model)
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = model.model_step(batch, "train")["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_module_hyperparameters_load_with_weights_only(tmp_path):
    cfg = compose_config(["project=deq_flow", "data=flow_synthetic_tiny", *TINY_NET], tmp_path)
    model = hydra.utils.instantiate(cfg.model)
    data = hydra.utils.instantiate(cfg.data)
    torch.save(
        {"hyper_parameters": dict(model.hparams), "data": dict(data.hparams)}, tmp_path / "hp.ckpt"
    )
    loaded = torch.load(tmp_path / "hp.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["pair_names"] == ["motorcycle"]
