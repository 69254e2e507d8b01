"""SynthSAEBench (Chanin et al. 2026, shipped in ``sae-lens`` as ``sae_lens.synthetic``) with our trainer.

The benchmark is a synthetic "model": ``N`` ground-truth unit feature vectors in ``D`` dims
(superposition), Zipfian firing probabilities, a hierarchy with mutually exclusive children,
low-rank correlated firing and random magnitudes; a sample is a sparse combination of the
features. Because the features are known, an SAE is scored by whether it *recovered* them.

Phases of :func:`run_synth_bench`:

1. **build** the synthetic model locally from :func:`bench_config` (``size="16k"`` is the
   published SynthSAEBench-16k configuration; ``"reduced"`` keeps its proportions at 4096
   features / 192 dims, firing probabilities of the 16k model's 4096 most frequent features,
so it trains on a CPU in minutes). Nothing is downloaded.
2. **train** one SAE per activation (TopK, ReLU, JumpReLU) with
   :class:`tc_circuits.training.trainer.Trainer` fed by :class:`SyntheticPairStore` (samples
   drawn from the benchmark's own generator under a private RNG state).
3. **score** each with ``sae_lens.synthetic.eval_sae_on_synthetic_data`` -- the benchmark's
   own metrics: MCC (Hungarian matching of decoder rows to true features), mean per-latent
   precision / recall / F1 of "latent fires" vs "its best-matching feature fires", explained
   variance, L0, dead latents -- next to :data:`PUBLISHED` (SynthSAEBench-16k at L0 = 25).

``sae-lens`` is an optional dependency (``pip install tc-circuits[bench]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tc_circuits.training.activation_store import PairBatch

#: Published SynthSAEBench-16k results at L0 = 25 (16,384 latents), from the SynthSAEBench paper.
PUBLISHED = {
    "BatchTopK": {"f1": 0.732, "mcc": 0.757, "explained_variance": 0.792},
    "Matryoshka": {"f1": 0.879, "mcc": 0.793, "explained_variance": 0.779},
}


def bench_config(size: str = "reduced", seed: int = 42):
    """The ``SyntheticModelConfig`` of SynthSAEBench-16k (``"16k"``) or its reduced copy."""
    from sae_lens.synthetic import (
        FoldedNormalMagnitudeConfig,
        HierarchyConfig,
        LinearMagnitudeConfig,
        OrthogonalizationConfig,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )
    from sae_lens.synthetic.synthetic_model import LowRankCorrelationConfig

    sizes = {"16k": (16_384, 768, 128, 25), "reduced": (4_096, 192, 32, 12), "tiny": (512, 48, 4, 4)}
    if size not in sizes:
        raise ValueError(f"size must be one of {sorted(sizes)}, got {size!r}")
    n, d, roots, rank = sizes[size]
    # Smaller sizes take the firing probabilities of the 16k model's n most frequent features
    # (sae-lens rescales 1/sqrt(rank) affinely onto [min_prob, max_prob], so the first n of
    # the 16k law are exactly the n-feature law with this min_prob).
    full = 16_384
    min_prob = 5e-4 + (0.4 - 5e-4) * (n**-0.5 - full**-0.5) / (1 - full**-0.5)
    return SyntheticModelConfig(
        num_features=n,
        hidden_dim=d,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=min_prob),
        hierarchy=HierarchyConfig(total_root_nodes=roots, branching_factor=4, max_depth=3, mutually_exclusive_portion=1.0),
        orthogonalization=OrthogonalizationConfig(num_steps=100, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=rank, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        seed=seed,
    )


class SyntheticPairStore:
    """An activation store over a synthetic model: ``{0: PairBatch(x, x)}`` per batch (an SAE).

    Sampling runs under a private torch RNG state (the global RNG is restored after each
    batch), so a run is reproducible from ``seed`` and leaves the caller's RNG alone.
    """

    def __init__(self, synthetic_model, batch_size: int, *, seed: int = 0, device: str | torch.device = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = synthetic_model, batch_size, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._state = torch.get_rng_state()
        self._first: Tensor | None = None
        self.batches = 0

    def _sample(self, n: int) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._state)
            x = self.model.sample(n)
            self._state = torch.get_rng_state()
        return x.to(self.device, torch.float32)

    def __iter__(self):
        return self

    def __next__(self) -> dict[int, PairBatch]:
        x = self._first if self._first is not None else self._sample(self.batch_size)
        self._first = None
        self.batches += 1
        return {0: PairBatch(x, x)}

    def buffer_outputs(self) -> dict[int, Tensor]:
        """The next batch (kept for the first step), to initialise ``b_dec`` with its mean."""
        if self._first is None:
            self._first = self._sample(self.batch_size)
        return {0: self._first}

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("resuming a synthetic benchmark run is not supported; rerun it")

    def close(self) -> None:
        """Nothing runs in the background here (the trainer closes its store when done)."""


def host_model(hidden_dim: int):
    """A one-layer ``HookedTransformer`` of width ``hidden_dim`` that only names the SAE's site
    (the trainer builds transcoder configs from a model; the data come from the store)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=hidden_dim, n_ctx=2, d_head=hidden_dim, n_heads=1,
                                  d_mlp=4, d_vocab=2, act_fn="relu", normalization_type=None,
                                  model_name="synth-sae-bench")
    return HookedTransformer(cfg, move_to_device=False)


