"""MDEQ's data: every image set it trains on states the sizes its net reads, and they hold."""

from __future__ import annotations

import hydra
import pytest
import torch
from framework_toy import compose_config

from deqzoo.data import require


def _fetched(name: str) -> bool:
    try:
        require(name)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    "data,shape",
    [
        ("digits", (1, 8, 8)),
        pytest.param(
            "fashion_mnist",
            (1, 28, 28),
            marks=pytest.mark.skipif(not _fetched("fashion_mnist"), reason="not fetched"),
        ),
    ],
)
def test_mdeq_data_sizes_reach_the_net(data, shape, tmp_path):
    cfg = compose_config(["project=mdeq", f"data={data}", "deq.f_max_iter=2"], tmp_path)
    assert cfg.model.net.in_channels == cfg.data.in_channels == shape[0]
    assert cfg.model.net.num_classes == cfg.model.num_classes == cfg.data.num_classes
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # checks the configured sizes against the images
    x, y = next(iter(datamodule.val_dataloader()))
    assert tuple(x.shape[1:]) == shape and int(y.max()) < cfg.data.num_classes
    net = hydra.utils.instantiate(cfg.model.net).eval()
    with torch.no_grad():
        logits, _ = net(x[:4])
    assert logits[-1].shape == (4, cfg.data.num_classes)


def test_mdeq_data_cifar_recipes_state_colour_images(tmp_path):
    for experiment in ("cifar_small", "cifar_large"):
        cfg = compose_config([f"experiment=mdeq/{experiment}"], tmp_path)
        assert (cfg.data.name, cfg.model.net.in_channels, cfg.data.num_classes) == (
            "cifar10",
            3,
            10,
        )
