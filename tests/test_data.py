"""Token sources: rebatching, packing with BOS, tokenizers, HF datasets, replayable factories."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from tc_circuits.training.data import (
    as_token_factory,
    pack_tokens,
    rebatch,
    tensor_batches,
    tokens_from_hf_dataset,
    tokens_from_texts,
)

WORDS = ["<bos>", "<eos>", "<unk>", "the", "cat", "sat", "on", "mat", "a", "dog"]


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def test_rebatch_regroups_rows_exactly():
    rows = torch.arange(7 * 4).view(7, 4)
    source = [rows[:3], rows[3].tolist(), rows[4:]]  # tensor, list row, tensor
    out = list(rebatch(source, 2))
    assert [b.shape for b in out] == [(2, 4)] * 3
    assert torch.equal(torch.cat(out), rows[:6])
    last = list(rebatch(source, 2, drop_last=False))[-1]
    assert torch.equal(last, rows[6:])


def test_rebatch_rejects_ragged_rows_and_bad_size():
    with pytest.raises(ValueError, match="length 4"):
        list(rebatch([torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)], 3))
    with pytest.raises(ValueError, match="batch_size"):
        list(rebatch([], 0))
    with pytest.raises(ValueError, match="integers"):
        list(rebatch([torch.zeros(2, 4)], 1))


def test_pack_tokens_hand_example():
    out = pack_tokens([[5, 6, 7], [8, 9]], 3, bos_token_id=0, sep_token_id=1)
    # stream: 5 6 7 1 8 9 1 -> chunks of 2: [5,6] [7,1] [8,9] (the trailing [1] is dropped)
    assert out.tolist() == [[0, 5, 6], [0, 7, 1], [0, 8, 9]]
    assert pack_tokens([[5]], 4, bos_token_id=0).shape == (0, 4)
    with pytest.raises(ValueError, match="seq_len"):
        pack_tokens([[1]], 1, bos_token_id=0)


def test_tokens_from_texts_packs_with_bos(tokenizer):
    texts = ["the cat sat", "a dog on the mat"]
    out = tokens_from_texts(texts, tokenizer, 4)
    ids = [3, 4, 5, 1, 8, 9, 6, 3, 7, 1]  # words then <eos> separators
    assert out.tolist() == [[0] + ids[0:3], [0] + ids[3:6], [0] + ids[6:9]]
    # a model-like object with .tokenizer and .cfg works too
    model = SimpleNamespace(cfg=None, tokenizer=tokenizer)
    assert torch.equal(tokens_from_texts(texts, model, 4), out)
    no_sep = tokens_from_texts(texts, tokenizer, 5, sep_token_id=None)
    assert no_sep.tolist() == [[0, 3, 4, 5, 8], [0, 9, 6, 3, 7]]


def test_tokens_from_hf_dataset(tokenizer):
    datasets = pytest.importorskip("datasets")
    texts = ["the cat sat", "a dog on the mat", "the dog sat on a mat"]
    ds = datasets.Dataset.from_dict({"text": texts})
    assert torch.equal(tokens_from_hf_dataset(ds, tokenizer, 4), tokens_from_texts(texts, tokenizer, 4))
    ids = [[3, 4], [5, 6, 7]]
    ds_ids = datasets.Dataset.from_dict({"input_ids": ids})
    out = tokens_from_hf_dataset(ds_ids, tokenizer, 3, tokens_column="input_ids")
    assert out.tolist() == [[0, 3, 4], [0, 1, 5], [0, 6, 7]]
    with pytest.raises(ValueError, match="no column 'body'"):
        tokens_from_hf_dataset(ds, tokenizer, 4, text_column="body")


def test_as_token_factory_replays_identically():
    tokens = torch.arange(40).view(10, 4)
    f = as_token_factory(tokens, batch_size=3)
    first, second = list(f()), list(f())
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.cat(first), tokens[:9])
    shuffled = as_token_factory(tokens, batch_size=5, shuffle_seed=3)
    a, b = torch.cat(list(shuffled())), torch.cat(list(shuffled()))
    assert torch.equal(a, b) and not torch.equal(a, tokens)
    assert sorted(a[:, 0].tolist()) == tokens[:, 0].tolist()
    batches = [tokens[:2], tokens[2:4]]
    assert all(torch.equal(x, y) for x, y in zip(as_token_factory(batches)(), batches))
    fn = lambda: iter(batches)  # noqa: E731
    assert as_token_factory(fn) is fn
    with pytest.raises(ValueError, match="cannot replay"):
        as_token_factory(x for x in batches)
    assert torch.equal(next(tensor_batches(tokens, 2)), tokens[:2])
