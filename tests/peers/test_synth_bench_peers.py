"""SynthSAEBench adapter: our trainer on sae-lens's synthetic data (needs the [bench] extra)."""

from __future__ import annotations

import pytest
import torch

import sae_lens.synthetic as sae_synth  # noqa: E402  (tests/peers runs with the peers installed)

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


def test_draw_samples_are_the_store_batches(synth):
    from tc_circuits.evaluation.synth_bench import TensorPairStore, draw_samples

    x = draw_samples(synth, 100, 32, seed=4)
    assert x.shape == (96, 24)
    live = SyntheticPairStore(synth, 32, seed=4)
    bank = TensorPairStore(x, 32)
    assert torch.equal(bank.buffer_outputs()[0], live.buffer_outputs()[0])
    for _ in range(3):
        assert torch.equal(next(bank)[0].x, next(live)[0].x)


def test_saelens_reference_and_ours_train_on_identical_batches(synth):
    from tc_circuits.evaluation.synth_bench import TensorPairStore, draw_samples
    from tc_circuits.evaluation.synth_reference import TensorBatches, train_saelens_reference
    from tc_circuits.training.l0_control import L0Controller

    bs, steps = 128, 12
    x = draw_samples(synth, bs * steps, bs, seed=0)

    class RecordingStore(TensorPairStore):
        seen: list = []

        def __next__(self):
            batch = super().__next__()
            self.seen.append(batch[0].x)
            return batch

    ours = RecordingStore(x, bs)
    ours.seen = []
    cfg = TrainConfig(layers=(0,), kind="sae", n_latents=64, k=4, lr=2e-3, warmup_steps=2, batch_size=bs,
                      total_tokens=bs * steps, buffer_tokens=bs, checkpoint_every=0, normalize_decoder=True,
                      dead_tokens_threshold=bs * 4)
    Trainer(host_model(24), None, cfg, progress=False, store=ours).run()
    for arch in ("topk", "jumprelu"):
        controller = L0Controller(4.0, 0.1) if arch == "jumprelu" else None
        batches = TensorBatches(x, bs, record=True)
        sae, used = train_saelens_reference(arch, x, n_latents=64, k=4, batch_size=bs, lr=2e-3, warmup_steps=2,
                                            decay_fraction=0.2, dead_tokens_threshold=bs * 4, controller=controller,
                                            progress=False, batches=batches)
        assert used is batches and len(batches.seen) == len(ours.seen) == steps
        assert all(torch.equal(a, b) for a, b in zip(batches.seen, ours.seen))
        assert sae.W_dec.shape == (64, 24)
        if controller is not None:  # the controller saw every step and set sae-lens's coefficient
            assert len(controller.history) == steps and controller.coefficient != 0.1


def test_saelens_l0_controller_reaches_the_target(synth):
    from tc_circuits.evaluation.synth_bench import draw_samples
    from tc_circuits.evaluation.synth_reference import train_saelens_reference
    from tc_circuits.training.l0_control import L0Controller

    bs, steps, target = 256, 200, 4.0
    x = draw_samples(synth, bs * steps + 4096, bs, seed=0)
    controller = L0Controller(target, 0.1)
    sae, _ = train_saelens_reference("relu", x[: bs * steps], n_latents=64, k=4, batch_size=bs, lr=3e-3,
                                     warmup_steps=5, decay_fraction=0.2, dead_tokens_threshold=bs * 50,
                                     controller=controller, progress=False)
    with torch.no_grad():
        l0 = float((sae.encode(x[bs * steps :]) > 0).float().sum(1).mean())
    assert l0 == pytest.approx(target, rel=0.25)
