"""The block plan: what the linearisation must know about a model's blocks, read off its config.

The attribution engine, the interventions and the virtual weights never ask for an
architecture's name; they ask :func:`block_plan` for

* the norms to freeze (``ln1``, ``ln2``, an attention post-norm ``ln1_post``, ``ln_final``),
  each as LayerNorm (centred) or RMSNorm, with or without its affine ``w`` / ``b``;
* whether attention and MLP run in parallel (GPT-NeoX / Pythia, GPT-J: the MLP reads
  ``ln2(resid_pre)``, not ``ln2(resid_mid)``);
* whether there are position-embedding source nodes (learned absolute positions only; rotary,
  ALiBi and shortformer positions act inside the attention pattern, which is frozen);
* the final-logit soft-cap (Gemma-2: ``logits = c * tanh(z / c)``): attribution targets are the
  *pre-cap* logits ``z``, the value the linear replacement model can sum to exactly;
* what the frozen pattern absorbs (rotary, q/k norms, attention soft-cap, sliding windows,
  query scaling), recorded for the graph metadata.

Gemma's post-MLP norm (``ln2_post``) is *inside* the function a transcoder replaces: its output
site is ``hook_mlp_out``, which TransformerLens places after ``ln2_post`` (as GemmaScope's
transcoders and circuit-tracer's Gemma configs do), so that norm's scale is never frozen.
Gemma's ``sqrt(d_model)`` embedding scale is folded into ``W_E`` by TransformerLens' weight
converter; ``hook_embed`` (the embedding source) is the scaled embedding.

Anything outside these shapes raises ``ValueError`` naming the config field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tc_circuits.models import backend
from tc_circuits.models.sites import Site, global_hook

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

#: Config fields whose non-default values the linearisation cannot represent.
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "attn_only": (False, "attribution needs a model with MLPs"),
    "post_embedding_ln": (False, "a LayerNorm right after the embedding is not linearised"),
    "attention_dir": ("causal", "only causal attention is linearised"),
}

#: ``original_architecture`` values with norms in places TransformerLens' standard block lacks.
_UNSUPPORTED_ARCHS = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")


@dataclass(frozen=True)
class NormPlan:
    """How one norm is frozen: ``centre(x) / scale`` (then ``* w + b`` when affine)."""

    module: str
    """Attribute path on the model (``"blocks.3.ln1"``, ``"ln_final"``)."""
    kind: str | None
    """``"LN"`` (centred), ``"RMS"``, or None (no norm: identity)."""
    scale_hook: str | None
    """Hook holding the scale the frozen model uses (None when ``kind`` is None)."""
    affine: bool
    """Whether the module carries a weight ``w`` (folded norms do not)."""


@dataclass(frozen=True)
class BlockPlan:
    """What the linearisation freezes and routes, for one model."""

    n_layers: int
    parallel: bool
    """Attention and MLP both read the block input (``resid_pre``) and add to ``resid_post``."""
    position_nodes: bool
    """Learned absolute position embeddings (``hook_pos_embed``) are a source."""
    ln1: tuple[NormPlan, ...]
    ln2: tuple[NormPlan, ...]
    ln1_post: tuple[NormPlan | None, ...]
    """Attention post-norm per layer (Gemma-2/3), applied to the attention output; else None."""
    mlp_post_norm: bool
    """The MLP output passes a post-norm (Gemma); it lies inside the transcoder's replaced function."""
    ln_final: NormPlan
    logit_softcap: float | None
    """Final-logit soft-cap ``c`` (targets are the pre-cap logits), or None."""
    n_key_value_heads: int | None
    """Grouped-query attention: K/V heads shared by ``n_heads / n_key_value_heads`` query heads
    (``W_V``/``b_V`` are read expanded to one per query head)."""
    frozen_in_pattern: tuple[str, ...]
    """What the frozen attention pattern absorbs (for the graph metadata)."""
    embed_scale: float | None
    """Embedding multiplier folded into ``W_E`` by the converter (Gemma's sqrt(d_model)), or None."""

    def frozen_scale_hooks(self) -> list[str]:
        """Every norm-scale hook the frozen model fixes to its clean value."""
        out = []
        for plans in (self.ln1, self.ln2, self.ln1_post):
            out += [p.scale_hook for p in plans if p is not None and p.scale_hook is not None]
        if self.ln_final.scale_hook is not None:
            out.append(self.ln_final.scale_hook)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded in graph metadata."""
        return {
            "parallel_attn_mlp": self.parallel,
            "position_nodes": self.position_nodes,
            "norm": self.ln1[0].kind if self.ln1 else None,
            "attn_post_norm": any(p is not None for p in self.ln1_post),
            "mlp_post_norm": self.mlp_post_norm,
            "logit_softcap": self.logit_softcap,
            "target_values": "pre-softcap logits" if self.logit_softcap else "logits",
            "n_key_value_heads": self.n_key_value_heads,
            "frozen_in_pattern": list(self.frozen_in_pattern),
            "embed_scale": self.embed_scale,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm_plan(model, path: str, scale_hook: str) -> NormPlan:
    module = model
    for part in path.split("."):
        module = getattr(module, part, None) if not part.isdigit() else module[int(part)]
        if module is None:
            return NormPlan(path, None, None, False)
    if not hasattr(module, "forward"):
        return NormPlan(path, None, None, False)
    try:
        kind = backend.norm_kind(module)  # HookedTransformer and bridge norms
    except ValueError as err:
        raise ValueError(f"norm module {path}: {err}") from None
    if kind is None:
        return NormPlan(path, None, None, False)
    if scale_hook not in model.hook_dict:
        raise ValueError(f"norm {path} has no scale hook {scale_hook!r}")
    return NormPlan(path, kind, scale_hook, getattr(module, "w", None) is not None)


def check_supported(model: HookedTransformer) -> None:
    """Raise ``ValueError`` naming the config field of a shape the linearisation does not cover."""
    cfg = model.cfg
    for field, (ok, why) in _UNSUPPORTED.items():
        value = getattr(cfg, field, ok)
        if value != ok:
            raise ValueError(f"unsupported model config {field}={value!r}: {why}")
    arch = getattr(cfg, "original_architecture", None)
    if arch in _UNSUPPORTED_ARCHS:
        raise ValueError(
            f"unsupported model config original_architecture={arch!r}: its norms sit on the sublayer "
            "outputs in place of their inputs, which the linearisation does not cover"
        )
    if cfg.normalization_type not in (None, "LN", "LNPre", "RMS", "RMSPre"):
        raise ValueError(f"unsupported model config normalization_type={cfg.normalization_type!r}")
    if cfg.positional_embedding_type not in ("standard", "rotary", "shortformer", "alibi"):
        raise ValueError(f"unsupported model config positional_embedding_type={cfg.positional_embedding_type!r}")


def block_plan(model: HookedTransformer) -> BlockPlan:
    """The :class:`BlockPlan` of ``model`` (raises ``ValueError`` for unsupported shapes)."""
    check_supported(model)
    cfg = model.cfg
    n = int(cfg.n_layers)
    post = bool(getattr(cfg, "use_normalization_before_and_after", False))
    ln1 = tuple(_norm_plan(model, f"blocks.{L}.ln1", Site(L, "ln1_scale").hook_for(model)) for L in range(n))
    ln2 = tuple(_norm_plan(model, f"blocks.{L}.ln2", Site(L, "ln2_scale").hook_for(model)) for L in range(n))
    ln1_post = tuple(
        _norm_plan(model, f"blocks.{L}.ln1_post", Site(L, "ln1_post_scale").hook_for(model)) if post else None
        for L in range(n)
    )
    ln_final = _norm_plan(model, "ln_final", global_hook("ln_final_scale", model))
    cap = float(getattr(cfg, "output_logits_soft_cap", -1.0))
    in_pattern = []
    if cfg.positional_embedding_type != "standard":
        in_pattern.append(f"{cfg.positional_embedding_type} positions")
    if getattr(cfg, "use_qk_norm", False):
        in_pattern.append("q/k norms")
    if float(getattr(cfg, "attn_scores_soft_cap", -1.0)) > 0:
        in_pattern.append(f"attention soft-cap {float(cfg.attn_scores_soft_cap):g}")
    if getattr(cfg, "use_local_attn", False):
        in_pattern.append(f"sliding window {cfg.window_size}")
    if float(getattr(cfg, "attn_scale", -1.0)) > 0:
        in_pattern.append(f"attention scale 1/{float(cfg.attn_scale):g}")
    arch = str(getattr(cfg, "original_architecture", "") or "")
    return BlockPlan(
        n_layers=n,
        parallel=bool(cfg.parallel_attn_mlp),
        position_nodes=cfg.positional_embedding_type == "standard",
        ln1=ln1,
        ln2=ln2,
        ln1_post=ln1_post,
        mlp_post_norm=post,
        ln_final=ln_final,
        logit_softcap=cap if cap > 0 else None,
        n_key_value_heads=None if cfg.n_key_value_heads is None else int(cfg.n_key_value_heads),
        frozen_in_pattern=tuple(in_pattern),
        embed_scale=float(cfg.d_model) ** 0.5 if arch.startswith("Gemma") else None,
    )

