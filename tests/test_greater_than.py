"""Greater-than task: tokenisation checks (GPT-2 and an organism-style tokenizer), metric and
direction against direct loops over the logits, evaluate_task with splicing."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tc_circuits.evaluation.splice import count_hooks, run_spliced
from tc_circuits.tasks import Task, evaluate_task, logit_diff
from tc_circuits.tasks.greater_than import (
    GreaterThanConfig,
    GreaterThanTask,
    greater_than_tasks,
    prompt_task,
    year_token_ids,
)
from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tests.conftest import make_tiny_model

SPLIT = r" ?[A-Za-z]+| ?\d\d| ?\d| ?[^\sA-Za-z\d]+|\s+"
WORDS = "The war expedition lasted from the year to started in and ended".split()


def tiny_tokenizer(pattern: str = SPLIT, centuries=("17", "18"), words=WORDS) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer with the organism's conventions ("Ġ17" + "32")."""
    vocab = {"<|endoftext|>": 0, "<|unk|>": 1}
    pieces = [w if w == "The" else "Ġ" + w for w in words]
    pieces += ["Ġ" + c for c in centuries] + [f"{y:02d}" for y in range(100)]
    pieces += ["Ġ1", "7", "3", "2"]
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", unk_token="<|unk|>")


@pytest.fixture(scope="module")
def gpt2_tok():
    return gpt2_tokenizer()


def test_gpt2_tokenisation(gpt2_tok):
    task = GreaterThanTask.from_tokenizer(gpt2_tok, GreaterThanConfig(nouns=("war",)))
    assert isinstance(task, Task)
    assert len(task) == 97 and task.tokens.shape == (97, 13)
    assert task.tokens[0, 0].item() == 50256  # BOS
    i32 = [p.yy for p in task.prompts].index(32)
    assert task.prompts[i32].text == "The war lasted from the year 1732 to the year 17"
    assert task.tokens[i32, -1].item() == 1596 and 2624 in task.tokens[i32].tolist()
    toks = task.tokens[i32].tolist()
    assert toks[toks.index(2624) - 1] == 1596
    ids = year_token_ids(gpt2_tok)
    assert ids[32] == 2624 and len(set(ids)) == 100
    # several nouns, both templates, other centuries: one task per token length
    cfg = GreaterThanConfig(nouns=("war", "dynasty"), templates=("lasted", "started"), centuries=(11, 17))
    with pytest.raises(ValueError, match="1102 must be tokenized as ' 11' \\+ '02'"):
        greater_than_tasks(gpt2_tok, cfg)  # GPT-2: " 1102" -> " 110" + "2"
    tasks = greater_than_tasks(gpt2_tok, cfg.__class__(**{**cfg.__dict__, "skip_bad_years": True}))
    assert [len(t) for t in tasks] == [2 * (54 + 97)] * 2  # 43 years of the 1100s are dropped
    assert {t.tokens[i, -1].item() for t in tasks for i in range(len(t))} == {1367, 1596}
    with pytest.raises(ValueError, match="different token lengths"):
        GreaterThanTask.from_tokenizer(gpt2_tok, GreaterThanConfig(templates=("lasted", "started")))


def test_organism_style_tokenizer_and_bad_tokenisations():
    tok = tiny_tokenizer()
    task = GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(nouns=("war", "expedition"), centuries=(17, 18)))
    assert task.tokens.shape == (4 * 97, 13)
    assert tok.convert_ids_to_tokens(task.tokens[0, -5:].tolist()) == ["02", "Ġto", "Ġthe", "Ġyear", "Ġ17"]
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):  # no "Ġ19"
        GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(centuries=(19,), nouns=("war",)))
    with pytest.raises(ValueError, match="unknown tokens"):
        GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(nouns=("siege",)))
    digits = tiny_tokenizer(pattern=r" ?[A-Za-z]+| ?\d|\s+")  # years split digit by digit
    with pytest.raises(ValueError, match="must be a single token|must be tokenized|must end"):
        GreaterThanTask.from_tokenizer(digits, GreaterThanConfig(nouns=("war",)))
    with pytest.raises(ValueError, match="yy_max"):
        GreaterThanConfig(yy_max=99)


