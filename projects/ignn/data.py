"""Graph data for IGNN: the synthetic chains task, WordNet verbs, KarateClub and PPI.

Single-graph (transductive) sets give one batch per stage: the whole graph, a PyG ``Data`` with
boolean ``train_mask``, ``val_mask`` and ``test_mask``; the module scores a stage on its mask.
PPI gives batches of whole graphs (inductive), one split per stage, scored on all nodes.

Every data module takes ``in_channels`` and ``num_classes`` (the config interpolates the net's
sizes from them) and checks them against the data, so a mismatch fails at setup with both
numbers rather than inside a matrix product.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from deqzoo.data import DataSet, Debian, check_sizes, require

__all__ = [
    "SOURCES",
    "ChainsDataModule",
    "GraphDataModule",
    "KarateDataModule",
    "PPIDataModule",
    "Synset",
    "WordNetDataModule",
    "make_chains",
    "parse_wndb",
    "random_masks",
    "wordnet_graph",
]

#: The project's fetchable data (``python -m deqzoo.data.fetch wordnet``).
SOURCES = [
    DataSet(
        "wordnet",
        "WordNet 3.0 verb synsets with glosses, lexicographer files and pointers",
        ("data.verb",),
        Debian("wordnet-base", "/usr/share/wordnet"),
    ),
]


def random_masks(
    num_nodes: int, train_frac: float, val_frac: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint random train/val/test node masks; the test mask takes the remaining nodes.

    Args:
        num_nodes (int): Number of nodes.
        train_frac (float): Fraction of nodes for training (at least one node).
        val_frac (float): Fraction of nodes for validation.
        generator (torch.Generator): Source of randomness.

    Returns:
        tuple[Tensor, Tensor, Tensor]: Boolean masks ``(N,)``.

    Raises:
        ValueError: If the fractions are negative or leave no test nodes.

    Example:
        >>> tr, va, te = random_masks(10, 0.2, 0.3, torch.Generator().manual_seed(0))
        >>> int(tr.sum()), int(va.sum()), int(te.sum())
        (2, 3, 5)
    """
    if train_frac <= 0 or val_frac < 0 or train_frac + val_frac >= 1:
        raise ValueError(
            f"need train_frac > 0, val_frac >= 0 and train_frac + val_frac < 1, got "
            f"train_frac={train_frac!r}, val_frac={val_frac!r}"
        )
    order = torch.randperm(num_nodes, generator=generator)
    n_train = max(1, round(train_frac * num_nodes))
    n_val = round(val_frac * num_nodes)
    masks = []
    for part in (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]):
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[part] = True
        masks.append(mask)
    return masks[0], masks[1], masks[2]


