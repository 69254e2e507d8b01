"""The fused TopK training step equals the autograd reference (values, gradients, whole runs)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import tc_circuits.training.trainer as trainer_mod
from tc_circuits.coders import losses
from tc_circuits.coders import topk_step
from tc_circuits.coders.topk_step import TopKWorkspace, fused_step_supported, topk_loss_and_grads
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import Trainer, train_transcoders


def _tc(d=8, d_out=9, n=64, k=4, skip=True, dtype=torch.float32, seed=0):
    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d_out, n_latents=n, k=k, skip=skip), dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return tc


def _batch(dead_every):
    """40 rows of (x [40, 8], y [40, 9]), every ``dead_every``-th of 64 latents dead, FVU denominator."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 8, generator=g), torch.randn(40, 9, generator=g)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::dead_every] = True
    return x, y, dead, losses.centered_sum_sq(y)


def _reference(tc, x, y, den, dead, alpha, monkeypatch):
    """topk_forward + auxk_loss + backward with the plain reference kernels."""
    monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", False)
    for p in tc.parameters():
        p.grad = None
    f = losses.topk_forward(tc, x)
    loss = (f.output - y).pow(2).sum() / den
    if alpha > 0 and bool(dead.any()):
        loss = loss + alpha * losses.auxk_loss(tc, x, f.pre_acts, y - f.output, dead)
    loss.backward()
    grads = [p.grad.clone() for p in tc.parameters()]
    for p in tc.parameters():
        p.grad = None
    return loss.detach(), f.indices.sort(-1).values, grads


# 22 dead: AuxK picks k_aux=4 of them; 8 dead (<= 4 k_aux); 4 dead: all chosen; none dead
# transposed_max 0: the W_enc gradient through a contiguous product + transposing copy (the
# branch large sparse-AuxK steps take), else written through the gradient's transposed view
@pytest.mark.parametrize("dead_every", [3, 8, 20, 1000])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("transposed_max", [None, 0])
def test_fused_step_equals_reference_values_and_gradients(monkeypatch, dead_every, skip, transposed_max):
    if transposed_max is not None:
        monkeypatch.setattr(topk_step, "_TRANSPOSED_WRITE_MAX_NNZ", transposed_max)
    tc = _tc(skip=skip)
    x, y, dead, den = _batch(dead_every)
    ref_loss, ref_idx, ref_grads = _reference(tc, x, y, den, dead, 0.5, monkeypatch)
    ws = TopKWorkspace()
    for _ in range(2):  # the second call reuses the workspace and the gradient buffers
        res = topk_loss_and_grads(tc, x, y, den, dead=dead, auxk_alpha=0.5, workspace=ws)
        torch.testing.assert_close(res.loss, ref_loss, rtol=1e-6, atol=1e-7)
        assert torch.equal(res.indices.sort(-1).values, ref_idx)
        f = losses.topk_forward(tc, x)
        assert torch.equal(res.sq_err, (f.output - y).pow(2).sum().detach())
        assert any((gr != 0).any() for gr in ref_grads)
        for p, ref in zip(tc.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-6)


def test_fused_step_float64_and_sae_equals_reference(monkeypatch):
    tc = _tc(d=6, d_out=6, n=40, k=5, skip=False, dtype=torch.float64, seed=1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::2] = True
    den = losses.centered_sum_sq(x)
    ref_loss, _, ref_grads = _reference(tc, x, x, den, dead, 1.0, monkeypatch)
    res = topk_loss_and_grads(tc, x, x, den, dead=dead, auxk_alpha=1.0)
    torch.testing.assert_close(res.loss, ref_loss, rtol=1e-12, atol=1e-13)
    for p, ref in zip(tc.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, ref, rtol=1e-10, atol=1e-12)


def test_fused_step_gradient_matches_finite_differences():
    tc = _tc(d=5, d_out=4, n=16, k=3, dtype=torch.float64, seed=2)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 4, generator=g, dtype=torch.float64)
    den = torch.tensor(7.0, dtype=torch.float64)
    topk_loss_and_grads(tc, x, y, den)
    eps = 1e-6
    for p in (tc.W_dec, tc.b_dec, tc.W_skip):
        i = (0,) * p.ndim
        with torch.no_grad():
            p[i] += eps
            up = float(topk_loss_and_grads(tc, x, y, den).loss)
            p[i] -= 2 * eps
            down = float(topk_loss_and_grads(tc, x, y, den).loss)
            p[i] += eps
        topk_loss_and_grads(tc, x, y, den)
        assert float(p.grad[i]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_fused_step_rejects_unsupported():
    tc = Transcoder(TranscoderConfig(d_in=4, d_out=4, n_latents=8, activation="relu"))
    assert not fused_step_supported(tc)
    with pytest.raises(ValueError, match="TopK"):
        topk_loss_and_grads(tc, torch.randn(3, 4), torch.randn(3, 4), torch.tensor(1.0))
    tk = _tc(d=4, d_out=4, n=8, k=2)
    with pytest.raises((ValueError, TypeError), match="'y'|y of shape"):  # jaxtyping's check or ours
        topk_loss_and_grads(tk, torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))


