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
from jaxtyping import Float
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


class TensorPairStore(SyntheticPairStore):
    """:class:`SyntheticPairStore` over pre-drawn ``samples`` (consecutive ``batch_size`` slices).

    With ``samples = draw_samples(model, n, batch_size, seed=seed)`` it yields exactly the
    batches ``SyntheticPairStore(model, batch_size, seed=seed)`` would, so the sae-lens
    reference (:mod:`tc_circuits.evaluation.synth_reference`) can train on the same tensor.
    """

    def __init__(self, samples: Float[Tensor, "n d"], batch_size: int):
        if batch_size < 1 or samples.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} must be in [1, len(samples)={samples.shape[0]}]")
        self.samples, self.batch_size, self.device = samples, batch_size, samples.device
        self._first, self.batches, self._i = None, 0, 0

    def _sample(self, n: int) -> Tensor:
        lo = self._i * n
        if lo + n > self.samples.shape[0]:
            raise StopIteration(f"only {self.samples.shape[0]} samples ({self._i} batches of {n})")
        self._i += 1
        return self.samples[lo : lo + n]


def draw_samples(synthetic_model, n: int, batch_size: int, *, seed: int = 0,
                 progress: bool = True) -> Float[Tensor, "n d"]:
    """``n // batch_size`` batches of :class:`SyntheticPairStore` ``(model, batch_size, seed)``, stacked."""
    from tqdm.auto import tqdm

    store = SyntheticPairStore(synthetic_model, batch_size, seed=seed)
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"n={n} must be >= batch_size={batch_size}")
    out = torch.empty(steps * batch_size, synthetic_model.cfg.hidden_dim)
    for i in tqdm(range(steps), desc="draw samples", leave=False, disable=not progress):
        out[i * batch_size : (i + 1) * batch_size] = store._sample(batch_size)
    return out


