"""Reproduce the skip-transcoder paper's comparison: SAE vs transcoder vs skip transcoder.

Phases of :func:`run_compare`:

1. **train** -- for every kind in ``cfg.kinds`` and every ``k`` in ``{cfg.k} | cfg.k_sweep``,
   :func:`tc_circuits.training.trainer.train_transcoders` trains one dictionary per layer with the same
   ``n_latents``, ``k``, seed and token stream (an SAE reads and writes ``hook_mlp_out``;
   (skip) transcoders read ``ln2.hook_normalized``).
2. **evaluate** on held-out tokens (another seed of the same corpus): reconstruction
   (:func:`~tc_circuits.evaluation.evaluate.evaluate_reconstruction`: FVU, L0, dead fraction), splicing
   (:func:`~tc_circuits.evaluation.evaluate.evaluate_splice`: ΔCE, KL, CE recovered; each layer alone
   and all at once) and the greater-than probability difference with the dictionaries spliced
   in (:func:`~tc_circuits.tasks.evaluate_task`).
3. **report** -- ``compare.md`` (main table at ``cfg.k`` and the k sweep), ``compare.json``
   and a standalone ``compare.html`` with plotly figures (:mod:`tc_circuits.viz.compare_report`).

The default model is the bundled organism (:func:`tc_circuits.organism.load_organism`); any
``HookedTransformer`` works through the API with a token factory and held-out tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tc_circuits.evaluation.evaluate import evaluate_reconstruction, evaluate_splice, token_batches
from tc_circuits.fileio import atomic_write
from tc_circuits.tasks import Task, evaluate_task
from tc_circuits.tasks.greater_than import DEFAULT_NOUNS, GreaterThanConfig, GreaterThanTask

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

KINDS = ("sae", "transcoder", "skip_transcoder", "clt")
#: Compared by default (``clt``, a cross-layer transcoder with a skip at every layer, on request).
DEFAULT_KINDS = ("sae", "transcoder", "skip_transcoder")


@dataclass(frozen=True)
class CompareConfig:
    """Configuration of :func:`run_compare` and ``tc-circuits compare`` (never mutated)."""

    model: str = "organism"
    """Model to study: the bundled ``organism``, a TransformerLens name or a local Hugging Face folder (the CLI then trains on --dataset)."""
    layers: tuple[int, ...] = ()
    """Layers to train and splice (empty = every layer)."""
    kinds: tuple[str, ...] = DEFAULT_KINDS
    """Dictionary kinds to compare: ``sae`` (on hook_mlp_out), ``transcoder``, ``skip_transcoder``, ``clt``
    (a cross-layer transcoder over every layer with a skip per layer; n_latents and k per layer)."""
    n_latents: int = 1024
    """Latents per dictionary (the same for every kind)."""
    k: int = 16
    """Active latents per token (TopK) for the main table."""
    k_sweep: tuple[int, ...] = (8, 16, 32)
    """Values of k for the reconstruction-vs-sparsity sweep (empty = no sweep)."""
    total_tokens: int = 2_000_000
    """Training tokens per dictionary."""
    batch_size: int = 4096
    """Training tokens per optimiser step."""
    buffer_tokens: int = 32_768
    """Tokens per shuffled activation buffer fill (capped at total_tokens)."""
    lr: float | None = None
    """Adam learning rate (None = the trainer's default for n_latents)."""
    warmup_steps: int = 50
    """Linear learning-rate warmup, in optimiser steps."""
    seq_len: int = 64
    """Tokens per sequence, training and evaluation."""
    rows_per_batch: int = 32
    """Sequences per token batch, training and evaluation."""
    seed: int = 0
    """Seed of the training token stream and initialisation."""
    eval_seed: int = 10_000
    """Seed of the held-out evaluation token stream (must differ from seed)."""
    eval_tokens: int = 32_768
    """Held-out tokens for the evaluation (rounded down to whole batches, at least one)."""
    greater_than_nouns: tuple[str, ...] = DEFAULT_NOUNS
    """Nouns of the greater-than prompts ("The war lasted from the year 1732 to the year 17")."""
    out_dir: str = "compare_out"
    """Folder for compare.md, compare.json, compare.html and the trained dictionaries."""
    ground_truth: bool = True
    """Organism only: score each dictionary against the corpus's per-token labels
    (interpretability, k-sparse probing, absorption; :mod:`tc_circuits.evaluation.ground_truth`)."""
    ground_truth_batches: int = 4
    """Held-out labelled batches (rows_per_batch x seq_len tokens each) for the ground-truth scores."""
    faithfulness_prompts: int = 4
    """Greater-than prompts whose graphs are ablated for the faithfulness AUC (0 = skip; needs
    a ``graph_metrics`` callable, which the CLI passes)."""
    device: str | None = None
    """Device (None = the model's)."""
    progress: bool = True
    """Show training progress bars."""

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        for name in ("n_latents", "k", "total_tokens", "batch_size", "buffer_tokens", "seq_len", "rows_per_batch", "eval_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        for k in (self.k, *self.k_sweep):
            if not 1 <= k <= self.n_latents:
                raise ValueError(f"k={k} must be in [1, n_latents={self.n_latents}]")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len} must be at least 2")
        if self.seed == self.eval_seed:
            raise ValueError(f"eval_seed={self.eval_seed} equals seed: evaluation must be on held-out tokens")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"layers must be non-negative, got {self.layers!r}")

    @property
    def ks(self) -> list[int]:
        """Every k that is trained (the main k plus the sweep), sorted."""
        return sorted({self.k, *self.k_sweep})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompareRow:
    """One dictionary kind at one k, at one layer (or ``"all"``: spliced all at once, and the
    reconstruction metrics averaged over layers)."""

    kind: str
    k: int
    layer: str
    fvu: float
    l0: float
    dead_fraction: float
    delta_ce: float
    kl: float
    recovered_zero: float
    recovered_mean: float
    gt_prob_diff: float | None
    """Greater-than probability difference with this dictionary spliced in."""

    COLUMNS = ("kind", "k", "layer", "fvu", "l0", "dead_fraction", "delta_ce", "kl", "recovered_zero", "recovered_mean", "gt_prob_diff")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def markdown_header(cls) -> str:
        return "| " + " | ".join(cls.COLUMNS) + " |\n|" + "---|" * len(cls.COLUMNS)

    def markdown_row(self) -> str:
        vals = [getattr(self, c) for c in self.COLUMNS]
        return "| " + " | ".join("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals) + " |"


@dataclass
class CompareResult:
    """Everything :func:`run_compare` measured."""

    config: CompareConfig
    rows: list[CompareRow]
    """All rows: every kind, every k, every layer and "all"."""
    ce_orig: float
    """Next-token CE of the original model on the held-out tokens."""
    gt_original: float | None
    """Greater-than probability difference of the original model."""
    density: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``"{kind}_k{k}_L{layer}"`` -> density histogram data."""
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``"{kind}_k{k}"`` -> ``{"ground_truth": [per-layer rows], "faithfulness": {...}}``."""
    files: dict[str, str] = field(default_factory=dict)
    """Written files: ``markdown``, ``json``, ``html``."""

    def main_rows(self) -> list[CompareRow]:
        """Rows at the main k."""
        return [r for r in self.rows if r.k == self.config.k]

    def sweep_rows(self) -> list[CompareRow]:
        """The ``"all"`` rows of every k (the reconstruction-vs-sparsity trade-off)."""
        return [r for r in self.rows if r.layer == "all"]

    def to_markdown(self) -> str:
        return markdown_report(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "ce_orig": self.ce_orig,
            "gt_original": self.gt_original,
            "rows": [r.to_dict() for r in self.rows],
            "density": self.density,
            "extra": self.extra,
            "picture": [p.to_dict() for p in picture_rows(self)],
        }


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def evaluate_dictionaries(
    model: HookedTransformer,
    transcoders: dict[int, Any],
    eval_batches: list[Tensor],
    task: Task | None,
    *,
    kind: str,
    k: int,
    start_pos: int = 1,
) -> tuple[list[CompareRow], dict[str, dict[str, Any]], float]:
    """Rows (each layer and "all") for one trained set; also density data and CE_orig."""
    recon = evaluate_reconstruction(model, transcoders, eval_batches, start_pos=start_pos)
    spl = evaluate_splice(model, transcoders, eval_batches)
    layers = sorted(transcoders)
    rows: list[CompareRow] = []
    for config in [(layer,) for layer in layers] + [tuple(layers)]:
        if len(config) == 1 and len(layers) == 1 and rows:
            break  # one layer: its row is also the "all" row
        s = spl.get(config)
        gt = None
        if task is not None:
            gt = evaluate_task(model, task, transcoders, layers=list(config)).spliced
        r = [recon[layer] for layer in config]
        rows.append(
            CompareRow(
                kind=kind,
                k=k,
                layer=str(config[0]) if len(config) == 1 and len(layers) > 1 else "all",
                fvu=_mean([m.fvu for m in r]),
                l0=_mean([m.l0 for m in r]),
                dead_fraction=_mean([m.dead_fraction for m in r]),
                delta_ce=s.delta_ce,
                kl=s.kl,
                recovered_zero=s.recovered_zero,
                recovered_mean=s.recovered_mean,
                gt_prob_diff=gt,
            )
        )
    density = {f"{kind}_k{k}_L{layer}": recon[layer].density.to_dict() for layer in layers}
    return rows, density, spl.rows[0].ce_orig


def _organism_setup(cfg: CompareConfig) -> tuple[Any, Callable[[int], Iterator[Tensor]], Task | None]:
    if cfg.model != "organism":
        raise ValueError(
            f"model={cfg.model!r}: the CLI compares on the bundled 'organism'; for another model "
            "call run_compare(cfg, model=..., token_factory=..., eval_tokens=...)"
        )
    from tc_circuits.organism import load_organism, organism_token_source

    model = load_organism(device=cfg.device or "cpu")

    def stream(seed: int) -> Iterator[Tensor]:
        return organism_token_source(seed, cfg.rows_per_batch, cfg.seq_len)

    task = GreaterThanTask.from_tokenizer(model.tokenizer, GreaterThanConfig(nouns=cfg.greater_than_nouns))
    return model, stream, task


def run_compare(
    cfg: CompareConfig = CompareConfig(),
    *,
    model: HookedTransformer | None = None,
    token_factory: Callable[[], Iterator[Tensor]] | None = None,
    eval_tokens: Tensor | list[Tensor] | None = None,
    task: Task | None = None,
    write: bool = True,
    graph_metrics: Callable[..., dict[str, Any]] | None = None,
) -> CompareResult:
    """Train, evaluate and report (see the module docstring).

    Without ``model`` the bundled organism, its corpus (training seed ``cfg.seed``, held-out
    seed ``cfg.eval_seed``) and the greater-than task are used. With ``model``, pass
    ``token_factory`` (zero-argument callable returning a fresh token iterator) and
    ``eval_tokens``; ``task`` is optional (no greater-than column without it).
    ``graph_metrics(model, transcoders, task, n_prompts=...)`` adds graph-level numbers (the
    CLI passes :func:`tc_circuits.circuits.faithfulness.compare_faithfulness`; evaluation
    does not import attribution).
    """
    from tc_circuits.evaluation.splice import as_transcoder_dict
    from tc_circuits.training.clt_trainer import train_clt
    from tc_circuits.training.trainer import TrainConfig, train_transcoders

    labelled = None
    if model is None:
        model, stream, default_task = _organism_setup(cfg)
        if cfg.ground_truth:
            from tc_circuits.evaluation.ground_truth import organism_labelled

            labelled = organism_labelled(cfg.ground_truth_batches, cfg.rows_per_batch, cfg.seq_len,
                                         seed=cfg.eval_seed + 1)
        task = task if task is not None else default_task
        token_factory = lambda: stream(cfg.seed)  # noqa: E731
        n_batches = max(1, cfg.eval_tokens // (cfg.rows_per_batch * cfg.seq_len))
        eval_tokens = list(itertools.islice(stream(cfg.eval_seed), n_batches))
    elif token_factory is None or eval_tokens is None:
        raise ValueError("with a model, pass token_factory and eval_tokens as well")
    eval_batches = token_batches(eval_tokens, model, min_len=2)
    layers = cfg.layers or tuple(range(model.cfg.n_layers))
    out = Path(cfg.out_dir)
    rows: list[CompareRow] = []
    density: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    ce_orig = float("nan")
    for kind in cfg.kinds:
        for k in cfg.ks:
            train_cfg = TrainConfig(
                layers=layers,
                kind="skip_transcoder" if kind == "clt" else kind,
                n_latents=cfg.n_latents,
                k=k,
                lr=cfg.lr,
                warmup_steps=cfg.warmup_steps,
                batch_size=cfg.batch_size,
                total_tokens=cfg.total_tokens,
                buffer_tokens=max(cfg.batch_size, min(cfg.buffer_tokens, cfg.total_tokens)),
                seed=cfg.seed,
                out_dir=str(out / "runs" / f"{kind}_k{k}") if write else None,
                device=cfg.device,
                checkpoint_every=0,
            )
            if kind == "clt":  # one CLT over every layer (cfg.layers must then be all of them)
                if tuple(layers) != tuple(range(model.cfg.n_layers)):
                    raise ValueError(f"kind 'clt' spans every layer; layers={cfg.layers} must be empty")
                dicts = as_transcoder_dict(train_clt(model, token_factory, train_cfg.replace(layers=()), progress=cfg.progress).clt)
            else:
                dicts = train_transcoders(model, token_factory, train_cfg, progress=cfg.progress).transcoders
            with torch.no_grad():
                new_rows, dens, ce_orig = evaluate_dictionaries(model, dicts, eval_batches, task, kind=kind, k=k)
            rows += new_rows
            density.update(dens)
            extra[f"{kind}_k{k}"] = _extra_metrics(cfg, model, dicts, kind, task, labelled, graph_metrics)
    gt_original = evaluate_task(model, task).original if task is not None else None
    res = CompareResult(cfg, rows, ce_orig, gt_original, density, extra)
    if write:
        write_tables(res, out)
    return res


def _extra_metrics(cfg, model, transcoders, kind, task, labelled, graph_metrics) -> dict[str, Any]:
    if kind == "clt":
        # The per-layer CLT views are new; record why a measurement is missing instead of
        # failing the whole comparison (other kinds are not guarded).
        try:
            return _extra_metrics_of(cfg, model, transcoders, kind, task, labelled, graph_metrics)
        except (AttributeError, TypeError, ValueError, NotImplementedError) as err:
            return {"skipped": f"{type(err).__name__}: {err}"}
    return _extra_metrics_of(cfg, model, transcoders, kind, task, labelled, graph_metrics)


def _extra_metrics_of(cfg, model, transcoders, kind, task, labelled, graph_metrics) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if labelled is not None:
        from tc_circuits.evaluation.ground_truth import ground_truth_rows

        with torch.no_grad():
            out["ground_truth"] = [r.to_dict() for r in ground_truth_rows(model, transcoders, kind, *labelled)]
    if graph_metrics is not None and task is not None and cfg.faithfulness_prompts > 0:
        out["faithfulness"] = graph_metrics(model, transcoders, task, n_prompts=cfg.faithfulness_prompts)
    return out


@dataclass(frozen=True)
class PictureRow:
    """The seed paper's picture for one kind at one k (all layers): reconstruction against
    interpretability, probing and faithfulness (None where not measured)."""

    kind: str
    k: int
    delta_ce: float
    fvu: float
    l0: float
    interp_f1: float | None = None
    matched_share: float | None = None
    probe_k1: float | None = None
    probe_k5: float | None = None
    probe_raw: float | None = None
    absorption: float | None = None
    faith_auc_frozen: float | None = None
    faith_auc_live: float | None = None
    faith_auc_random: float | None = None
    """Random-order AUC (frozen)."""

    COLUMNS = ("kind", "k", "delta_ce", "fvu", "l0", "interp_f1", "matched_share", "probe_k1", "probe_k5",
               "probe_raw", "absorption", "faith_auc_frozen", "faith_auc_live", "faith_auc_random")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def markdown_row(self) -> str:
        vals = [getattr(self, c) for c in self.COLUMNS]
        return "| " + " | ".join("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals) + " |"


def picture_rows(res: CompareResult) -> list[PictureRow]:
    """One :class:`PictureRow` per kind and k (ground-truth scores averaged over layers)."""
    out = []
    for r in sorted(res.sweep_rows(), key=lambda r: (r.kind, r.k)):
        ex = res.extra.get(f"{r.kind}_k{r.k}", {})
        gt = ex.get("ground_truth") or []
        fa = (ex.get("faithfulness") or {}).get("curves", {})

        def mean(key, sub=None):
            vals = [g[key] if sub is None else g[key].get(sub) for g in gt]
            vals = [v for v in vals if v is not None]
            return float(sum(vals) / len(vals)) if vals else None

        out.append(PictureRow(
            kind=r.kind, k=r.k, delta_ce=r.delta_ce, fvu=r.fvu, l0=r.l0,
            interp_f1=mean("interp_f1"), matched_share=mean("matched_share"),
            probe_k1=mean("probe", "1"), probe_k5=mean("probe", "5"), probe_raw=mean("probe_raw"),
            absorption=mean("absorption"),
            faith_auc_frozen=fa.get("frozen", {}).get("auc"), faith_auc_live=fa.get("live", {}).get("auc"),
            faith_auc_random=fa.get("frozen", {}).get("auc_random"),
        ))
    return out


def write_tables(res: CompareResult, out: Path) -> dict[str, str]:
    """Write ``compare.md`` and ``compare.json`` into ``out`` (the HTML page:
    :func:`tc_circuits.viz.compare_report.write_outputs`)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "compare.md", "json": out / "compare.json"}
    md, payload = markdown_report(res), json.dumps(res.to_dict(), indent=2)
    atomic_write(files["markdown"], lambda p: Path(p).write_text(md))
    atomic_write(files["json"], lambda p: Path(p).write_text(payload))
    res.files = {**res.files, **{name: str(path) for name, path in files.items()}}
    return res.files


def markdown_report(res: CompareResult) -> str:
    """The main table at ``cfg.k`` and the k-sweep table, as markdown."""
    cfg = res.config
    lines = [
        "# SAE vs transcoder vs skip transcoder",
        "",
        f"Model `{cfg.model}`, n_latents={cfg.n_latents}, {cfg.total_tokens} training tokens per "
        f"dictionary, held-out CE of the original model {res.ce_orig:.4f} nats"
        + (f", greater-than probability difference of the original model {res.gt_original:.4f}." if res.gt_original is not None else "."),
        "",
        f"## Main comparison (k={cfg.k})",
        "",
        "fvu / l0 / dead_fraction: reconstruction on the original model's activations (BOS "
        "position excluded); delta_ce / kl / recovered_*: that layer (or all layers at once) "
        "spliced without error term; gt_prob_diff: greater-than probability difference spliced.",
        "",
        CompareRow.markdown_header(),
        *(r.markdown_row() for r in res.main_rows()),
    ]
    if len(cfg.ks) > 1:
        lines += [
            "",
            "## k sweep (all layers)",
            "",
            CompareRow.markdown_header(),
            *(r.markdown_row() for r in sorted(res.sweep_rows(), key=lambda r: (r.kind, r.k))),
        ]
    if res.extra and any(res.extra.values()):
        lines += [
            "",
            "## Reconstruction vs interpretability, probing, faithfulness (all layers)",
            "",
            "interp_f1: mean best F1 of alive latents against the corpus's labelled variables (token "
            "identity excluded); matched_share: share with F1 >= 0.5; probe_k*: k-sparse probe test "
            "accuracy (balanced, chance 0.5) vs probe_raw on the raw input; absorption: mean absorption "
            "rate; faith_auc_*: area under the explained-drop curve when ablating the graph's top "
            "nodes (random: random order). See docs/evaluation.md.",
            "",
            "| " + " | ".join(PictureRow.COLUMNS) + " |",
            "|" + "---|" * len(PictureRow.COLUMNS),
            *(p.markdown_row() for p in picture_rows(res)),
        ]
    return "\n".join(lines) + "\n"



__all__ = ["CompareConfig", "CompareResult", "CompareRow", "PictureRow", "evaluate_dictionaries", "markdown_report", "picture_rows", "run_compare", "write_tables"]
