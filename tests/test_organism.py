"""The bundled model organism: tokenizer, corpus, token source, loader, greater-than score,
training recipe and shipped transcoders, each checked against a computation written here."""

from __future__ import annotations

import json
import re
from itertools import islice

import pytest
import torch

from tc_circuits.organism import load_organism, load_organism_transcoders, organism_token_source, organism_tokenizer
from tc_circuits.organism.corpus import CENTURIES, GT_TEMPLATES, documents, greater_than_sentence
from tc_circuits.organism.model import TRANSCODER_KINDS, WEIGHTS_DIR
from tc_circuits.organism.tokenizer import BOS, UNK, build_tokenizer
from tc_circuits.organism.train import OrganismTrainConfig, greater_than_score, train_model
from tc_circuits.tasks.greater_than import GreaterThanTask
from tc_circuits.coders.transcoder import Transcoder

PROMPT = "The war lasted from the year 1732 to the year 17"
GT_RE = re.compile(r"the year (1\d)(\d\d)(?: to| and ended in) the year (1\d)(\d\d)\.")


@pytest.fixture(scope="module")
def model():
    return load_organism()


@pytest.fixture(scope="module")
def tokenizer():
    return organism_tokenizer()


# ----------------------------------------------------------------------------- tokenizer


def test_prompt_tokenization(model) -> None:
    assert model.to_str_tokens(PROMPT) == [
        BOS, "The", " war", " lasted", " from", " the", " year", " 17", "32",
        " to", " the", " year", " 17",
    ]
    tokens = model.to_tokens(PROMPT)
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_string(tokens[0, 1:]) == PROMPT
    doc = next(documents(5))
    assert model.to_string(model.to_tokens(doc, prepend_bos=False)[0]) == doc


