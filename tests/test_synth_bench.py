"""SynthSAEBench adapter: our trainer on sae-lens's synthetic data (needs the [bench] extra)."""

from __future__ import annotations

import pytest
import torch

sae_synth = pytest.importorskip("sae_lens.synthetic")

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig  # noqa: E402
from tc_circuits.evaluation.synth_bench import SyntheticPairStore, host_model  # noqa: E402
from tc_circuits.training.config import TrainConfig  # noqa: E402
from tc_circuits.training.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def synth():
    cfg = sae_synth.SyntheticModelConfig(num_features=64, hidden_dim=24, seed=3, bias=False)
    return sae_synth.SyntheticModel(cfg)


def test_store_is_reproducible_and_leaves_global_rng_alone(synth):
    before = torch.get_rng_state()
    a = [next(SyntheticPairStore(synth, 32, seed=1))[0].x for _ in range(1)]
    s1, s2 = SyntheticPairStore(synth, 32, seed=1), SyntheticPairStore(synth, 32, seed=1)
    first = s1.buffer_outputs()[0].clone()
    b1, b2 = next(s1)[0], next(s2)[0]
    assert torch.equal(b1.x, b2.x) and torch.equal(b1.x, b1.y) and torch.equal(b1.x, first)
    assert torch.equal(a[0], b1.x)
    assert not torch.equal(next(s1)[0].x, b1.x)
    assert torch.equal(torch.get_rng_state(), before)


def test_ground_truth_decoder_scores_mcc_one(synth):
    # An SAE whose decoder rows are the true features: sae-lens's MCC must be exactly 1.
    host = host_model(24)
    cfg = TranscoderConfig.for_model(host, 0, 64, kind="sae", activation="relu")
    sae = Transcoder(cfg)
    feats = synth.feature_dict.feature_vectors.detach()
    with torch.no_grad():
        sae.W_dec.copy_(feats)
        sae.W_enc.copy_(torch.linalg.pinv(feats))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    res = sae_synth.eval_sae_on_synthetic_data(sae, synth.feature_dict, synth.activation_generator, num_samples=2000)
    assert res.mcc == pytest.approx(1.0, abs=1e-5)


def test_our_trainer_learns_the_synthetic_features(synth):
    host = host_model(24)
    cfg = TrainConfig(layers=(0,), kind="sae", n_latents=64, k=4, lr=3e-3, warmup_steps=5, batch_size=512,
                      total_tokens=512 * 150, buffer_tokens=512, checkpoint_every=0, normalize_decoder=True,
                      dead_tokens_threshold=512 * 20)
    trainer = Trainer(host, None, cfg, progress=False, store=SyntheticPairStore(synth, 512, seed=0))
    sae = trainer.run().transcoders[0].eval()
    res = sae_synth.eval_sae_on_synthetic_data(sae, synth.feature_dict, synth.activation_generator, num_samples=4000)
    untrained = Transcoder(sae.cfg, seed=5)
    with torch.no_grad():
        untrained.W_dec.copy_(torch.randn(64, 24))
    base = sae_synth.mean_correlation_coefficient(untrained.W_dec.detach(), synth.feature_dict.feature_vectors.detach())
    assert res.explained_variance > 0.5
    assert res.mcc > base + 0.2
    assert res.sae_l0 <= 4.0 + 1e-6
