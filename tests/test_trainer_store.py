"""Trainer(store=...): training on pairs that do not come from the model."""

import torch

from tc_circuits.evaluation.synth_bench import host_model
from tc_circuits.training.activation_store import PairBatch
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import Trainer


class PlantedStore:
    """x = sparse codes (3 of 32 active) times a fixed dictionary; the model is never run."""

    def __init__(self, d=16, n=32, batch=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.D = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
        self.g, self.n, self.batch, self.calls = g, n, batch, 0

    def _x(self):
        idx = torch.rand(self.batch, self.n, generator=self.g).argsort(1)[:, :3]
        codes = torch.zeros(self.batch, self.n).scatter_(1, idx, 1 + torch.rand(self.batch, 3, generator=self.g))
        return codes @ self.D

    def __next__(self):
        self.calls += 1
        x = self._x()
        return {0: PairBatch(x, x)}

    def buffer_outputs(self):
        return {0: self._x()}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        raise NotImplementedError

    def close(self):
        self.closed = True


def test_trainer_trains_on_an_external_store():
    host = host_model(16)
    calls = []
    host.blocks[0].hook_mlp_out.add_hook(lambda x, hook: calls.append(1))
    store = PlantedStore()
    cfg = TrainConfig(layers=(0,), kind="sae", n_latents=64, k=3, lr=3e-3, warmup_steps=5, batch_size=256,
                      total_tokens=256 * 200, buffer_tokens=256, checkpoint_every=0, normalize_decoder=True)
    res = Trainer(host, None, cfg, progress=False, store=store).run()
    assert store.calls == 200 and res.steps == 200 and not calls and store.closed
    x = store._x()
    with torch.no_grad():
        out = res.transcoders[0](x).output
    fvu = float((out - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.35  # the step-0 model outputs the mean (FVU 1)