@dataclass
class SynthBenchRow:
    trainer: str
    """``tc-circuits`` (ours) or ``sae-lens`` (the reference, same samples)."""
    activation: str
    n_latents: int
    train_samples: int
    metrics: dict[str, Any] = field(default_factory=dict)
    """``SyntheticDataEvalResult.to_dict()`` of sae-lens (mcc, explained_variance, sae_l0, classification...)."""
    cpu_seconds: float = 0.0
    """``time.process_time`` of training (not data drawing or evaluation)."""
    wall_seconds: float = 0.0
    coefficient: float | None = None
    """ReLU / JumpReLU: the sparsity coefficient the L0 controller ended at."""

    def flat(self) -> dict[str, Any]:
        m = self.metrics
        c = m.get("classification", {})
        return {"trainer": self.trainer, "activation": self.activation, "n_latents": self.n_latents,
                "train_samples": self.train_samples, "l0": m.get("sae_l0"), "true_l0": m.get("true_l0"),
                "mcc": m.get("mcc"), "f1": c.get("f1_score"), "precision": c.get("precision"),
                "recall": c.get("recall"), "explained_variance": m.get("explained_variance"),
                "dead": m.get("dead_latents"), "k": m.get("k"), "coefficient": self.coefficient,
                "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds}


#: Starting sparsity coefficients of the L0 controller (ours, sae-lens); it adapts them.
START_COEFFICIENT = {("tc-circuits", "relu"): 1.0, ("tc-circuits", "jumprelu"): 0.05,
                     ("sae-lens", "relu"): 1.0, ("sae-lens", "jumprelu"): 0.05}


def run_synth_bench(
    *,
    size: str = "reduced",
    activations: Sequence[str] = ("topk", "relu", "jumprelu"),
    reference: Sequence[str] = ("topk",),
    k: int | None = None,
    train_samples: int = 500_000,
    batch_size: int = 1024,
    eval_samples: int = 50_000,
    lr: float = 2e-3,
    jumprelu_lr: float | None = None,
    warmup_steps: int = 20,
    decay_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
) -> tuple[list[SynthBenchRow], dict[str, float]]:
    """Build the benchmark, train ours (``activations``) and sae-lens's (``reference``) SAEs on
    the same samples, score each with sae-lens's metrics (module docstring).

    ReLU / JumpReLU coefficients follow an :class:`~tc_circuits.training.l0_control.L0Controller`
    to the TopK ``k`` (the target L0). Returns the rows and the setup timings (build, draw).
    """
    import time

    from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data

    from tc_circuits.evaluation.synth_reference import train_saelens_reference
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.l0_control import L0Controller, L0TargetTrainer
    from tc_circuits.training.trainer import Trainer

    t0 = time.perf_counter()
    synth = SyntheticModel(bench_config(size), device=device)
    host = host_model(synth.cfg.hidden_dim)
    k = auto_k(synth, size) if k is None else k
    t1 = time.perf_counter()
    samples = draw_samples(synth, train_samples, batch_size, seed=seed, progress=progress).to(device)
    setup = {"build_seconds": t1 - t0, "draw_seconds": time.perf_counter() - t1}
    log(f"built in {setup['build_seconds']:.0f} s, drew {samples.shape[0]:,} samples in {setup['draw_seconds']:.0f} s; k = {k}")
    dead = max(batch_size, samples.shape[0] // 20)
    jobs = [(who, act) for act in dict.fromkeys([*activations, *reference])
            for who, acts in (("tc-circuits", activations), ("sae-lens", reference)) if act in acts]
    rows = []
    for who, act in jobs:
        controller = (L0Controller(float(k), START_COEFFICIENT[(who, act)]) if act in ("relu", "jumprelu") else None)
        run_lr = jumprelu_lr if act == "jumprelu" and jumprelu_lr is not None else lr
        w0, c0 = time.perf_counter(), time.process_time()
        if who == "tc-circuits":
            cfg = TrainConfig(
                layers=(0,), kind="sae", n_latents=synth.cfg.num_features, activation=act, k=k,
                lr=run_lr, warmup_steps=warmup_steps, decay_fraction=decay_fraction, batch_size=batch_size,
                total_tokens=samples.shape[0], dead_tokens_threshold=dead, normalize_decoder=True,
                seed=seed, buffer_tokens=batch_size, checkpoint_every=0, device=device,
            )
            store = TensorPairStore(samples, batch_size)
            trainer = (L0TargetTrainer(host, None, cfg, progress=progress, store=store, controller=controller)
                       if controller is not None else Trainer(host, None, cfg, progress=progress, store=store))
            sae = trainer.run().transcoders[0].eval()
        else:
            sae, _ = train_saelens_reference(act, samples, n_latents=synth.cfg.num_features, k=k,
                                             batch_size=batch_size, lr=run_lr, warmup_steps=warmup_steps,
                                             decay_fraction=decay_fraction, dead_tokens_threshold=dead,
                                             controller=controller, progress=progress)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + 1)
            res = eval_sae_on_synthetic_data(sae, synth.feature_dict, synth.activation_generator,
                                             num_samples=eval_samples, batch_size=min(eval_samples, 10_000))
        row = SynthBenchRow(who, act, synth.cfg.num_features, samples.shape[0], res.to_dict() | {"k": k}, cpu, wall,
                            controller.coefficient if controller is not None else None)
        f = row.flat()
        log(f"{who} {act}: L0 {f['l0']:.1f} MCC {f['mcc']:.3f} F1 {f['f1']:.3f} VE {f['explained_variance']:.3f} "
            f"train {cpu:.0f} cpu-s / {wall:.0f} s")
        rows.append(row)
    return rows, setup


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
    """Our rows and the sae-lens reference rows (same samples), then the published 16k rows."""
    head = ("| trainer | SAE | size | latents | train samples | true L0 | L0 | MCC | F1 | precision | recall | VE "
            "| dead | final coef. | train CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        f = r.flat()
        coef = f"{f['coefficient']:.3g}" if f["coefficient"] is not None else "-"
        lines.append(
            f"| {f['trainer']} | {f['activation']} | {size} | {f['n_latents']} | {f['train_samples']:,} | {f['true_l0']:.1f} "
            f"| {f['l0']:.1f} | {f['mcc']:.3f} | {f['f1']:.3f} | {f['precision']:.3f} | {f['recall']:.3f} "
            f"| {f['explained_variance']:.3f} | {f['dead']} | {coef} | {f['cpu_seconds']:.0f} |"
        )
    for name, p in PUBLISHED.items():
        lines.append(f"| published | {name} | 16k | 16384 | 200M | ~34 | 25 | {p['mcc']:.3f} | {p['f1']:.3f} | - | - "
                     f"| {p['explained_variance']:.3f} | - | - | - |")
    return "\n".join(lines) + "\n"


def ratio_table(rows: list[SynthBenchRow]) -> str:
    """Ours / sae-lens for every activation trained by both (same samples, same L0 target)."""
    by = {(r.trainer, r.activation): r.flat() for r in rows}
    lines = ["| SAE | MCC ours/sae-lens | F1 ours/sae-lens | VE ours/sae-lens | L0 ours, sae-lens | train CPU-s sae-lens/ours |",
             "|---|---|---|---|---|---|"]
    for (who, act), o in by.items():
        ref = by.get(("sae-lens", act))
        if who != "tc-circuits" or ref is None:
            continue
        lines.append(f"| {act} | {o['mcc'] / ref['mcc']:.3f} | {o['f1'] / ref['f1']:.3f} "
                     f"| {o['explained_variance'] / ref['explained_variance']:.3f} | {o['l0']:.1f}, {ref['l0']:.1f} "
                     f"| {ref['cpu_seconds'] / o['cpu_seconds']:.2f}x |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


__all__ = ["PUBLISHED", "START_COEFFICIENT", "SynthBenchRow", "SyntheticPairStore", "TensorPairStore", "auto_k", "bench_config",
           "draw_samples", "host_model", "markdown_table", "ratio_table", "run_synth_bench"]
