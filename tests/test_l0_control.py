"""L0 controller (tc_circuits.training.l0_control): drives a ReLU / JumpReLU coder's L0 to a target."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from tc_circuits.evaluation.synth_bench import TensorPairStore, host_model
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.l0_control import L0Controller, L0TargetTrainer, quantile_threshold


def test_update_matches_the_formula_by_hand():
    c = L0Controller(target=10.0, coefficient=2.0, gain=0.5, proportional=0.0, ema=0.5, max_factor=1.5)
    assert c.update(40.0) == pytest.approx(2.0 * 1.5)  # l0_hat 40: (40/10)^0.5 = 2, clipped to 1.5
    assert c.update(10.0) == pytest.approx(3.0 * 1.5)  # l0_hat (40+10)/2 = 25: 2.5^0.5 = 1.58, clipped to 1.5
    assert c.l0_hat == pytest.approx(25.0)
    p = L0Controller(target=10.0, coefficient=2.0, gain=0.5, proportional=1.0, ema=0.0, max_factor=1.5)
    assert p.update(15.0) == pytest.approx(2.0 * 1.5**0.5 * 1.5)  # integral 2 * 1.5^0.5, push 1.5
    assert p.integral == pytest.approx(2.0 * 1.5**0.5)
    assert p.update(100.0) == pytest.approx(p.integral * 2.0)  # the push is clipped to 2
    c2 = L0Controller(target=10.0, coefficient=1.0, gain=1.0, proportional=0.0, ema=0.0, max_factor=2.0)
    assert c2.update(8.0) == pytest.approx(0.8)  # below target: the penalty shrinks
    assert c2.update(10.0) == pytest.approx(0.8)  # at target: unchanged
    assert [h[0] for h in c2.history] == [8.0, 10.0]


def test_controller_finds_the_coefficient_of_a_known_plant():
    # A plant with L0 = 200 / coefficient: the fixed point for target 8 is coefficient 25.
    c = L0Controller(target=8.0, coefficient=0.1)
    for _ in range(400):
        c.update(200.0 / c.coefficient)
    assert c.coefficient == pytest.approx(25.0, rel=1e-3)


@pytest.mark.parametrize("bad", [dict(target=0.0), dict(coefficient=-1.0), dict(ema=1.0), dict(max_factor=1.0),
                                 dict(coefficient=1e9)])
def test_bad_controller_settings_name_the_field(bad):
    kw = dict(target=4.0, coefficient=1.0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        L0Controller(**kw)


def test_quantile_threshold_sets_the_l0():
    pre = torch.randn(2000, 50, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 3, 50)
    thr = quantile_threshold(pre, 5.0)
    assert float((pre > thr).float().sum(1).mean()) == pytest.approx(5.0, rel=0.01)
    with pytest.raises(ValueError, match="target_l0"):
        quantile_threshold(pre, 50.0)


def _sparse_data(n: int, d: int = 24, feats: int = 48, per_row: float = 4.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(feats, d, generator=g), dim=-1)
    on = torch.rand(n, feats, generator=g) < per_row / feats
    mags = 1.0 + torch.rand(n, feats, generator=g)
    return (on * mags) @ dirs


def test_tensor_pair_store_yields_consecutive_slices():
    x = torch.arange(40.0).view(10, 4)
    s = TensorPairStore(x, 3)
    first = s.buffer_outputs()[0]
    got = [next(s)[0] for _ in range(3)]
    assert torch.equal(first, x[:3]) and all(torch.equal(b.x, x[3 * i : 3 * i + 3]) and b.y is b.x for i, b in enumerate(got))
    with pytest.raises(StopIteration):
        next(s)
    with pytest.raises(ValueError, match="batch_size"):
        TensorPairStore(x, 11)


# JumpReLU's L0 penalty moves only the (log-)thresholds, by about lr per Adam step: it gets
# a larger lr so the thresholds can follow the encoder within 250 steps.
@pytest.mark.parametrize("activation,start,lr", [("relu", 0.1, 3e-3), ("jumprelu", 0.3, 1e-2)])
def test_trainer_reaches_the_target_l0(activation, start, lr):
    target, bs, steps = 3.0, 256, 250
    x = _sparse_data(bs * steps + 4000)
    held_out = x[bs * steps :]  # rows of the same law the trainer never sees
    cfg = TrainConfig(layers=(0,), kind="sae", n_latents=64, activation=activation, lr=lr, warmup_steps=5,
                      batch_size=bs, total_tokens=bs * steps, buffer_tokens=bs, checkpoint_every=0,
                      normalize_decoder=True, dead_tokens_threshold=bs * 50, log_every=10)
    controller = L0Controller(target, start)
    trainer = L0TargetTrainer(host_model(24), None, cfg, progress=False, store=TensorPairStore(x, bs),
                              controller=controller)
    tc = trainer.run().transcoders[0]
    assert len(controller.history) == steps
    field = "l1_coefficient" if activation == "relu" else "jumprelu_sparsity_coefficient"
    assert getattr(trainer.cfg, field) == controller.coefficient != start
    # Independent check of the L0 the trained coder reaches on fresh rows of the same law.
    with torch.no_grad():
        l0 = float((tc(held_out).latents > 0).float().sum(1).mean())
    assert l0 == pytest.approx(target, rel=0.25)
    # The start coefficient was far from the one that gives the target: the controller moved it.
    assert controller.coefficient / start > 2.0


def test_trainer_rejects_topk_and_several_layers():
    x = _sparse_data(512)
    cfg = TrainConfig(layers=(0,), kind="sae", n_latents=32, activation="topk", k=4, batch_size=256,
                      total_tokens=512, buffer_tokens=256, checkpoint_every=0, warmup_steps=1, dead_tokens_threshold=256)
    with pytest.raises(ValueError, match="activation"):
        L0TargetTrainer(host_model(24), None, cfg, progress=False, store=TensorPairStore(x, 256),
                        controller=L0Controller(4.0, 1.0))


def test_bench_extra_pins_sae_lens_outside_core_dependencies():
    py = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    bench = py["optional-dependencies"]["bench"]
    assert any(d.replace(" ", "").startswith("sae-lens") for d in bench)
    assert not any("sae-lens" in d or "sae_lens" in d for d in py["dependencies"])
