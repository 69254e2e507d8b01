"""CLT training: the sparse step against a dense reference, the loss, and FVU vs per-layer transcoders."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import make_tiny_model

from tc_circuits.coders import losses
from tc_circuits.training.clt_trainer import CLTTrainer, clt_memory_bytes, train_clt
from tc_circuits.training.config import TrainConfig


def _cfg(**kw):
    base = dict(kind="skip_transcoder", n_latents=32, k=4, batch_size=64, total_tokens=64 * 20, buffer_tokens=256,
                lr=1e-2, warmup_steps=0, checkpoint_every=0, log_every=5, dead_tokens_threshold=64)
    return TrainConfig(**{**base, **kw})


def _batches(seed=0, n=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (8, 16), generator=gen) for _ in range(n)]


def _grads(trainer, batch):
    trainer.optimizer.zero_grad(set_to_none=True)
    lr = trainer.optimizer.param_groups[0]["lr"]
    for g in trainer.optimizer.param_groups:  # a zero step: gradients only
        g["lr"] = 0.0
    trainer.cfg = trainer.cfg.replace(lr=None)
    params = dict(trainer.clt.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    # run the step's loss + backward without the optimiser update
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: None
    zero = trainer.optimizer.zero_grad
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    try:
        trainer.train_step(batch)
    finally:
        trainer.optimizer.step, trainer.optimizer.zero_grad = step, zero
    for g in trainer.optimizer.param_groups:
        g["lr"] = lr
    assert all(torch.equal(before[k], v) for k, v in params.items())
    return {k: v.grad.clone() for k, v in params.items() if v.grad is not None}


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu"])
def test_sparse_step_equals_dense_reference(activation, monkeypatch):
    model = make_tiny_model(n_layers=3)
    cfg = _cfg(activation=activation, grad_clip=None, dead_tokens_threshold=1)
    t = CLTTrainer(model, _batches(), cfg, progress=False)
    with torch.no_grad():  # non-zero decoders so every gradient is exercised
        for W in t.clt.W_dec:
            W.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        if activation == "jumprelu":
            t.clt.log_threshold.fill_(-3.0)
    for c in t.since_fired:
        c.fill_(10)  # every latent dead: AuxK active
    batch = next(t.store)
    fast = _grads(t, batch)
    monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", False)
    t.window.zero_()
    for c in t.since_fired:
        c.fill_(10)
    ref = _grads(t, batch)
    assert set(fast) == set(ref)
    for name in fast:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_training_reduces_fvu_and_writes_outputs(tmp_path):
    model = make_tiny_model(n_layers=2)
    res = train_clt(model, _batches(), _cfg(out_dir=str(tmp_path / "run")), progress=False)
    assert res.steps == 20 and set(res.metrics) == {0, 1}
    assert all(m.fvu < 0.9 and m.l0 <= 4 for m in res.metrics.values())
    from tc_circuits.coders.clt import CrossLayerTranscoder

    back = CrossLayerTranscoder.load(tmp_path / "run" / "clt", model=model)
    assert torch.equal(back.W_dec[0], res.clt.W_dec[0].detach())
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_bad_configs():
    model = make_tiny_model(n_layers=2)
    with pytest.raises(ValueError, match="sae"):
        CLTTrainer(model, _batches(), _cfg(kind="sae"), progress=False)
    with pytest.raises(ValueError, match="every layer"):
        CLTTrainer(model, _batches(), _cfg(layers=(1,)), progress=False)


def test_memory_formula():
    # organism: 3 layers, 1024 latents, d 128, skip: count the real parameters
    from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder

    clt = CrossLayerTranscoder(CLTConfig(n_layers=3, d_in=128, d_out=128, n_latents=1024, skip=True))
    n_params = sum(p.numel() for p in clt.parameters())
    assert clt_memory_bytes(3, 1024, 128, skip=True) == 16 * n_params


def test_clt_fvu_below_per_layer_skip_transcoders_on_the_organism():
    """At equal latents per layer and k per layer, on the organism (small budget: 98k tokens)."""
    from tc_circuits.evaluation.evaluate import evaluate_reconstruction
    from tc_circuits.organism import load_organism, organism_token_source
    from tc_circuits.training.trainer import train_transcoders

    model = load_organism()
    cfg = TrainConfig(kind="skip_transcoder", n_latents=128, k=8, batch_size=2048, total_tokens=2048 * 48,
                      buffer_tokens=8192, checkpoint_every=0, lr=2e-3, dead_tokens_threshold=20_000)
    factory = lambda: organism_token_source(0, 32, 64)  # noqa: E731
    clt = train_clt(model, factory, cfg, progress=False).clt
    skip = train_transcoders(model, factory, cfg, progress=False).transcoders
    ev = list(itertools.islice(organism_token_source(10_000, 32, 64), 1))
    r_clt = evaluate_reconstruction(model, clt, ev, start_pos=1)
    r_skip = evaluate_reconstruction(model, skip, ev, start_pos=1)
    f_clt = [r_clt[L].fvu for L in range(3)]
    f_skip = [r_skip[L].fvu for L in range(3)]
    print(f"organism FVU per layer: CLT {f_clt} skip transcoders {f_skip}")
    assert sum(f_clt) < sum(f_skip)
    assert f_clt[2] < f_skip[2]  # the last layer gains most: it reads every earlier layer's features
