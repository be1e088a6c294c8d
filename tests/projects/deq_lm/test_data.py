"""Language-model data: vocabulary and <unk>, the cache, stream batching order, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.deq_lm import data as lm_data
from projects.deq_lm.corpus import Vocab, load_corpus, strip_markup, tokenize
from projects.deq_lm.data import LMDataModule, StreamSegments, batchify, tiny_text_path
from projects.deq_lm.kneser_ney import KneserNey


def test_deq_lm_vocab_keeps_frequent_training_words_and_maps_the_rest_to_unk():
    vocab = Vocab.build([["the", "cat", "the"], ["the", "dog", "cat"], ["emu"]], min_count=2)
    assert vocab.words == ("<unk>", "<eos>", "the", "cat")
    assert vocab.encode(["the", "dog", "zebra", "cat", "<eos>"]) == [2, 0, 0, 3, 1]
    assert vocab.decode([3, 0]) == ["cat", "<unk>"]
    assert len(Vocab.build([["a", "b", "c", "a"]], min_count=1, max_size=3)) == 3


def test_deq_lm_text_corpus_vocab_from_train_only_and_cached(tmp_path):
    cache = tmp_path / "cache"
    corpus = load_corpus("text", tiny_text_path(), cache_dir=cache, min_count=2)
    vocab = corpus.vocab
    train = corpus.streams["train"]
    counts = np.bincount(train.numpy(), minlength=len(vocab))
    assert (counts[2:] >= 2).all()  # every word of the vocabulary is seen twice in training
    assert int((train == 1).sum()) > 0 and corpus.documents["valid"] >= 1
    # the stream is the tokenised lines, each closed by <eos>, unknown words as <unk>
    first = tiny_text_path().read_text().splitlines()[0]
    stream_words = vocab.decode(torch.cat(list(corpus.streams.values())))
    text = " ".join(stream_words)
    expected = " ".join(w if w in vocab.index else "<unk>" for w in tokenize(first)) + " <eos>"
    assert expected in text
    assert len(list(cache.iterdir())) == 1
    again = load_corpus("text", tiny_text_path(), cache_dir=cache, min_count=2)
    assert again.vocab == vocab
    assert all(torch.equal(again.streams[s], corpus.streams[s]) for s in corpus.streams)
    other = load_corpus("text", tiny_text_path(), cache_dir=cache, min_count=3)
    assert len(other.vocab) < len(vocab) and len(list(cache.iterdir())) == 2


def test_deq_lm_stream_segments_walk_every_row_in_order():
    ids = torch.arange(103)
    segments = list(StreamSegments(ids, batch_size=4, tgt_len=7))
    rows = batchify(ids, 4)  # 4 contiguous rows of 25 tokens
    assert rows[1, 0] == 25
    assert [s["reset"] for s in segments] == [True] + [False] * (len(segments) - 1)
    assert len(segments) == len(StreamSegments(ids, 4, 7))
    inputs = torch.cat([s["input"] for s in segments], dim=1)
    targets = torch.cat([s["target"] for s in segments], dim=1)
    assert torch.equal(inputs, rows[:, :-1]) and torch.equal(targets, rows[:, 1:])


def test_deq_lm_stream_segments_give_each_process_its_own_rows(monkeypatch):
    ids = torch.arange(80)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(lm_data, "_rank_world", lambda rank=rank: (rank, 2))
        seen.append(next(iter(StreamSegments(ids, batch_size=2, tgt_len=5)))["input"][:, 0])
    assert torch.equal(torch.cat(seen), batchify(ids, 4)[:, 0])


def test_deq_lm_missing_data_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m deqzoo.data.fetch enwiki_gensim"):
        load_corpus("enwiki_gensim", tmp_path)
    with pytest.raises(FileNotFoundError, match="wiki.train.tokens"):
        load_corpus("wikitext103", tmp_path)
    with pytest.raises(ValueError, match="valid choices"):
        load_corpus("wikitext-103", tmp_path)


def test_deq_lm_wikitext_files_are_read_as_given(tmp_path):
    for split, text in (("train", "a b a <unk>\nb a\n"), ("valid", "a c\n"), ("test", "b\n")):
        (tmp_path / f"wiki.{split}.tokens").write_text(text)
    corpus = load_corpus("wikitext2", tmp_path, cache_dir=tmp_path / "c", min_count=1)
    assert corpus.vocab.words == ("<unk>", "<eos>", "a", "b")
    assert corpus.vocab.decode(corpus.streams["valid"]) == ["a", "<unk>", "<eos>"]


def test_deq_lm_datamodule_checks_the_configured_vocabulary(tmp_path):
    dm = LMDataModule("text", str(tiny_text_path()), vocab_size=5, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="set data.vocab_size="):
        dm.setup()


def test_deq_lm_markup_is_stripped():
    text = strip_markup(
        "'''Cats''' are [[animal|animals]].<ref>A book.</ref>{{cite web|x=1}} "
        "[[File:Cat.jpg|thumb|A cat]][[Category:Pets]]\n== History ==\nOld."
    )
    assert text.split("\n")[0].strip() == "Cats are animals."
    assert "History" in text and "Cat.jpg" not in text and "Pets" not in text


def test_deq_lm_kneser_ney_is_a_distribution_and_beats_uniform():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, 400)
    ids[1::3] = (ids[0::3][: len(ids[1::3])] + 1) % 6  # some structure
    lm = KneserNey(order=3, vocab_size=6).fit(ids)
    for history in ([], [2], [3, 4], [5, 5]):
        assert np.isclose(np.exp(lm.log_prob_next(np.array(history))).sum(), 1.0)
    assert lm.perplexity(ids) < 6
    # scoring a stream position by position agrees with the next-word distribution
    logp = lm.log_prob(ids[:10])
    assert np.isclose(logp[5], lm.log_prob_next(ids[3:5])[ids[5]])
