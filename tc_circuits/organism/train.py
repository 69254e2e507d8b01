"""Reproducible training of the organism: the model, then its transcoders.

Phases (``tc-circuits organism train``):

1. build the tokenizer from the corpus definition;
2. train the 3-layer model on the generated corpus (AdamW, warmup + cosine decay), reporting
   the greater-than probability difference as it goes;
3. process its weights as ``from_pretrained`` would and train, for every layer, a skip
   transcoder, a plain transcoder and an SAE on the MLP output (same width and k);
4. write everything (safetensors + JSON) into the output folder, which by default is the
   package's own ``weights/`` folder.

Everything is seeded with explicit ``torch.Generator`` / ``random.Random`` objects, so two runs
with the same config give the same weights on the same machine and library versions.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from tc_circuits.fileio import atomic_write
from tc_circuits.models.backend import hooked_transformer_class
from tc_circuits.organism.model import (
    CONFIG_FILE,
    MODEL_FILE,
    TRANSCODER_KINDS,
    WEIGHTS_DIR,
    load_organism,
    organism_config,
    organism_token_source,
)
from tc_circuits.organism.tokenizer import build_tokenizer, save_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class OrganismTrainConfig:
    """How the organism and its transcoders are trained."""

    out_dir: str = str(WEIGHTS_DIR)
    """Output folder (default: the package's shipped weights folder)."""
    runs_dir: str = "runs/organism"
    """Folder for the transcoder trainer's checkpoints (resumable; not shipped)."""
    seed: int = 0
    """Seed of the model initialisation and of the corpus stream."""
    steps: int = 2000
    """Optimiser steps for the model."""
    batch_size: int = 64
    """Sequences per step."""
    seq_len: int = 96
    """Tokens per sequence (BOS included)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    eval_every: int = 250
    """Evaluate the greater-than metric every this many steps."""
    transcoder_latents: int = 1024
    """Latents of each shipped transcoder / SAE."""
    transcoder_k: int = 16
    """TopK k of each shipped transcoder / SAE."""
    transcoder_tokens: int = 1_000_000
    """Training tokens for each kind of transcoder (all layers at once)."""
    train_model: bool = True
    """Train the model (False: reuse the model already in out_dir)."""
    train_transcoders: bool = True
    """Train the transcoders."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "transcoder_latents", "transcoder_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.transcoder_k > self.transcoder_latents:
            raise ValueError(
                f"transcoder_k={self.transcoder_k} exceeds transcoder_latents={self.transcoder_latents}"
            )


def _lr_factor(step: int, cfg: OrganismTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def greater_than_score(model: HookedTransformer) -> float:
    """Greater-than probability difference of ``model`` on the default task prompts.

    Mean over start years YY = 02..98 (and the default nouns, century 17) of the mass on
    two-digit tokens above YY minus the mass at or below YY, softmax restricted to the 100
    two-digit tokens (:class:`tc_circuits.tasks.greater_than.GreaterThanTask`).
    """
    from tc_circuits.tasks.greater_than import GreaterThanTask

    task = GreaterThanTask.from_tokenizer(model.tokenizer)
    with torch.no_grad():
        return task.metric(model(task.tokens))


@contextmanager
def _preserve_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states on exit.

    TransformerLens seeds every global RNG when a config carries a seed; the caller's
    random state must not change because they trained an organism.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def train_model(cfg: OrganismTrainConfig, tokenizer, progress: bool = True) -> HookedTransformer:
    """Phase 2: train the organism model from scratch (global RNG states are left as they were)."""
    with _preserve_global_rng():
        model = hooked_transformer_class()(organism_config(len(tokenizer), seed=cfg.seed), tokenizer=tokenizer)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "W_pos" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    source = organism_token_source(cfg.seed, cfg.batch_size, cfg.seq_len, tokenizer=tokenizer)
    bar = tqdm(range(cfg.steps), desc="organism", disable=not progress)
    gt = float("nan")
    for step in bar:
        model.train()
        loss = model(next(source), return_type="loss")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            with torch.no_grad():
                gt = greater_than_score(model)
        bar.set_postfix(loss=f"{loss.item():.3f}", gt=f"{gt:.3f}")
    model.eval()
    return model


def save_model(model: HookedTransformer, tokenizer, out_dir: Path, meta: dict) -> None:
    """Write the raw weights, config and tokenizer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out_dir / MODEL_FILE, lambda p: save_file(state, p))
    save_tokenizer(tokenizer, out_dir)
    text = json.dumps({"d_vocab": len(tokenizer), **meta}, indent=2, sort_keys=True)
    atomic_write(out_dir / CONFIG_FILE, lambda p: Path(p).write_text(text))


def train_organism_transcoders(cfg: OrganismTrainConfig, progress: bool = True) -> dict:
    """Phase 3: train every kind of transcoder on the processed organism; return metrics."""
    from tc_circuits.training.trainer import TrainConfig, train_transcoders

    out_dir = Path(cfg.out_dir)
    model = load_organism(weights_dir=out_dir)
    layers = tuple(range(model.cfg.n_layers))
    metrics = {}
    for i, kind in enumerate(TRANSCODER_KINDS):
        tcfg = TrainConfig(
            layers=layers,
            kind=kind,
            n_latents=cfg.transcoder_latents,
            k=cfg.transcoder_k,
            total_tokens=cfg.transcoder_tokens,
            seed=cfg.seed + i,
            out_dir=str(Path(cfg.runs_dir) / kind),
        )

        def source(seed: int = cfg.seed + 1000 + i) -> object:
            return organism_token_source(seed, 32, 64, tokenizer=model.tokenizer)

        result = train_transcoders(model, source, tcfg, progress=progress)
        result.transcoders.save(out_dir / "transcoders" / kind)
        metrics[kind] = {str(layer): asdict(m) for layer, m in result.metrics.items()}
    return metrics


def train_organism(cfg: OrganismTrainConfig, progress: bool = True) -> dict:
    """Run all phases; return a report (also written as ``training_report.json``)."""
    out_dir = Path(cfg.out_dir)
    report: dict = {"config": asdict(cfg)}
    tokenizer = build_tokenizer()
    if cfg.train_model:
        t0 = time.perf_counter()
        model = train_model(cfg, tokenizer, progress=progress)
        report["model_train_seconds"] = time.perf_counter() - t0
        save_model(model, tokenizer, out_dir, {"seed": cfg.seed, "steps": cfg.steps})
    processed = load_organism(weights_dir=out_dir)
    report["greater_than_prob_diff"] = greater_than_score(processed)
    if cfg.train_transcoders:
        t0 = time.perf_counter()
        report["transcoders"] = train_organism_transcoders(cfg, progress=progress)
        report["transcoder_train_seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, sort_keys=True, default=float)
    atomic_write(out_dir / "training_report.json", lambda p: Path(p).write_text(text))
    return report
