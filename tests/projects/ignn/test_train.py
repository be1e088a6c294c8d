"""IGNN through the real Hydra config: fast_dev_run, an optimisation step, the experiments."""

from __future__ import annotations

import json

import hydra
import pytest
import torch
from framework_toy import assert_first_losses, compose_config, quiet_trainer
from omegaconf import OmegaConf
from torch_geometric.data import Data

from deqzoo.callbacks import DEQReset
from deqzoo.train import train
from projects.ignn.module import IGNNModule
from projects.ignn.net import GCN, IGNN

GCN_NET = "project/ignn/net@model.net=gcn"


def _build(overrides, tmp_path):
    torch.manual_seed(0)
    cfg = compose_config(["project=ignn", *overrides], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return cfg, datamodule, hydra.utils.instantiate(cfg.model)


@pytest.mark.parametrize(
    "net,losses",
    [([], (1.385939, 1.393574)), ([GCN_NET], (1.358436, 1.370266))],
    ids=["ignn", "gcn"],
)
def test_ignn_fast_dev_run_on_karate(net, losses, tmp_path):
    cfg = compose_config(["project=ignn", "data=karate", "debug=fdr", *net], tmp_path)
    train(cfg)
    assert_first_losses(json.loads((tmp_path / "metrics.json").read_text()), *losses)


def test_ignn_fast_dev_run_on_ppi_files(fake_ppi, tmp_path):
    overrides = ["experiment=ignn/ppi", "debug=fdr", f"data.root={fake_ppi}"]
    overrides += ["model.net.hidden_channels=8", "model.net.num_layers=2"]
    cfg = compose_config(overrides, tmp_path)
    train(cfg)
    assert_first_losses(json.loads((tmp_path / "metrics.json").read_text()), 0.6961288, 0.6991590)


def test_ignn_one_optimisation_step_lowers_the_loss(tmp_path):
    cfg, datamodule, model = _build(["data=karate"], tmp_path)
    batch = datamodule.data

    def loss():
        with torch.no_grad():
            return model.model_step(batch, "train")["loss"].item()

    before = loss()
    trainer = quiet_trainer(max_steps=1, callbacks=[DEQReset()])
    trainer.fit(model, datamodule=datamodule)
    assert loss() < before


def test_ignn_module_projects_after_every_optimiser_step(tmp_path):
    overrides = ["data=karate", "model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=50"]
    cfg, datamodule, model = _build(overrides, tmp_path)
    weights = []
    original = model.net.project_

    def spy():
        weights.append(model.net.layers[0].cell.weight.detach().abs().sum(1).max().item())
        original()

    model.net.project_ = spy
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(model, datamodule=datamodule)
    bound = cfg.model.net.kappa / float(model.net.lambda_pf)
    # Once at the first training forward (a new graph), then after each of the two steps.
    assert len(weights) == 3 and weights[-1] > bound  # the steps left the ball ...
    assert model.net.layers[0].cell.weight.abs().sum(1).max() <= bound + 1e-6  # ... and came back


def _composed(experiment, tmp_path):
    cfg = compose_config([f"experiment=ignn/{experiment}", "debug=fdr"], tmp_path)
    return cfg, OmegaConf.to_container(cfg.model, resolve=True)


def test_ignn_experiments_compose_to_their_recipes(tmp_path):
    cfg, model = _composed("ppi", tmp_path)
    assert model["task"] == "multilabel" and model["net"]["kappa"] is None
    assert (cfg.deq.f_solver, cfg.deq.ift, cfg.deq.grad, cfg.deq.tau) == (
        "fixed_point_iter",
        False,
        5,
        0.5,
    )
    assert (cfg.norm.norm_type, cfg.norm.norm_clip) == ("spectral_norm", True)
    assert cfg.monitor == "val/f1"
    for experiment, net_class in [
        ("chains", IGNN),
        ("chains_gcn", GCN),
        ("wordnet", IGNN),
        ("wordnet_gcn", GCN),
    ]:
        cfg, model = _composed(experiment, tmp_path)
        net = hydra.utils.instantiate(cfg.model.net)
        assert type(net) is net_class
    assert _composed("chains", tmp_path)[0].data.chain_length == 100
    wordnet, wordnet_gcn = _composed("wordnet", tmp_path)[1], _composed("wordnet_gcn", tmp_path)[1]
    assert wordnet["net"]["hidden_channels"] == wordnet_gcn["net"]["hidden_channels"]
    assert wordnet["optimizer"] == wordnet_gcn["optimizer"]


def test_ignn_multilabel_f1_is_the_micro_f1_of_the_whole_epoch():
    torch.manual_seed(0)
    module = IGNNModule(GCN(5, 8, 4), torch.optim.Adam, num_classes=4, task="multilabel")
    module.eval()
    graphs = [
        Data(x=torch.randn(n, 5), edge_index=torch.tensor([[0, 1], [1, 0]]),
             y=(torch.rand(n, 4) > 0.5).float())
        for n in (7, 3)
    ]  # fmt: skip
    tp = fp = fn = 0
    with torch.no_grad():
        for graph in graphs:
            module.model_step(graph, "val")
            pred, true = module(graph.x, graph.edge_index)[-1] > 0, graph.y > 0.5
            tp += int((pred & true).sum())
            fp += int((pred & ~true).sum())
            fn += int((~pred & true).sum())
    f1 = float(module.metric("val", "f1").compute())
    assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
