"""Interpolated modified Kneser-Ney n-gram language model: the count-based baseline.

The same vocabulary and id streams as the neural models (``<unk>`` and ``<eos>`` are words),
the test stream read as one sequence (contexts cross line ends, as the neural models' do).
Counts are kept as sorted NumPy arrays of n-gram keys (``t1 * V**(n-1) + ... + tn``, int64, so
``V**order < 2**63``), which makes fitting and scoring half a million tokens take seconds.

    python -m projects.deq_lm.kneser_ney --order 4            # enwiki_gensim, min count 3

References:
    Kneser, Ney, "Improved backing-off for m-gram language modeling", ICASSP 1995.
    Chen, Goodman, "An empirical study of smoothing techniques for language modeling",
    Computer Speech & Language 13, 1999 (interpolated modified Kneser-Ney, three discounts).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

__all__ = ["KneserNey"]


def _ngram_keys(ids: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """Keys of the k-grams ending at positions ``k-1 ... N-1``."""
    keys = np.zeros(len(ids) - k + 1, dtype=np.int64)
    for j in range(k):
        keys = keys * vocab_size + ids[j : len(ids) - k + 1 + j]
    return keys


def _lookup(table_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query`` keys of the sorted ``table_keys``; 0 where absent."""
    if len(table_keys) == 0:
        return np.zeros(len(query), dtype=values.dtype)
    pos = np.searchsorted(table_keys, query).clip(max=len(table_keys) - 1)
    return np.where(table_keys[pos] == query, values[pos], 0)


class _Order:
    """Counts of one order: n-gram counts, context totals, the discounts and back-off mass."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, vocab_size: int):
        self.keys, self.counts = keys, counts
        n = [int((counts == c).sum()) for c in (1, 2, 3, 4)]
        y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.0
        # Chen & Goodman's estimates; guard the tiny corpora of tests against empty counts.
        self.discount = np.array(
            [
                0.0,
                1 - 2 * y * n[1] / n[0] if n[0] else 0.5,
                2 - 3 * y * n[2] / n[1] if n[1] else 1.0,
                3 - 4 * y * n[3] / n[2] if n[2] else 1.5,
            ]
        ).clip(min=0.0)
        context = keys // vocab_size
        self.ctx_keys, first = np.unique(context, return_index=True)
        self.ctx_total = np.add.reduceat(counts, first).astype(np.float64)
        mass = self.discount[np.minimum(counts, 3)]
        self.ctx_backoff = np.add.reduceat(mass, first)

    def discounted(self, query: np.ndarray) -> np.ndarray:
        c = _lookup(self.keys, self.counts, query)
        return np.maximum(c - self.discount[np.minimum(c, 3)], 0.0)


class KneserNey:
    """Interpolated modified Kneser-Ney smoothing of order ``order``.

    The highest order uses raw counts, lower orders continuation counts (the number of
    distinct words seen before the n-gram), each order has three discounts (for counts 1, 2,
    3+) estimated from its count-of-counts, and the lowest interpolates with the uniform
    distribution over the vocabulary.

    Args:
        order (int): n of the n-grams, >= 1.
        vocab_size (int): Number of word ids; ``vocab_size ** order`` must fit in int64.

    Example:
        >>> ids = np.array([1, 2, 3, 1, 2, 3, 1, 2, 4, 1])
        >>> lm = KneserNey(order=3, vocab_size=5).fit(ids)
        >>> bool(np.isclose(np.exp(lm.log_prob_next(np.array([1, 2]))).sum(), 1.0))
        True
    """

    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order!r}")
        if order * math.log2(max(vocab_size, 2)) >= 63:
            raise ValueError(f"vocab_size {vocab_size} ** order {order} does not fit in int64")
        self.order, self.vocab_size = order, vocab_size
        self.orders: list[_Order] = []

    def fit(self, ids: np.ndarray) -> KneserNey:
        """Counts the n-grams of the training stream ``ids`` (int array)."""
        ids = np.asarray(ids, dtype=np.int64)
        V, self.orders = self.vocab_size, []
        for k in range(1, self.order + 1):
            if k == self.order:
                keys, counts = np.unique(_ngram_keys(ids, k, V), return_counts=True)
            else:
                # Continuation counts: distinct (k+1)-grams, their first word dropped.
                longer = np.unique(_ngram_keys(ids, k + 1, V))
                keys, counts = np.unique(longer % V**k, return_counts=True)
            self.orders.append(_Order(keys, counts.astype(np.int64), V))
        return self

    def _prob(self, histories: list[tuple[np.ndarray, np.ndarray]], words: np.ndarray):
        """p(word | history) for aligned arrays; ``histories[k]`` holds the keys of the k-word
        histories and a mask of the positions that have one."""
        p = np.full(len(words), 1.0 / self.vocab_size)
        for table, (h, available) in zip(self.orders, histories):
            total = _lookup(table.ctx_keys, table.ctx_total, h)
            backoff = _lookup(table.ctx_keys, table.ctx_backoff, h)
            seen = (total > 0) & available
            safe = np.where(seen, total, 1.0)
            interp = (table.discounted(h * self.vocab_size + words) + backoff * p) / safe
            p = np.where(seen, interp, p)
        return p

    def log_prob(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probability of every token of ``ids`` given the tokens before it (up
        to ``order - 1``; the first tokens use the shorter histories they have)."""
        ids = np.asarray(ids, dtype=np.int64)
        n, positions = len(ids), np.arange(len(ids))
        histories = []
        for k in range(self.order):
            h = np.zeros(n, dtype=np.int64)
            if 0 < k < n:
                h[k:] = _ngram_keys(ids[:-1], k, self.vocab_size)
            histories.append((h, positions >= k))
        return np.log(self._prob(histories, ids))

    def log_prob_next(self, history: np.ndarray) -> np.ndarray:
        """Log-probabilities of every word after ``history`` (shape (V,))."""
        history = np.asarray(history, dtype=np.int64)
        V = self.vocab_size
        histories = []
        for k in range(self.order):
            key = 0
            for t in history[len(history) - k :] if k <= len(history) else ():
                key = key * V + int(t)
            histories.append((np.full(V, key, dtype=np.int64), np.full(V, k <= len(history))))
        return np.log(self._prob(histories, np.arange(V, dtype=np.int64)))

    def perplexity(self, ids: np.ndarray) -> float:
        """exp of the mean negative log-likelihood over every token of ``ids``."""
        return float(np.exp(-self.log_prob(ids).mean()))


def main(argv: list[str] | None = None) -> None:
    from projects.deq_lm.corpus import load_corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="enwiki_gensim")
    parser.add_argument("--root", default=None)
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--lowercase", action="store_true")
    parser.add_argument("--order", type=int, nargs="+", default=[3, 4])
    args = parser.parse_args(argv)
    corpus = load_corpus(args.corpus, args.root, min_count=args.min_count, lowercase=args.lowercase)
    V = len(corpus.vocab)
    print(
        f"{args.corpus}: vocabulary {V}, tokens "
        + ", ".join(f"{s} {len(t)}" for s, t in corpus.streams.items())
        + f", <unk> {corpus.unk_rate('test'):.1%} of test"
    )
    for order in args.order:
        lm = KneserNey(order, V).fit(corpus.streams["train"].numpy())
        valid = lm.perplexity(corpus.streams["valid"].numpy())
        test = lm.perplexity(corpus.streams["test"].numpy())
        print(f"modified Kneser-Ney n={order}: valid ppl {valid:.2f}, test ppl {test:.2f}")


if __name__ == "__main__":
    main()
