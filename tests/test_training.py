"""Training: losses vs hand computations, init, convergence, resume, crash-safe checkpoints, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import pytest
import torch
from conftest import make_tiny_model

import tc_circuits.training.checkpoint as ckpt
from tc_circuits.cli import train as cli_train
from tc_circuits.cli.dataclass_args import dataclass_from_args
from tc_circuits.coders.losses import (
    auxk_loss,
    centered_sum_sq,
    fvu,
    jumprelu_l0_penalty,
    l1_penalty,
    topk_forward,
)
from tc_circuits.training.config import TrainConfig, default_lr
from tc_circuits.training.trainer import Trainer, train_transcoders
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet


def _tc(activation="topk", skip=True, d=6, n=10, k=3, seed=0) -> Transcoder:
    cfg = TranscoderConfig(d_in=d, d_out=d, n_latents=n, activation=activation, k=k, skip=skip)
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return tc


def _tokens(rows=256, seq=16, seed=0):
    return torch.randint(0, 50, (rows, seq), generator=torch.Generator().manual_seed(seed))


SMALL = dict(layers=(0, 1), kind="skip_transcoder", n_latents=64, k=4, batch_size=64,
             buffer_tokens=256, total_tokens=64 * 8, warmup_steps=2, lr=3e-3,
             dead_tokens_threshold=128, log_every=2)


# ----------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes, name",
    [(dict(k=100, n_latents=64), "k=100"), (dict(batch_size=0), "batch_size=0"),
     (dict(decay_fraction=1.5), "decay_fraction=1.5"), (dict(layers=(0, 0)), "duplicates"),
     (dict(lr=-1.0), "lr=-1.0"),
     (dict(total_tokens=10, batch_size=64), "total_tokens=10"), (dict(auxk_alpha=-1.0), "auxk_alpha"),
     (dict(grad_clip=0.0), "grad_clip=0.0"), (dict(layers=(-1,)), "layer -1")],
)
def test_config_rejects_bad_values(changes, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**changes)


def test_config_rejects_unknown_kind():
    # ValueError at run time; under the test suite's runtime type checks the Literal
    # annotation may already reject it with a TypeError subclass
    with pytest.raises((ValueError, TypeError), match="mlp"):
        TrainConfig(kind="mlp")  # type: ignore[arg-type]


def test_config_is_frozen_and_lr_schedule():
    cfg = TrainConfig(n_latents=1024, batch_size=10, total_tokens=100, warmup_steps=2, decay_fraction=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 3  # type: ignore[misc]
    base = 2e-4 / math.sqrt(1024 / 2**14)
    assert cfg.base_lr == pytest.approx(base) == default_lr(1024)
    # 10 steps: warmup (1/2, 1), flat until step 5, then (10-s)/5
    expected = [0.5, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert [cfg.lr_at(s) / base for s in range(10)] == pytest.approx(expected)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------- losses
def test_fvu_hand_computation():
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    y_hat = torch.tensor([[1.5, 2.0], [3.0, 5.0]])
    # mean (2, 4); variance sum = 1+4+1+4 = 10; squared error = 0.25 + 1 = 1.25
    assert fvu(y_hat, y).item() == pytest.approx(0.125)
    assert centered_sum_sq(y).item() == pytest.approx(10.0)


def test_topk_fast_path_matches_dense_reference():
    tc = _tc()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    fast = topk_forward(tc, x)
    ref = tc(x)
    torch.testing.assert_close(fast.output, ref.output, rtol=1e-5, atol=1e-6)
    dense = torch.zeros_like(ref.latents).scatter(-1, fast.indices, fast.values)
    torch.testing.assert_close(dense, ref.latents)
    target = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    grads = []
    for out in (fast.output, ref.output):
        tc.zero_grad()
        (out - target).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in tc.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_topk_keeps_exactly_k_latents():
    tc = _tc(k=3)
    with torch.no_grad():
        tc.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive the ReLU
    x = torch.randn(5, 6)
    out = topk_forward(tc, x)
    assert ((tc(x).latents > 0).sum(-1) == 3).all()
    assert ((out.values > 0).sum(-1) == 3).all()
    assert all(len(set(row)) == 3 for row in out.indices.tolist())
    # and they are the 3 largest pre-activations
    top = tc.pre_acts(x).topk(3).indices.sort(-1).values
    assert torch.equal(out.indices.sort(-1).values, top)


def test_auxk_matches_independent_computation_and_detaches_target():
    tc = _tc(skip=False, n=6, d=4)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    pre = tc.pre_acts(x).detach()
    dead = torch.tensor([True, False, True, True, False, True])  # 4 dead, k_aux = min(4 // 2, 4) = 2
    err = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), requires_grad=True)
    loss = auxk_loss(tc, x, pre, err, dead)
    # independent: per row, the 2 largest dead pre-acts (ReLU'd) times W_dec rows, no b_dec
    expected_sq = 0.0
    for r in range(3):
        cands = sorted(((pre[r, i].item(), i) for i in range(6) if dead[i]), reverse=True)[:2]
        e_hat = sum(max(v, 0.0) * tc.W_dec[i].detach() for v, i in cands)
        expected_sq += float((e_hat - err[r].detach()).pow(2).sum())
    e = err.detach()
    denom = float((e - e.mean(0)).pow(2).sum())
    scale = min(4 / 2, 1.0)
    assert loss.item() == pytest.approx(scale * expected_sq / denom, rel=1e-5)
    loss.backward()
    assert err.grad is None  # the residual target is detached
    assert tc.W_dec.grad[~dead].abs().sum() == 0 and tc.W_enc.grad[:, ~dead].abs().sum() == 0
    assert tc.W_dec.grad[dead].abs().sum() > 0 and tc.b_dec.grad is None
    assert auxk_loss(tc, x, pre, err, torch.zeros(6, dtype=torch.bool)).item() == 0.0


def test_l1_and_jumprelu_penalties():
    tc = _tc(activation="relu", skip=False, n=3, d=2)
    with torch.no_grad():
        tc.W_dec.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    latents = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 4.0]])
    # sum f_i * ||W_dec_i|| = 1*5 + 0 + 0.5*5 + 4*1 = 11.5 ; / (n_tokens 2 * y_scale 2)
    assert l1_penalty(tc, latents, 2, torch.tensor(2.0)).item() == pytest.approx(11.5 / 4)
    jr = _tc(activation="jumprelu", skip=False, n=2, d=2)
    with torch.no_grad():
        jr.log_threshold.fill_(math.log(0.5))
    pre = torch.tensor([[0.6, 0.1], [0.5002, 0.7], [0.4999, 0.2]])
    pen = jumprelu_l0_penalty(jr, pre, 3)
    assert pen.item() == pytest.approx(3 / 3)  # 0.6, 0.5002 (latent 0) and 0.7 (latent 1) pass 0.5
    pen.backward()
    bw = jr.cfg.jumprelu_bandwidth  # 1e-3: 0.5002 and 0.4999 lie within bw/2 of theta=0.5
    # d/dtheta = -(#within)/bw / n_tokens ; d theta / d log_theta = theta
    expected = torch.tensor([-2 / bw / 3 * 0.5, 0.0])
    torch.testing.assert_close(jr.log_threshold.grad, expected)


# ----------------------------------------------------------------- trainer
def test_step0_outputs_exactly_the_mean():
    model = make_tiny_model()
    tokens = _tokens(rows=32)
    cfg = TrainConfig(**{**SMALL, "buffer_tokens": 32 * 15, "batch_size": 32 * 15, "total_tokens": 32 * 15})
    trainer = Trainer(model, tokens, cfg, progress=False)
    _, cache = model.run_with_cache(tokens)
    for layer, tc in trainer.transcoders.items():
        y = cache[f"blocks.{layer}.hook_mlp_out"][:, 1:].reshape(-1, 32)
        torch.testing.assert_close(tc.b_dec.detach(), y.mean(0), rtol=1e-5, atol=1e-6)
        x = cache[f"blocks.{layer}.ln2.hook_normalized"][:, 1:].reshape(-1, 32)
        out = topk_forward(tc, x).output
        assert torch.equal(out, tc.b_dec.detach().expand_as(out))  # exactly the mean, every row
        assert torch.equal(tc(x).output, out)


def test_training_drives_fvu_down_and_leaves_state_alone(tmp_path):
    model = make_tiny_model()
    cfg = TrainConfig(layers=(1,), kind="transcoder", n_latents=128, k=12, batch_size=128,
                      buffer_tokens=1024, total_tokens=128 * 120, lr=1e-2, warmup_steps=5,
                      dead_tokens_threshold=1000, log_every=20, out_dir=str(tmp_path))
    before = cfg.to_dict()
    rng = torch.random.get_rng_state()
    result = train_transcoders(model, _tokens(), cfg, progress=False)
    assert result.metrics[1].fvu < 0.3
    assert result.metrics[1].l0 <= 12 and result.tokens_seen == 128 * 120 and result.steps == 120
    assert cfg.to_dict() == before and torch.equal(rng, torch.random.get_rng_state())
    assert all(len(h.fwd_hooks) == 0 for h in model.hook_dict.values())
    loaded = TranscoderSet.load(tmp_path / "transcoders", model=model)
    assert torch.equal(loaded[1].W_enc, result.transcoders[1].W_enc.detach())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["layers"]["1"]["fvu"] == pytest.approx(result.metrics[1].fvu)


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_other_activations_train(activation):
    model = make_tiny_model()
    cfg = TrainConfig(**{**SMALL, "layers": (0,), "activation": activation, "total_tokens": 64 * 30, "lr": 1e-2})
    result = train_transcoders(model, _tokens(), cfg, progress=False)
    assert result.metrics[0].fvu < 0.5 and result.metrics[0].l0 < 64


def _weights(result):
    return {f"{L}.{n}": p.detach().clone() for L, tc in result.transcoders.items() for n, p in tc.named_parameters()}


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    model = make_tiny_model()
    cfg = TrainConfig(**SMALL, checkpoint_every=3)
    full = train_transcoders(model, _tokens(), cfg.replace(out_dir=str(tmp_path / "a")), progress=False)
    out = str(tmp_path / "b")
    original = Trainer.train_step

    def crashing(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt("simulated crash")
        original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_transcoders(model, _tokens(), cfg.replace(out_dir=out), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    state, _ = ckpt.load_checkpoint(ckpt.find_checkpoint(out))
    assert state["step"] == 3
    resumed = train_transcoders(model, _tokens(), cfg.replace(out_dir=out), resume=True, progress=False)
    wa, wb = _weights(full), _weights(resumed)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-7, msg=name)
    assert resumed.metrics == full.metrics and resumed.steps == 8


def test_crash_mid_checkpoint_keeps_previous_one(tmp_path, monkeypatch):
    model = make_tiny_model()
    cfg = TrainConfig(**SMALL, checkpoint_every=2, out_dir=str(tmp_path))
    calls = []
    original = ckpt._write_state_json

    def failing(path, state):
        calls.append(state["step"])
        if len(calls) == 2:
            path.write_text('{"complete": tr')  # half-written, then the process dies
            raise OSError("simulated crash while saving")
        original(path, state)

    monkeypatch.setattr(ckpt, "_write_state_json", failing)
    with pytest.raises(OSError, match="simulated"):
        train_transcoders(model, _tokens(), cfg, progress=False)
    monkeypatch.setattr(ckpt, "_write_state_json", original)
    found = ckpt.find_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint"
    state, tensors = ckpt.load_checkpoint(found)
    assert state["step"] == 2 and "since_fired.0" in tensors
    Transcoder.load(found / "layer_0", model=model)
    with pytest.raises(ValueError, match="not a complete"):
        ckpt.load_checkpoint(tmp_path / "checkpoint.tmp")
    # a crash between the two renames: only checkpoint.old is left, and it is used
    os.replace(found, tmp_path / "checkpoint.old")
    assert ckpt.find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    resumed = train_transcoders(model, _tokens(), cfg, resume=True, progress=False)
    full = train_transcoders(model, _tokens(), cfg.replace(out_dir=str(tmp_path / "full")), progress=False)
    wa, wb = _weights(full), _weights(resumed)
    assert all(torch.allclose(wa[n], wb[n], rtol=0, atol=1e-7) for n in wa)


def test_resume_rejects_changed_config(tmp_path):
    model = make_tiny_model()
    cfg = TrainConfig(**{**SMALL, "total_tokens": 64 * 2}, checkpoint_every=1, out_dir=str(tmp_path))
    train_transcoders(model, _tokens(), cfg, progress=False)
    with pytest.raises(ValueError, match="n_latents"):
        Trainer(model, _tokens(), cfg.replace(n_latents=32), resume=True, progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        Trainer(model, _tokens(), cfg.replace(out_dir=None), resume=True, progress=False)


# ----------------------------------------------------------------- CLI
def test_cli_defaults_equal_train_config():
    parser = argparse.ArgumentParser()
    cli_train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--out-dir", "runs/x"])
    assert dataclass_from_args(TrainConfig, args) == TrainConfig(out_dir="runs/x")
    from tc_circuits.cli.resolve import ModelOptions

    assert dataclass_from_args(ModelOptions, args).is_organism
    assert dataclass_from_args(cli_train.TrainRunOptions, args).resume is False
    args = parser.parse_args(["train", "--layers", "0", "2", "--kind", "sae", "--k", "8",
                              "--lr", "none", "--no-exclude-bos", "--resume"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert cfg.layers == (0, 2) and cfg.kind == "sae" and cfg.k == 8 and cfg.lr is None
    assert cfg.exclude_bos is False and dataclass_from_args(cli_train.TrainRunOptions, args).resume is True
    with pytest.raises(ValueError, match="--out-dir"):
        cli_train.run(parser.parse_args(["train"]))
