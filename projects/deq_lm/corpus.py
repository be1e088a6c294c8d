"""Word-level corpora for language modelling: reading, markup stripping, vocabulary, caching.

Every corpus goes through the same path: a reader yields ``(document, split, lines)`` triples
of raw text; lines are tokenised into words, a :class:`Vocab` is built from the training split
(minimum count, ``<unk>`` for the rest, ``<eos>`` closing every line, as WikiText is built),
and the encoded lines are cached with Hugging Face ``datasets`` (``Dataset.map`` then
``save_to_disk``), so the next run reads token ids straight from Arrow files.

Corpora:

* ``enwiki_gensim`` (default): 106 English Wikipedia articles from gensim's test dump. Main-
  namespace, non-redirect pages; markup stripped with ``mwparserfromhell`` (references, files,
  categories and tables dropped); split by article 90/5/5 with a seeded permutation.
* ``wikitext103`` / ``wikitext2``: the standard ``wiki.{train,valid,test}.tokens`` files
  (already tokenised, ``<unk>`` included) under a root the user gives.
* ``kjv``: the King James Bible, one verse per line, split by chapter 90/5/5.
* ``text``: any plain UTF-8 file, split by line blocks 90/5/5 (tests use a tiny one).

References:
    Merity, Xiong, Bradbury, Socher, "Pointer Sentinel Mixture Models", ICLR 2017
    (arXiv 1609.07843): the WikiText data sets and their construction.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deqzoo.data.sources import data_root, require

__all__ = [
    "CORPORA",
    "Corpus",
    "Vocab",
    "load_corpus",
    "read_enwiki_pages",
    "strip_markup",
    "tokenize",
]

UNK, EOS = "<unk>", "<eos>"
SPLITS = ("train", "valid", "test")
ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
#: Bumped whenever tokenisation or the cache layout changes, so stale caches are not reused.
CACHE_VERSION = 1

_WORD = re.compile(r"\w+|[^\w\s]")
_DROP_TAGS = {"ref", "table", "gallery", "math", "timeline", "references", "score", "imagemap"}
_DROP_LINKS = re.compile(r"^\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)


def tokenize(line: str, lowercase: bool = False) -> list[str]:
    """Splits a line into words and single punctuation marks.

    Example:
        >>> tokenize("The cat's 3 toys, (mostly) red.")
        ['The', 'cat', "'", 's', '3', 'toys', ',', '(', 'mostly', ')', 'red', '.']
    """
    if lowercase:
        line = line.lower()
    return _WORD.findall(line)


def strip_markup(wikitext: str) -> str:
    """Plain text of a MediaWiki article: links reduced to their text, templates, tables,
    references, files, categories and interlanguage links dropped.

    Example:
        >>> strip_markup("'''Cats''' are [[animal|animals]].<ref>A book.</ref>{{cite}}")
        'Cats are animals.'
    """
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=False):
        if str(tag.tag).strip().lower() in _DROP_TAGS:
            _remove(code, tag)
    for link in code.filter_wikilinks():
        if _DROP_LINKS.match(str(link.title)):
            _remove(code, link)
    for template in code.filter_templates(recursive=False):
        _remove(code, template)
    text = code.strip_code(normalize=True, collapse=True)
    return re.sub(r"[ \t]+", " ", text)


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


def read_enwiki_pages(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yields ``(title, wikitext)`` of the main-namespace, non-redirect pages of a dump."""
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rb") as f:
        for _, el in ET.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {c.tag.rsplit("}", 1)[-1]: c for c in el}
            if (
                fields.get("ns") is not None
                and fields["ns"].text == "0"
                and "redirect" not in fields
            ):
                revision = {c.tag.rsplit("}", 1)[-1]: c for c in fields["revision"]}
                yield fields["title"].text or "", revision["text"].text or ""
            el.clear()