def test_year_and_century_tokens_are_single_tokens(tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    unk = tokenizer.convert_tokens_to_ids(UNK)
    ids = []
    for text, vocab_key in [(f"{y:02d}", f"{y:02d}") for y in range(100)] + [
        (f" {c}", f"\u0120{c}") for c in range(11, 20)  # byte-level: a leading space is "Ġ"
    ]:
        enc = tokenizer.encode(text, add_special_tokens=False)
        assert enc == [vocab[vocab_key]], text
        assert enc[0] != unk
        ids.append(enc[0])
    assert len(set(ids)) == 109


def test_build_tokenizer_matches_shipped_file(tokenizer) -> None:
    built = build_tokenizer()
    assert built.get_vocab() == tokenizer.get_vocab()
    shipped = json.loads((WEIGHTS_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    assert built.get_vocab() == shipped
    doc = next(documents(1))
    assert built.encode(doc) == tokenizer.encode(doc)


def test_corpus_has_no_unknown_tokens(tokenizer) -> None:
    unk = tokenizer.convert_tokens_to_ids(UNK)
    for doc in islice(documents(3), 100):
        assert unk not in tokenizer.encode(doc, add_special_tokens=False), doc


# ----------------------------------------------------------------------------- corpus


def test_greater_than_sentences_end_after_they_start() -> None:
    import random

    rng = random.Random(0)
    templates, centuries, starts = set(), set(), set()
    for _ in range(2000):
        s = greater_than_sentence(rng)
        m = GT_RE.search(s)
        assert m, s
        c1, yy, c2, zz = m.groups()
        assert c1 == c2 and int(zz) > int(yy), s
        templates.add("lasted" in s)
        centuries.add(c1)
        starts.add(int(yy))
    assert templates == {True, False} and centuries == set(CENTURIES) and len(GT_TEMPLATES) == 2
    assert min(starts) <= 2 and max(starts) >= 95


def test_documents_deterministic_and_relation_holds_inside_documents() -> None:
    a = list(islice(documents(7), 50))
    assert a == list(islice(documents(7), 50))
    assert a != list(islice(documents(8), 50))
    n_gt = 0
    for doc in a:
        for c1, yy, c2, zz in GT_RE.findall(doc):
            assert c1 == c2 and int(zz) > int(yy)
            n_gt += 1
    assert n_gt > 50  # ~40% of 300 sentences


def test_token_source(tokenizer) -> None:
    def first(seed: int, n: int = 2):
        return list(islice(organism_token_source(seed, 3, 24), n))

    a, b, c = first(0), first(0), first(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    for batch in a:
        assert batch.shape == (3, 24) and batch.dtype == torch.long
        assert (batch[:, 0] == tokenizer.bos_token_id).all()
        assert not (batch[:, 1:] == tokenizer.bos_token_id).any()
    # Reference: BOS + the first 23 tokens of each long-enough document of documents(seed).
    docs = documents(0, n_sentences=max(2, 24 // 8))
    rows = []
    while len(rows) < 6:
        ids = tokenizer.encode(next(docs), add_special_tokens=False)
        if len(ids) >= 23:
            rows.append([tokenizer.bos_token_id] + ids[:23])
    assert torch.equal(torch.cat(a), torch.tensor(rows))
    with pytest.raises(ValueError, match="batch_size"):
        next(organism_token_source(0, 0, 24))


# ----------------------------------------------------------------------------- model


def test_load_organism_processed_and_equivalent_to_raw(model) -> None:
    from tc_circuits.models.model_info import weight_processing

    assert weight_processing(model) == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
    raw = load_organism(fold_ln=False, center_writing_weights=False, center_unembed=False)
    assert weight_processing(raw) == {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tokens = next(organism_token_source(11, 4, 48))
    with torch.no_grad():
        lp_processed = model(tokens).log_softmax(-1)
        lp_raw = raw(tokens).log_softmax(-1)
    assert (lp_processed - lp_raw).abs().max() < 1e-4
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (3, 128, len(model.tokenizer))


def test_greater_than_score_matches_direct_computation(model, tokenizer) -> None:
    task = GreaterThanTask.from_tokenizer(model.tokenizer)
    yys = sorted({p.yy for p in task.prompts})
    assert yys == list(range(2, 99))
    year_ids = torch.tensor([tokenizer.get_vocab()[f"{y:02d}"] for y in range(100)])
    with torch.no_grad():
        logits = model(task.tokens)[:, -1, :].double()
    probs = logits[:, year_ids].softmax(-1)
    diffs = []
    for i, prompt in enumerate(task.prompts):
        yy = int(re.search(r"year 17(\d\d) ", prompt.text).group(1))
        diffs.append(float(probs[i, yy + 1 :].sum() - probs[i, : yy + 1].sum()))
    direct = sum(diffs) / len(diffs)
    score = greater_than_score(model)
    assert abs(score - direct) < 1e-6
    assert score >= 0.80


# ----------------------------------------------------------------------------- training recipe


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"), (dict(seq_len=0), "seq_len"),
     (dict(transcoder_k=33, transcoder_latents=32), "transcoder_k=33")],
)
def test_train_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OrganismTrainConfig(**kwargs)


def test_train_model_is_deterministic() -> None:
    tok = build_tokenizer()

    def run(seed: int):
        cfg = OrganismTrainConfig(steps=3, batch_size=2, seq_len=16, warmup_steps=1, eval_every=100, seed=seed)
        model = train_model(cfg, tok, progress=False)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    a, b, c = run(0), run(0), run(1)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert all(torch.isfinite(v).all() for v in a.values())
    # Training moved the weights away from the seed's initialisation.
    from transformer_lens import HookedTransformer

    from tc_circuits.organism.model import organism_config

    init = HookedTransformer(organism_config(len(tok), seed=0), tokenizer=tok)
    assert not torch.equal(init.W_in, a["blocks.0.mlp.W_in"])


# ----------------------------------------------------------------------------- shipped transcoders


def _shipped(kind: str) -> bool:
    return (WEIGHTS_DIR / "transcoders" / kind / "layer_2" / "weights.safetensors").is_file()


@pytest.mark.parametrize("kind", TRANSCODER_KINDS)
def test_shipped_transcoders_fvu(kind: str, model) -> None:
    if not _shipped(kind):
        pytest.skip(f"shipped {kind} transcoders not present under {WEIGHTS_DIR / 'transcoders' / kind}")
    tset = load_organism_transcoders(kind, model=model)
    assert sorted(tset) == [0, 1, 2]
    tokens = next(organism_token_source(999, 16, 64))
    names = {n for tc in tset.values() for n in (tc.cfg.input_site, tc.cfg.output_site)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    for layer, tc in tset.items():
        assert isinstance(tc, Transcoder)
        assert tc.cfg.is_sae == (kind == "sae") and tc.cfg.skip == (kind == "skip_transcoder")
        x = cache[tc.cfg.input_site][:, 1:].reshape(-1, tc.cfg.d_in)  # drop BOS positions
        y = cache[tc.cfg.output_site][:, 1:].reshape(-1, tc.cfg.d_out)
        with torch.no_grad():
            yhat = tc(x).output
        fvu = float(((yhat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
        assert fvu < 0.5, f"{kind} layer {layer}: FVU {fvu:.3f}"
    # The same folder loads onto the unprocessed model only with a flag error.
    raw = load_organism(fold_ln=False, center_writing_weights=False, center_unembed=False)
    with pytest.raises(ValueError, match="weight processing mismatch"):
        load_organism_transcoders(kind, model=raw)


def test_train_model_leaves_global_rng_alone() -> None:
    # torch and NumPy global states must survive train_model (TransformerLens seeds them when a
    # config carries a seed). Python's `random` is checked on the helper itself: under pytest,
    # beartype's constant-time container checks draw from it on every checked call.
    import random

    import numpy as np

    from tc_circuits.organism.train import _preserve_global_rng

    tok = build_tokenizer()
    cfg = OrganismTrainConfig(steps=1, batch_size=2, seq_len=16, warmup_steps=1, eval_every=100)
    torch.manual_seed(123)
    np.random.seed(7)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(7)
    train_model(cfg, tok, progress=False)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_np)

    random.seed(5)
    expected_py = random.random()
    random.seed(5)
    with _preserve_global_rng():
        random.seed(99)
        np.random.seed(99)
        torch.manual_seed(99)
    assert random.random() == expected_py