def make_chains(
    num_classes: int = 2,
    chains_per_class: int = 20,
    chain_length: int = 20,
    train_frac: float = 0.05,
    val_frac: float = 0.1,
    seed: int = 0,
) -> Data:
    """The paper's synthetic chains: class information lives only at one end of each chain.

    ``num_classes * chains_per_class`` undirected path graphs of ``chain_length`` nodes. Every
    node of a chain is labelled with the chain's class; node features are ``num_classes``-dim
    and all zero except at the chain's first node, which holds the one-hot class. So a node at
    distance ``d`` from that end can only be classified by a model that propagates information
    over ``d`` hops. The chains are shuffled in node order, and train/val/test masks are random
    over all nodes.

    Args:
        num_classes (int, optional): Classes ``c``. Default 2.
        chains_per_class (int, optional): Chains per class ``n``. Default 20.
        chain_length (int, optional): Nodes per chain ``l`` (>= 2). Default 20.
        train_frac (float, optional): Fraction of labelled training nodes. Default 0.05.
        val_frac (float, optional): Fraction of validation nodes. Default 0.1.
        seed (int, optional): Seed of the chain order and the masks. Default 0.

    Returns:
        Data: ``x (c n l, c)``, ``edge_index (2, 2 c n (l - 1))``, ``y``, the three masks and
        ``chain (c n l,)`` (chain index of every node) and ``position`` (distance from the
        informative end).

    Raises:
        ValueError: If a size is too small.

    Example:
        >>> data = make_chains(num_classes=3, chains_per_class=2, chain_length=5)
        >>> data.num_nodes, data.num_edges, int(data.x.sum())
        (30, 48, 6)

    References:
        Gu et al. Implicit Graph Neural Networks. NeurIPS 2020, arXiv:2009.06211 (section 5.1).
    """
    if num_classes < 2 or chains_per_class < 1 or chain_length < 2:
        raise ValueError(
            f"need num_classes >= 2, chains_per_class >= 1 and chain_length >= 2, got "
            f"{num_classes}, {chains_per_class}, {chain_length}"
        )
    generator = torch.Generator().manual_seed(seed)
    num_chains = num_classes * chains_per_class
    # Chain k has class labels[k]; shuffled so that classes are not blocks of node ids.
    labels = torch.arange(num_classes).repeat_interleave(chains_per_class)
    labels = labels[torch.randperm(num_chains, generator=generator)]
    position = torch.arange(chain_length).repeat(num_chains)
    chain = torch.arange(num_chains).repeat_interleave(chain_length)
    num_nodes = num_chains * chain_length
    x = torch.zeros(num_nodes, num_classes)
    starts = torch.arange(num_chains) * chain_length
    x[starts, labels] = 1.0
    node = torch.arange(num_nodes)
    links = node[position < chain_length - 1]
    edge_index = to_undirected(torch.stack([links, links + 1]), num_nodes=num_nodes)
    train, val, test = random_masks(num_nodes, train_frac, val_frac, generator)
    return Data(
        x=x,
        edge_index=edge_index,
        y=labels[chain],
        train_mask=train,
        val_mask=val,
        test_mask=test,
        chain=chain,
        position=position,
    )


@dataclass(frozen=True)
class Synset:
    """One line of a WordNet ``data.<pos>`` file.

    Args:
        offset (int): Byte offset of the line: the synset's id within its part of speech.
        lex_filenum (int): Lexicographer file number (the semantic class; verbs: 29-43).
        ss_type (str): Synset type (``'v'`` for verbs).
        words (tuple[str, ...]): The synonyms.
        pointers (tuple[tuple[str, int, str], ...]): ``(symbol, target offset, target pos)``.
        gloss (str): Definition and example sentences.
    """

    offset: int
    lex_filenum: int
    ss_type: str
    words: tuple[str, ...]
    pointers: tuple[tuple[str, int, str], ...]
    gloss: str


