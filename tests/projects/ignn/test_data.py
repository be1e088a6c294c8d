"""IGNN data: chains invariants, the WordNet parser, KarateClub masks and the PPI loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.utils import degree

from projects.ignn.data import (
    ChainsDataModule,
    KarateDataModule,
    PPIDataModule,
    WordNetDataModule,
    make_chains,
    parse_wndb,
    wordnet_graph,
)

# A hand-written excerpt in the format of WordNet's data.verb (wndb(5)): licence lines start with
# two spaces; w_cnt is hexadecimal (0a = 10 words), p_cnt decimal; pointers are
# "symbol offset pos source/target"; verb frames follow the pointers; the gloss follows " | ".
DATA_VERB = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 29 v 02 breathe 0 take_a_breath 0 003 @ 00002325 v 0000 + 00831191 n 0303 \
~ 00002724 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I breathe"
00002325 29 v 01 respire 1 002 $ 00001740 v 0000 @ 00002325 v 0000 01 + 02 00 | undergo \
respiration by taking up air
00002724 29 v 01 choke 0 001 @ 00001740 v 0000 01 + 02 00 | breathe with great difficulty
01835496 38 v 0a go 0 move 0 travel 0 locomote 0 proceed 0 fare 0 wend 0 run 0 pass 0 \
journey 0 001 ~ 99999999 v 0000 01 + 01 00 | change location; move or proceed
"""


def test_make_chains_invariants():
    data = make_chains(num_classes=3, chains_per_class=4, chain_length=6, seed=1)
    n = 3 * 4 * 6
    assert data.num_nodes == n and data.num_edges == 2 * 3 * 4 * 5
    deg = degree(data.edge_index[0], n)
    assert deg[data.position == 0].eq(1).all() and deg[data.position == 5].eq(1).all()
    assert deg[(data.position > 0) & (data.position < 5)].eq(2).all()
    src, dst = data.edge_index
    assert data.chain[src].eq(data.chain[dst]).all()  # edges stay within a chain
    assert (data.position[src] - data.position[dst]).abs().eq(1).all()
    # Features: one-hot class at the informative end, zero elsewhere.
    ends = data.position == 0
    assert data.x[~ends].eq(0).all()
    assert data.x[ends].argmax(1).eq(data.y[ends]).all() and data.x[ends].sum(1).eq(1).all()
    # One label per chain, classes balanced.
    for c in range(12):
        assert data.y[data.chain == c].unique().numel() == 1
    assert torch.bincount(data.y[ends]).tolist() == [4, 4, 4]
    masks = torch.stack([data.train_mask, data.val_mask, data.test_mask]).int()
    assert masks.sum(0).eq(1).all()


def test_make_chains_is_reproducible_and_rejects_tiny_sizes():
    a, b = make_chains(seed=3), make_chains(seed=3)
    assert torch.equal(a.y, b.y) and torch.equal(a.train_mask, b.train_mask)
    assert not torch.equal(a.train_mask, make_chains(seed=4).train_mask)
    with pytest.raises(ValueError, match="chain_length"):
        make_chains(chain_length=1)


def test_parse_wndb_reads_the_documented_format():
    synsets = parse_wndb(DATA_VERB.splitlines())
    assert [s.offset for s in synsets] == [1740, 2325, 2724, 1835496]
    assert synsets[0].words == ("breathe", "take_a_breath")
    assert len(synsets[3].words) == 10 and synsets[3].words[-1] == "journey"
    assert synsets[0].pointers == (("@", 2325, "v"), ("+", 831191, "n"), ("~", 2724, "v"))
    assert synsets[0].gloss.startswith("draw air into") and synsets[3].lex_filenum == 38


def test_parse_wndb_names_the_malformed_line():
    lines = DATA_VERB.splitlines()[:3] + ["00001740 29 v 02 breathe 0 003 | x"]
    with pytest.raises(ValueError, match="line 4"):
        parse_wndb(lines)


def test_wordnet_graph_labels_edges_and_features():
    data = wordnet_graph(
        parse_wndb(DATA_VERB.splitlines()), max_df=1.0, train_frac=0.5, val_frac=0.25
    )
    assert data.y.tolist() == [0, 0, 0, 1] and data.lex_filenum.tolist() == [29, 38]
    # Verb pointers within the excerpt, undirected, without the self-pointer of 'respire'.
    assert sorted(map(tuple, data.edge_index.t().tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]
    air = data.vocab.index("air")
    assert data.x[:, air].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert data.x.shape == (4, len(data.vocab)) and data.x.sum(1).gt(0).all()


def test_wordnet_datamodule_reads_the_fetched_file(tmp_path):
    (tmp_path / "wordnet").mkdir()
    (tmp_path / "wordnet" / "data.verb").write_text(DATA_VERB)
    dm = WordNetDataModule(root=str(tmp_path), max_df=1.0, train_frac=0.5, num_classes=2)
    dm.setup()
    assert dm.data.num_nodes == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch is dm.data


@pytest.mark.skipif(
    Path("/usr/share/wordnet/data.verb").is_file(), reason="wordnet-base is installed"
)
def test_wordnet_datamodule_without_data_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="deqzoo.data.fetch wordnet"):
        WordNetDataModule(root=str(tmp_path)).setup()


def test_datamodule_checks_the_configured_sizes():
    with pytest.raises(ValueError, match="in_channels=5.*has 2"):
        ChainsDataModule(in_channels=5).setup()


def test_karate_masks_are_disjoint_and_cover_the_club():
    dm = KarateDataModule(in_channels=34, num_classes=4)
    dm.setup()
    masks = torch.stack([dm.data.train_mask, dm.data.val_mask, dm.data.test_mask]).int()
    assert masks.sum(0).eq(1).all() and masks.sum(1).tolist() == [4, 15, 15]


def test_ppi_without_files_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "raw")):
        PPIDataModule(root=str(tmp_path)).setup()


def test_ppi_loads_the_raw_files(fake_ppi):
    dm = PPIDataModule(root=str(fake_ppi), batch_size=2, in_channels=50, num_classes=121)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 2 and batch.x.shape == (12, 50) and batch.y.shape == (12, 121)