@dataclass
class SynthBenchRow:
    activation: str
    n_latents: int
    train_samples: int
    metrics: dict[str, Any] = field(default_factory=dict)
    """``SyntheticDataEvalResult.to_dict()`` of sae-lens (mcc, explained_variance, sae_l0, classification...)."""
    seconds: float = 0.0

    def flat(self) -> dict[str, Any]:
        m = self.metrics
        c = m.get("classification", {})
        return {"activation": self.activation, "n_latents": self.n_latents, "train_samples": self.train_samples,
                "l0": m.get("sae_l0"), "true_l0": m.get("true_l0"), "mcc": m.get("mcc"), "f1": c.get("f1_score"),
                "precision": c.get("precision"), "recall": c.get("recall"),
                "explained_variance": m.get("explained_variance"), "dead": m.get("dead_latents"), "k": m.get("k"),
                "seconds": self.seconds}


def run_synth_bench(
    *,
    size: str = "reduced",
    activations: Sequence[str] = ("topk", "relu", "jumprelu"),
    k: int | None = None,
    train_samples: int = 2_000_000,
    batch_size: int = 4096,
    eval_samples: int = 50_000,
    l1_coefficient: float = 0.6,
    jumprelu_sparsity_coefficient: float = 0.05,
    lr: float | None = 3e-4,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> list[SynthBenchRow]:
    """Build the benchmark, train one SAE per activation with our trainer, score it (module docstring)."""
    import time

    from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data

    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import Trainer

    synth = SyntheticModel(bench_config(size), device=device)
    host = host_model(synth.cfg.hidden_dim)
    if k is None:
        k = auto_k(synth, size)
    rows = []
    for act in activations:
        t0 = time.perf_counter()
        cfg = TrainConfig(
            layers=(0,), kind="sae", n_latents=synth.cfg.num_features, activation=act, k=k,
            lr=lr, warmup_steps=20, batch_size=batch_size, total_tokens=train_samples,
            l1_coefficient=l1_coefficient, jumprelu_sparsity_coefficient=jumprelu_sparsity_coefficient,
            dead_tokens_threshold=max(batch_size, train_samples // 20), normalize_decoder=act != "relu",
            seed=seed, buffer_tokens=batch_size, checkpoint_every=0, device=device,
        )
        store = SyntheticPairStore(synth, batch_size, seed=seed, device=device)
        trainer = Trainer(host, None, cfg, progress=progress, store=store)
        sae = trainer.run().transcoders[0].eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            res = eval_sae_on_synthetic_data(sae, synth.feature_dict, synth.activation_generator,
                                             num_samples=eval_samples, batch_size=min(eval_samples, 10_000))
        metrics = res.to_dict() | {"k": k}
        rows.append(SynthBenchRow(act, synth.cfg.num_features, trainer.tokens_seen, metrics, time.perf_counter() - t0))
    return rows


#: SynthSAEBench-16k's true L0 (about 34 active features per sample) and the published SAE L0.
TRUE_L0_16K, PUBLISHED_L0 = 34.0, 25


def auto_k(synth, size: str, n: int = 10_000) -> int:
    """TopK k: the published 25 at 16k; elsewhere the same SAE-L0 / true-L0 ratio (25/34)."""
    if size == "16k":
        return PUBLISHED_L0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        _, feats = synth.sample_with_features(n)
    true_l0 = float((feats > 0).float().sum(1).mean())
    return max(1, round(true_l0 * PUBLISHED_L0 / TRUE_L0_16K))


def markdown_table(rows: list[SynthBenchRow], size: str) -> str:
    """Our rows next to the published SynthSAEBench-16k rows."""
    head = "| SAE | size | latents | train samples | true L0 | L0 | MCC | F1 | precision | recall | VE | dead |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        f = r.flat()
        lines.append(
            f"| tc-circuits {f['activation']} | {size} | {f['n_latents']} | {f['train_samples']:,} | {f['true_l0']:.1f} | {f['l0']:.1f} | "
            f"{f['mcc']:.3f} | {f['f1']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} | {f['explained_variance']:.3f} | {f['dead']} |"
        )
    for name, p in PUBLISHED.items():
        lines.append(f"| published {name} | 16k | 16384 | 200M | ~34 | 25 | {p['mcc']:.3f} | {p['f1']:.3f} | - | - | {p['explained_variance']:.3f} | - |")
    return "\n".join(lines) + "\n"


__all__ = ["PUBLISHED", "SynthBenchRow", "SyntheticPairStore", "bench_config", "host_model", "markdown_table", "run_synth_bench"]