def _parse_line(line: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, ss_type = int(fields[0]), int(fields[1]), fields[2]
    w_cnt = int(fields[3], 16)
    words = tuple(fields[4 : 4 + 2 * w_cnt : 2])
    at = 4 + 2 * w_cnt
    p_cnt = int(fields[at])
    ptr_fields = fields[at + 1 : at + 1 + 4 * p_cnt]
    if len(words) != w_cnt or len(ptr_fields) != 4 * p_cnt:
        raise ValueError(f"{w_cnt} words and {p_cnt} pointers announced, fewer found")
    pointers = tuple(
        (ptr_fields[i], int(ptr_fields[i + 1]), ptr_fields[i + 2])
        for i in range(0, len(ptr_fields), 4)
    )
    return Synset(offset, lex_filenum, ss_type, words, pointers, gloss.strip())


def parse_wndb(lines: Iterable[str]) -> list[Synset]:
    """Parses the synset lines of a WordNet database file ``data.<pos>`` (wndb(5)).

    A line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...]
    [frames ...] | gloss``; ``w_cnt`` is hexadecimal, ``p_cnt`` decimal, and each pointer is
    ``symbol offset pos source/target``. Lines that start with spaces (the licence header) are
    skipped; verb frames are not needed and not read.

    Args:
        lines (Iterable[str]): The file's lines.

    Returns:
        list[Synset]: The synsets, in file order.

    Raises:
        ValueError: If a line is malformed; the message gives its number and text.

    Example:
        >>> line = "00001740 29 v 01 breathe 0 001 @ 00002325 v 0000 01 + 02 00 | draw air"
        >>> parse_wndb([line])[0].pointers
        (('@', 2325, 'v'),)
    """
    synsets = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(" "):
            continue
        try:
            synsets.append(_parse_line(line))
        except (ValueError, IndexError) as error:
            raise ValueError(f"malformed WordNet line {number}: {error}: {line[:80]!r}") from None
    return synsets


_TOKEN = re.compile(r"[a-z]+")


def wordnet_graph(
    synsets: list[Synset],
    vocab_size: int = 1000,
    max_df: float = 0.1,
    train_frac: float = 0.3,
    val_frac: float = 0.2,
    seed: int = 0,
) -> Data:
    """A Cora-like node classification graph from WordNet synsets.

    Nodes are synsets; the label is the lexicographer file (the semantic class, e.g.
    ``verb.motion``), renumbered to ``0..C-1`` in increasing file number; edges are the pointers
    between synsets of the list (made undirected, self-loops and duplicates removed); features
    are binary bags of words of the glosses over the ``vocab_size`` words in most glosses,
    leaving out words in more than ``max_df`` of them (function words).

    Args:
        synsets (list[Synset]): From :func:`parse_wndb`.
        vocab_size (int, optional): Feature dimension (at most). Default 1000.
        max_df (float, optional): Largest document frequency kept. Default 0.1.
        train_frac (float, optional): Fraction of training nodes. Default 0.3.
        val_frac (float, optional): Fraction of validation nodes. Default 0.2.
        seed (int, optional): Seed of the masks. Default 0.

    Returns:
        Data: ``x (N, V)``, ``edge_index``, ``y``, masks, ``lex_filenum (C,)`` (the file number
        of every class) and ``vocab`` (the words, a list).

    Example:
        >>> lines = ["00000001 29 v 01 a 0 001 @ 00000002 v 0000 | breathe air",
        ...          "00000002 30 v 01 b 0 000 | move air"]
        >>> data = wordnet_graph(parse_wndb(lines), max_df=1.0, train_frac=0.5, val_frac=0.0)
        >>> data.y.tolist(), data.edge_index.tolist(), data.vocab
        ([0, 1], [[0, 1], [1, 0]], ['air', 'breathe', 'move'])
    """
    index = {s.offset: i for i, s in enumerate(synsets)}
    files = sorted({s.lex_filenum for s in synsets})
    y = torch.tensor([files.index(s.lex_filenum) for s in synsets])
    pairs = [
        (i, index[target])
        for i, s in enumerate(synsets)
        for _, target, pos in s.pointers
        if pos == s.ss_type and target in index
    ]
    num_nodes = len(synsets)
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
    edge_index, _ = remove_self_loops(edge_index)
    edge_index = coalesce(to_undirected(edge_index, num_nodes=num_nodes), num_nodes=num_nodes)

    documents = [set(_TOKEN.findall(s.gloss.lower())) for s in synsets]
    df = Counter(word for doc in documents for word in doc)
    common = [w for w, n in df.items() if n <= max_df * num_nodes]
    # Most frequent first, ties alphabetically, so the vocabulary does not depend on hashing.
    vocab = sorted(sorted(common, key=lambda w: (-df[w], w))[:vocab_size])
    column = {w: j for j, w in enumerate(vocab)}
    x = torch.zeros(num_nodes, len(vocab))
    for i, doc in enumerate(documents):
        x[i, [column[w] for w in doc if w in column]] = 1.0

    train, val, test = random_masks(
        num_nodes, train_frac, val_frac, torch.Generator().manual_seed(seed)
    )
    return Data(
        x=x,
        edge_index=edge_index,
        y=y,
        train_mask=train,
        val_mask=val,
        test_mask=test,
        lex_filenum=torch.tensor(files),
        vocab=vocab,
    )


def _single(item: Data) -> Data:
    return item


class GraphDataModule(L.LightningDataModule):
    """Full-batch node classification on one graph: every stage's loader yields that graph.

    Subclasses implement :meth:`build`. The graph carries ``train_mask``, ``val_mask`` and
    ``test_mask``.

    Args:
        in_channels (int, optional): Expected node features; checked at setup.
        num_classes (int, optional): Expected classes; checked at setup.
    """

    def __init__(self, in_channels: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.data: Data | None = None

    def build(self) -> Data:
        """Builds the graph; implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = self.build()
        check_sizes(
            type(self).__name__,
            {"in_channels": self.in_channels, "num_classes": self.num_classes},
            {"in_channels": data.num_features, "num_classes": int(data.y.max()) + 1},
        )
        self.data = data

    def _loader(self) -> DataLoader:
        # batch_size=None: no collation, the loader yields the Data object itself (so the
        # net's per-graph cache sees the same tensors every step).
        return DataLoader([self.data], batch_size=None, collate_fn=_single)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()


class ChainsDataModule(GraphDataModule):
    """The synthetic chains task (see :func:`make_chains`); generated, no files.

    Args:
        num_classes (int, optional): Classes. Default 2.
        chains_per_class (int, optional): Chains per class. Default 20.
        chain_length (int, optional): Nodes per chain. Default 20.
        train_frac (float, optional): Fraction of training nodes. Default 0.05.
        val_frac (float, optional): Fraction of validation nodes. Default 0.1.
        seed (int, optional): Seed of the generated graph. Default 0.
        in_channels (int, optional): Expected features (= ``num_classes``).

    Example:
        >>> dm = ChainsDataModule(chain_length=5)
        >>> dm.setup()
        >>> dm.data.num_nodes
        200
    """

    def __init__(
        self,
        num_classes: int = 2,
        chains_per_class: int = 20,
        chain_length: int = 20,
        train_frac: float = 0.05,
        val_frac: float = 0.1,
        seed: int = 0,
        in_channels: int | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.options = dict(
            num_classes=num_classes,
            chains_per_class=chains_per_class,
            chain_length=chain_length,
            train_frac=train_frac,
            val_frac=val_frac,
            seed=seed,
        )

    def build(self) -> Data:
        return make_chains(**self.options)


class WordNetDataModule(GraphDataModule):
    """The WordNet verb graph (see :func:`wordnet_graph`) from ``data.verb``.

    The file comes from Debian ``wordnet-base``: fetched into the data cache by
    ``python -m deqzoo.data.fetch wordnet``, or read in place from ``/usr/share/wordnet`` when
    the package is installed. WordNet 3.0 has 13,767 verb synsets in 15 classes.

    Args:
        root (str, optional): The data cache root (``paths.data_dir``); None: the default cache.
        vocab_size (int, optional): Bag-of-words size. Default 1000.
        max_df (float, optional): Largest document frequency of a feature word. Default 0.1.
        train_frac (float, optional): Fraction of training nodes. Default 0.3.
        val_frac (float, optional): Fraction of validation nodes. Default 0.2.
        seed (int, optional): Seed of the masks. Default 0.
        in_channels (int, optional): Expected features (= ``vocab_size``).
        num_classes (int, optional): Expected classes (15).

    Raises:
        FileNotFoundError: At setup, if ``data.verb`` is missing; the message gives the fetch
            command.
    """

    def __init__(
        self,
        root: str | None = None,
        vocab_size: int = 1000,
        max_df: float = 0.1,
        train_frac: float = 0.3,
        val_frac: float = 0.2,
        seed: int = 0,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.root = root
        self.options = dict(
            vocab_size=vocab_size,
            max_df=max_df,
            train_frac=train_frac,
            val_frac=val_frac,
            seed=seed,
        )

    def build(self) -> Data:
        path = require("wordnet", self.root) / "data.verb"
        with open(path, encoding="utf-8") as lines:
            synsets = parse_wndb(lines)
        return wordnet_graph(synsets, **self.options)


class KarateDataModule(GraphDataModule):
    """Zachary's karate club (PyG ``KarateClub``, built in): 34 nodes, 4 classes, for tests.

    Training uses PyG's 4 labelled nodes (one per class); the other 30 nodes are split at
    random into validation and test halves.

    Args:
        seed (int, optional): Seed of the val/test split. Default 0.
        in_channels (int, optional): Expected features (34).
        num_classes (int, optional): Expected classes (4).

    Example:
        >>> dm = KarateDataModule()
        >>> dm.setup()
        >>> [int(dm.data[k].sum()) for k in ("train_mask", "val_mask", "test_mask")]
        [4, 15, 15]
    """

    def __init__(
        self, seed: int = 0, in_channels: int | None = None, num_classes: int | None = None
    ) -> None:
        super().__init__(in_channels, num_classes)
        self.seed = seed

    def build(self) -> Data:
        from torch_geometric.datasets import KarateClub

        data = KarateClub()[0]
        rest = (~data.train_mask).nonzero().flatten()
        generator = torch.Generator().manual_seed(self.seed)
        rest = rest[torch.randperm(rest.numel(), generator=generator)]
        data.val_mask = torch.zeros_like(data.train_mask)
        data.test_mask = torch.zeros_like(data.train_mask)
        data.val_mask[rest[: rest.numel() // 2]] = True
        data.test_mask[rest[rest.numel() // 2 :]] = True
        return data


class PPIDataModule(L.LightningDataModule):
    """Protein-protein interaction graphs (PyG ``PPI``): 24 graphs, 50 features, 121 labels.

    Inductive multi-label node classification: 20 training, 2 validation and 2 test graphs.
    Nothing is downloaded: the raw files of the PPI archive (GraphSAGE release) must be in
    ``<root>/raw``; PyG processes them into ``<root>/processed`` on first use.

    Args:
        root (str): The data set folder, e.g. ``<paths.data_dir>/ppi``.
        batch_size (int, optional): Graphs per training batch. Default 2.
        num_workers (int, optional): Loader workers. Default 0.
        in_channels (int, optional): Expected features (50).
        num_classes (int, optional): Expected labels (121).

    Raises:
        FileNotFoundError: At setup, if a raw file is missing; the message lists them all.
    """

    SPLITS = {"train": "train", "val": "valid", "test": "test"}
    RAW_SUFFIXES = ("graph.json", "feats.npy", "graph_id.npy", "labels.npy")

    def __init__(
        self,
        root: str,
        batch_size: int = 2,
        num_workers: int = 0,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.sets: dict = {}

    def raw_files(self) -> list[Path]:
        """The files that must be in ``<root>/raw``."""
        return [
            self.root / "raw" / f"{prefix}_{suffix}"
            for prefix in self.SPLITS.values()
            for suffix in self.RAW_SUFFIXES
        ]

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        missing = [p for p in self.raw_files() if not p.is_file()]
        if missing:
            names = ", ".join(p.name for p in missing)
            raise FileNotFoundError(
                f"PPI files missing in {self.root / 'raw'}: {names}. Put the raw files of the "
                f"PPI archive (GraphSAGE release, ppi.zip) there, or set data.root; nothing is "
                f"downloaded."
            )
        from torch_geometric.datasets import PPI

        self.sets = {stage: PPI(str(self.root), split=stage) for stage in self.SPLITS}
        train = self.sets["train"]
        check_sizes(
            "PPIDataModule",
            {"in_channels": self.in_channels, "num_classes": self.num_classes},
            {"in_channels": train.num_features, "num_classes": train.num_classes},
        )

    def _loader(self, stage: str) -> DataLoader:
        from torch_geometric.loader import DataLoader as GraphLoader

        return GraphLoader(
            self.sets[stage],
            batch_size=self.batch_size,
            shuffle=stage == "train",
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