def _split_documents(n: int, ratios: Sequence[float], seed: int) -> list[str]:
    """The split of each of ``n`` documents: a seeded permutation cut at the ratios."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(n * ratios[1]))
    n_test = max(1, round(n * ratios[2]))
    split = ["train"] * n
    for i in order[:n_valid]:
        split[i] = "valid"
    for i in order[n_valid : n_valid + n_test]:
        split[i] = "test"
    return split


# -- readers: (document id, split, lines of raw text) ---------------------------------------


def _enwiki(root, ratios, seed) -> Iterator[tuple[int, str, list[str]]]:
    folder = require("enwiki_gensim", root)
    pages = list(read_enwiki_pages(folder / ENWIKI_FILE))
    splits = _split_documents(len(pages), ratios, seed)
    for i, ((_, wikitext), split) in enumerate(zip(pages, splits)):
        lines = [ln.strip() for ln in strip_markup(wikitext).split("\n")]
        yield i, split, [ln for ln in lines if ln]


def _kjv(root, ratios, seed) -> Iterator[tuple[int, str, list[str]]]:
    folder = require("kjv", root)
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(folder / "kjv.jsonl", encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    splits = _split_documents(len(chapters), ratios, seed)
    for i, (lines, split) in enumerate(zip(chapters.values(), splits)):
        yield i, split, lines


def _wikitext(name: str, files: str):
    def read(root, ratios, seed) -> Iterator[tuple[int, str, list[str]]]:
        if root is None:
            raise FileNotFoundError(
                f"{name} needs its folder: data.root=/path/to/{files} holding "
                "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens (the standard "
                "WikiText release, Merity et al. 2017; it is not fetched by deqzoo)"
            )
        folder = Path(root).expanduser()
        for split in SPLITS:
            path = folder / f"wiki.{split}.tokens"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {name} expects wiki.{{train,valid,test}}.tokens in "
                    f"{folder} (unpack the {files} release there)"
                )
            with open(path, encoding="utf-8") as f:
                yield SPLITS.index(split), split, [ln.strip() for ln in f if ln.strip()]

    return read


def _text(path, ratios, seed) -> Iterator[tuple[int, str, list[str]]]:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"text corpus file {path!r} does not exist (data.root=FILE)")
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    blocks = [lines[i : i + 10] for i in range(0, len(lines), 10)]
    splits = _split_documents(len(blocks), ratios, seed)
    for i, (block, split) in enumerate(zip(blocks, splits)):
        yield i, split, block


#: name -> (reader, whether the text is already tokenised with spaces)
CORPORA = {
    "enwiki_gensim": (_enwiki, False),
    "kjv": (_kjv, False),
    "wikitext103": (_wikitext("wikitext103", "wikitext-103"), True),
    "wikitext2": (_wikitext("wikitext2", "wikitext-2"), True),
    "text": (_text, False),
}


@dataclass(frozen=True)
class Vocab:
    """A word vocabulary: ``<unk>``, ``<eos>``, then words by decreasing training count.

    Args:
        words (tuple[str, ...]): All entries, ids in order (``<unk>`` = 0, ``<eos>`` = 1).

    Example:
        >>> vocab = Vocab.build([["a", "b", "a"], ["a", "c"]], min_count=2)
        >>> vocab.words, vocab.encode(["a", "c", "<eos>"])
        (('<unk>', '<eos>', 'a'), [2, 0, 1])
    """

    words: tuple[str, ...]

    @classmethod
    def build(
        cls, lines: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
    ) -> Vocab:
        """Words seen at least ``min_count`` times (at most ``max_size`` of them, specials
        included), most frequent first; ties broken alphabetically."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count!r}")
        counts = Counter(w for line in lines for w in line)
        counts.pop(UNK, None)
        counts.pop(EOS, None)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            kept = kept[: max(max_size - 2, 0)]
        return cls((UNK, EOS, *kept))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        table = self.__dict__.get("_index")
        if table is None:
            table = {w: i for i, w in enumerate(self.words)}
            object.__setattr__(self, "_index", table)
        return table

    def encode(self, words: Sequence[str]) -> list[int]:
        index = self.index
        return [index.get(w, 0) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]

    def save(self, path: Path) -> None:
        path.write_text("\n".join(self.words) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        return cls(tuple(path.read_text(encoding="utf-8").split("\n")[:-1]))


@dataclass
class Corpus:
    """A tokenised corpus: the vocabulary and one id stream per split.

    Attributes:
        vocab (Vocab): The vocabulary (from the training split).
        streams (dict[str, torch.Tensor]): ``'train'``, ``'valid'``, ``'test'`` -> (N,) int64
            ids, lines concatenated in order, each closed by ``<eos>``.
        documents (dict[str, int]): Documents per split.
    """

    vocab: Vocab
    streams: dict[str, torch.Tensor]
    documents: dict[str, int]

    def unk_rate(self, split: str) -> float:
        """Fraction of ``split``'s tokens that are ``<unk>``."""
        ids = self.streams[split]
        return float((ids == 0).float().mean()) if ids.numel() else 0.0


def _cache_key(name, source, options) -> str:
    stamp = ""
    if source is not None and Path(source).exists():
        p = Path(source)
        files = sorted(p.glob("*")) if p.is_dir() else [p]
        stamp = ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)
    blob = json.dumps([CACHE_VERSION, name, str(source), stamp, options], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def load_corpus(
    name: str,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    min_count: int = 3,
    max_vocab: int | None = None,
    lowercase: bool = False,
    split_ratios: Sequence[float] = (0.9, 0.05, 0.05),
    seed: int = 0,
) -> Corpus:
    """Reads, tokenises, encodes and caches a corpus; a second call reads the cache.

    Args:
        name (str): One of :data:`CORPORA`.
        root (str | Path, optional): The deqzoo data root for ``enwiki_gensim`` / ``kjv``
            (``$DEQZOO_DATA`` when None), the folder of the ``wiki.*.tokens`` files for
            WikiText, the file for ``text``.
        cache_dir (str | Path, optional): Where encoded corpora are kept
            (``<data root>/deq_lm_cache`` when None).
        min_count (int): Training-split count a word needs to be in the vocabulary. Default 3.
        max_vocab (int, optional): Keep at most this many entries (most frequent).
        lowercase (bool): Lower-case the text before tokenising (not for WikiText).
        split_ratios (Sequence[float]): Train/valid/test fractions of the documents (articles,
            chapters or line blocks); WikiText comes split. Default (0.9, 0.05, 0.05).
        seed (int): Seed of the document permutation.

    Returns:
        Corpus: Vocabulary and id streams.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the choices).
        FileNotFoundError: If the data is missing; the message names the fetch command or the
            expected layout.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid choices: {sorted(CORPORA)}")
    if len(split_ratios) != 3 or abs(sum(split_ratios) - 1.0) > 1e-6:
        raise ValueError(f"split_ratios must be 3 fractions summing to 1, got {list(split_ratios)}")
    reader, pretokenized = CORPORA[name]
    if pretokenized and lowercase:
        raise ValueError(f"{name} is distributed tokenised; lowercase=True is not supported")
    # A catalogued corpus fails early with its fetch command; the others name their layout.
    source = require(name, root) if name in ("enwiki_gensim", "kjv") else root
    options = dict(
        min_count=min_count,
        max_vocab=max_vocab,
        lowercase=lowercase,
        ratios=list(split_ratios),
        seed=seed,
    )
    catalogued = name in ("enwiki_gensim", "kjv")
    cache = (
        Path(cache_dir) if cache_dir else data_root(root if catalogued else None) / "deq_lm_cache"
    )
    folder = cache / f"{name}-{_cache_key(name, source, options)}"
    if (folder / "vocab.txt").is_file() and (folder / "dataset_dict.json").is_file():
        return _read_cache(folder)
    return _build(reader, pretokenized, root, folder, options)


def _build(reader, pretokenized, root, folder: Path, options) -> Corpus:
    import datasets
    from datasets import Dataset, DatasetDict

    datasets.disable_progress_bars()  # the cache is built once, in seconds

    rows = {"doc": [], "split": [], "text": []}
    for doc, split, lines in reader(root, options["ratios"], options["seed"]):
        rows["doc"].extend([doc] * len(lines))
        rows["split"].extend([split] * len(lines))
        rows["text"].extend(lines)
    lowercase = options["lowercase"]

    def words(batch):
        if pretokenized:
            return {"words": [t.split() for t in batch["text"]]}
        return {"words": [tokenize(t, lowercase) for t in batch["text"]]}

    table = Dataset.from_dict(rows).map(words, batched=True, desc="tokenising")
    train = table.filter(lambda b: [s == "train" for s in b["split"]], batched=True)
    vocab = Vocab.build(train["words"], options["min_count"], options["max_vocab"])
    index, eos = vocab.index, vocab.index[EOS]

    def encode(batch):
        return {"ids": [[index.get(w, 0) for w in ws] + [eos] for ws in batch["words"]]}

    encoded = table.map(encode, batched=True, remove_columns=["words"], desc="encoding")
    splits = DatasetDict(
        {
            s: encoded.filter(lambda b, s=s: [x == s for x in b["split"]], batched=True)
            for s in SPLITS
        }
    )
    tmp = folder.with_name(folder.name + ".tmp")
    splits.save_to_disk(str(tmp))
    vocab.save(tmp / "vocab.txt")
    tmp.rename(folder)
    return _read_cache(folder)


def _read_cache(folder: Path) -> Corpus:
    from datasets import load_from_disk

    splits = load_from_disk(str(folder))
    streams, documents = {}, {}
    for s in SPLITS:
        column = splits[s].data.column("ids")
        flat = column.combine_chunks().flatten() if len(column) else None
        ids = np.asarray(flat, dtype=np.int64) if flat is not None else np.zeros(0, np.int64)
        streams[s] = torch.from_numpy(ids.copy())
        documents[s] = len(set(splits[s]["doc"]))
    return Corpus(Vocab.load(folder / "vocab.txt"), streams, documents)