def _train(monkeypatch, fast: bool):
    monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", fast)
    monkeypatch.setattr(trainer_mod, "_FUSED_ADAM", fast)
    cfg = TrainConfig(layers=(0, 1), kind="skip_transcoder", n_latents=64, k=4, batch_size=64,
                      buffer_tokens=256, total_tokens=64 * 8, warmup_steps=2, lr=3e-3,
                      dead_tokens_threshold=128, log_every=3, grad_clip=1.0)
    tokens = torch.randint(0, 50, (256, 16), generator=torch.Generator().manual_seed(0))
    trainer = Trainer(make_tiny_model(), tokens, cfg, progress=False)
    assert trainer._fused() is fast
    return trainer.run()


def test_trainer_fused_run_equals_reference_run(monkeypatch):
    """Whole runs (AuxK active after 2 steps, grad clipping, two layers): same weights and metrics."""
    fast, ref = _train(monkeypatch, True), _train(monkeypatch, False)
    assert fast.steps == ref.steps == 8
    for layer in (0, 1):
        assert fast.metrics[layer].fvu == pytest.approx(ref.metrics[layer].fvu, rel=1e-4)
        assert fast.metrics[layer].l0 == ref.metrics[layer].l0
        assert fast.metrics[layer].dead_fraction == ref.metrics[layer].dead_fraction
        for (name, a), b in zip(fast.transcoders[layer].named_parameters(), ref.transcoders[layer].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_trainer_switching_paths_midway_does_not_leak_gradients(monkeypatch):
    """A step with the fused kernel, then one with the reference: the reference starts from no gradient."""
    cfg = TrainConfig(layers=(0,), kind="transcoder", n_latents=32, k=4, batch_size=32,
                      buffer_tokens=128, total_tokens=32 * 2, dead_tokens_threshold=10_000)
    tokens = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(1))
    trainer = Trainer(make_tiny_model(), tokens, cfg, progress=False)
    trainer.train_step(next(trainer.store))
    batch = next(trainer.store)
    monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", False)
    tc = trainer.transcoders[0]
    x, y = batch[0]
    expected = {}
    for p in tc.parameters():
        p.grad = None
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = trainer._layer_loss(0, x, y, [])
    loss.backward()
    expected = {n: p.grad.clone() for n, p in tc.named_parameters()}
    topk_loss_and_grads(tc, x, y, losses.centered_sum_sq(y))  # stale buffers left in .grad
    captured = {}
    original = trainer.optimizer.step

    def capture():
        captured.update({n: p.grad.clone() for n, p in tc.named_parameters()})
        original()

    monkeypatch.setattr(trainer.optimizer, "step", capture)
    trainer.train_step(batch)
    for name, grad in expected.items():
        torch.testing.assert_close(captured[name], grad, rtol=0, atol=0, msg=name)
    trainer.store.close()


@pytest.mark.skipif(not __import__("tc_circuits.onednn", fromlist=["available"]).available(), reason="no oneDNN linear")
@pytest.mark.parametrize("dead_every", [3, 1000])
def test_fused_step_with_the_onednn_encoder_equals_reference(monkeypatch, dead_every):
    """The encoder product through oneDNN (forced on this narrow coder): same TopK, loss and
    gradients as the reference to float32 rounding; the default width threshold leaves it off here."""
    tc = _tc()
    x, y, dead, den = _batch(dead_every)
    ref_loss, ref_idx, ref_grads = _reference(tc, x, y, den, dead, 0.5, monkeypatch)
    ws = TopKWorkspace()
    with torch.no_grad():  # as inside the fused step
        pre0 = topk_step._encoder(tc, x, ws, 40, 64)  # default threshold (256 > d_in 8): addmm into the workspace
        assert pre0.data_ptr() == ws.get("pre", (40, 64), tc.W_enc).data_ptr()
        monkeypatch.setattr(topk_step, "_ONEDNN_ENCODER_MIN_D_IN", 0)
        pre = topk_step._encoder(tc, x, ws, 40, 64)
        assert pre.data_ptr() != pre0.data_ptr()
        torch.testing.assert_close(pre, torch.addmm(tc.b_enc, x, tc.W_enc), rtol=1e-6, atol=1e-6)
    for _ in range(2):
        res = topk_loss_and_grads(tc, x, y, den, dead=dead, auxk_alpha=0.5, workspace=ws)
        torch.testing.assert_close(res.loss, ref_loss, rtol=1e-6, atol=1e-7)
        assert torch.equal(res.indices.sort(-1).values, ref_idx)
        for p, ref in zip(tc.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-6)