def test_metric_and_direction_match_loops():
    tok = tiny_tokenizer()
    task = GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(nouns=("war",), yy_min=2, yy_max=5))
    n, seq = task.tokens.shape
    logits = torch.randn(n, seq, len(tok), generator=torch.Generator().manual_seed(0))
    direction = task.direction()
    for i, p in enumerate(task.prompts):
        year_logits = [logits[i, -1, tok.convert_tokens_to_ids(f"{y:02d}")].item() for y in range(100)]
        z = sum(torch.tensor(year_logits).double().exp())
        probs = [torch.tensor(v).double().exp() / z for v in year_logits]
        expected = sum(probs[y] for y in range(p.yy + 1, 100)) - sum(probs[y] for y in range(p.yy + 1))
        assert task.per_prompt_metric(logits)[i].item() == pytest.approx(expected.item(), rel=1e-9)
        mean_above = sum(year_logits[p.yy + 1 :]) / (99 - p.yy)
        mean_below = sum(year_logits[: p.yy + 1]) / (p.yy + 1)
        assert (logits[i, -1] @ direction[i]).item() == pytest.approx(mean_above - mean_below, rel=1e-4)
        assert logit_diff(task, logits)[i].item() == pytest.approx(mean_above - mean_below, rel=1e-4)
    assert task.metric(logits) == pytest.approx(task.per_prompt_metric(logits).mean().item())
    assert direction.sum(-1).abs().max() < 1e-6  # shift invariant
    # a model that always prefers "99" scores close to +1
    logits2 = torch.zeros_like(logits)
    logits2[:, -1, tok.convert_tokens_to_ids("99")] = 50.0
    assert task.metric(logits2) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="expected logits"):
        task.metric(logits[:2])


def test_evaluate_task_with_splicing():
    tok = tiny_tokenizer()
    task = GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(nouns=("war",), yy_min=10, yy_max=30))
    model = make_tiny_model(d_vocab=len(tok), n_ctx=16)
    tc = Transcoder(TranscoderConfig.for_model(model, 1, 40, k=5))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in tc.parameters():
            prm.copy_(0.3 * torch.randn(prm.shape, generator=gen))
    with torch.no_grad():
        ref = task.metric(model(task.tokens))
        ref_spliced = task.metric(run_spliced(model, task.tokens, {1: tc}))
    plain = evaluate_task(model, task)
    assert plain.original == pytest.approx(ref, rel=1e-6) and plain.spliced is None
    res = evaluate_task(model, task, {1: tc})
    assert res.spliced == pytest.approx(ref_spliced, rel=1e-6) and abs(res.spliced - res.original) > 1e-4
    exact = evaluate_task(model, task, [tc], error_term=True)
    assert exact.spliced == pytest.approx(exact.original, abs=1e-5)
    assert len(res.per_prompt_original) == 21 and "greater_than" in res.markdown_row()
    assert count_hooks(model) == 0
    small = make_tiny_model(d_vocab=50)
    with pytest.raises(ValueError, match="d_vocab=50"):
        evaluate_task(small, task)


def test_prompt_task_reads_the_year_and_matches_the_task_direction(gpt2_tok):
    prompt = "The war lasted from the year 1732 to the year 17"
    one = prompt_task(gpt2_tok, prompt)
    ref = GreaterThanTask.from_tokenizer(gpt2_tok, GreaterThanConfig(nouns=("war",), yy_min=32, yy_max=32))
    assert int(one.yy[0]) == 32
    assert torch.equal(one.tokens, ref.tokens)
    assert torch.equal(one.direction(), ref.direction())
    for bad in ("The war lasted from the year 1732 to the year 18", "no year here", ""):
        with pytest.raises(ValueError):
            prompt_task(gpt2_tok, bad)
