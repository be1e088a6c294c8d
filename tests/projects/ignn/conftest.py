"""Fake PPI files for the IGNN tests (the real archive is not downloaded anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _write_fake_ppi(root: Path, nodes=6, graphs=2, features=50, labels=121, seed=0):
    """Raw files in the layout of the PPI archive: a few tiny graphs per split."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True)
    n = nodes * graphs
    for split in ("train", "valid", "test"):
        links = [
            {"source": g * nodes + i, "target": g * nodes + (i + 1) % nodes}
            for g in range(graphs)
            for i in range(nodes)
        ]
        graph = {"directed": False, "multigraph": False, "graph": {}, "links": links}
        graph["nodes"] = [{"id": i} for i in range(n)]
        (raw / f"{split}_graph.json").write_text(json.dumps(graph))
        np.save(raw / f"{split}_feats.npy", rng.standard_normal((n, features)))
        np.save(raw / f"{split}_labels.npy", rng.integers(0, 2, (n, labels)))
        np.save(raw / f"{split}_graph_id.npy", np.repeat(np.arange(graphs) + 1, nodes))


@pytest.fixture
def fake_ppi(tmp_path):
    """A folder with raw PPI files (50 features, 121 labels, two 6-node graphs per split)."""
    root = tmp_path / "ppi"
    _write_fake_ppi(root)
    return root
