"""Foreign hook points per model family -> our sites, and the checks that go with them.

Our transcoders read ``blocks.L.ln2.hook_normalized`` (the normalised vector ``n(x)``, before
the norm's gain) and write ``blocks.L.hook_mlp_out`` (for Gemma: *after* the post-MLP norm).
Other tools name their sites differently; each foreign name is classified here as a
:class:`ForeignHook`:

| foreign name | our site | what the import does |
|---|---|---|
| ``ln2.hook_normalized`` (TransformerLens; circuit-tracer's and SAELens' GemmaScope configs) | ``mlp_in`` | nothing |
| ``mlp.hook_in`` (circuit-tracer / SAELens on an unprocessed model), HF ``layers.L.mlp`` input, ``pre_feedforward_layernorm.output``, ``post_attention_layernorm.output`` (non-Gemma), ``ln_2.output`` | ``mlp_in`` | fold the norm's gain (and LayerNorm bias) into the encoder |
| ``hook_mlp_out`` (TransformerLens), HF ``post_feedforward_layernorm.output`` (Gemma) | ``mlp_out`` | centre the decoder if the value was uncentred and the model has ``center_writing_weights`` |
| circuit-tracer ``mlp.hook_out``, HF ``layers.L.mlp`` output | ``mlp_out`` — except on a family with a post-MLP norm (Gemma), where it is the value *before* that norm | as above; on Gemma **refused** |

A Gemma MLP output before ``post_feedforward_layernorm`` has no exact counterpart at
``hook_mlp_out``: the RMSNorm divides by the output's own norm, which is not linear, so no
decoder rewrite gives the normalised value. Such files are refused naming the site.

:func:`check_family` compares a checkpoint's declared model (``model_name``, or the family of
the weights passed as ``hf_model``) with the target model's family and refuses a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tc_circuits.models.norm_gains import has_post_mlp_norm, module_family, same_family
from tc_circuits.models.sites import Site

#: (regex on a model name, family). First match wins.
_NAME_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"gemma-?3|gemma_3|gemma-scope-2", "gemma3"),
    (r"gemma-?2|gemma_2", "gemma2"),
    (r"pythia|gpt-?neox", "gpt_neox"),
    (r"gpt-?j", "gptj"),
    (r"gpt2|gpt-2", "gpt2"),
    (r"llama", "llama"),
    (r"qwen3", "qwen3"),
    (r"qwen2|qwen-?2", "qwen2"),
    (r"mistral", "mistral"),
    (r"phi-?3", "phi3"),
)


def family_of_name(model_name: str | None) -> str | None:
    """The family a model name belongs to (``"google/gemma-2-2b"`` -> ``"gemma2"``), else ``None``."""
    if not model_name:
        return None
    low = str(model_name).lower()
    for pattern, fam in _NAME_FAMILIES:
        if re.search(pattern, low):
            return fam
    return None


def describe(model: Any) -> str:
    """``'name' (Architecture)`` of a target model, for messages."""
    cfg = getattr(model, "cfg", None)
    return f"{getattr(cfg, 'model_name', '?')!r} ({getattr(cfg, 'original_architecture', None) or 'unknown architecture'})"


def check_family(source: str, field: str, declared: str | None, declared_family: str | None, model: Any) -> None:
    """Raise ``ValueError`` if ``declared_family`` (the checkpoint's, from ``field``) is not the
    target ``model``'s family. Unknown families on either side pass (nothing to compare)."""
    if model is None or declared_family is None:
        return
    target = module_family(model)
    if not same_family(declared_family, target):
        raise ValueError(
            f"{source}: {field} {declared!r} is a {declared_family} checkpoint, but the target model "
            f"{describe(model)} is {target}; load it onto the model it was trained on"
        )


def check_width(source: str, field: str, value: int, model: Any) -> None:
    """Raise ``ValueError`` unless ``value`` (the checkpoint's ``field``) equals the model's d_model."""
    if model is not None and int(value) != int(model.cfg.d_model):
        raise ValueError(
            f"{source}: {field}={value} does not match the target model's d_model={model.cfg.d_model} "
            f"({describe(model)})"
        )


@dataclass(frozen=True)
class ForeignHook:
    """A foreign hook point, classified."""

    name: str
    """The name as the file gives it."""
    site: Site
    """Our site."""
    norm_output: bool = False
    """An MLP input read *after* the norm's gain and bias (they must be folded into the encoder)."""
    before_post_norm: bool = False
    """An MLP output read before a post-MLP norm, if the family has one (refused on Gemma)."""
    uncentred: bool = False
    """Read on a model without ``center_writing_weights`` (HF, or an unprocessed TL model)."""


_HF = re.compile(
    r"^(?:[A-Za-z_]+\.)*?(?:h|layers)\.(\d+)\.(mlp|ln_2|ln_1|pre_feedforward_layernorm|"
    r"post_feedforward_layernorm|post_attention_layernorm)(?:\.(input|output))?$"
)


def hf_hook(name: str, *, io: str | None = None, family: str | None = None) -> ForeignHook:
    """A Hugging Face module hook (``model.layers.3.mlp`` + ``input``/``output``, or
    ``model.layers.3.pre_feedforward_layernorm.output``) for a ``family`` model."""
    m = _HF.match(name)
    if not m:
        raise ValueError(
            f"Hugging Face hook point {name!r} has no exact TransformerLens site; supported: the MLP "
            f"module ('layers.L.mlp' input / output) and the norms around it"
        )
    layer, module, which = int(m.group(1)), m.group(2), m.group(3) or io
    if which not in ("input", "output"):
        raise ValueError(f"hook point {name!r}: say whether the module's input or output is read")
    gemma = has_post_mlp_norm(family) or (family is None and "feedforward_layernorm" in name)
    if module == "mlp":
        if which == "input":
            return ForeignHook(name, Site(layer, "mlp_in"), norm_output=True)
        return ForeignHook(name, Site(layer, "mlp_out"), before_post_norm=True, uncentred=True)
    if module == "pre_feedforward_layernorm" and which == "output":
        return ForeignHook(name, Site(layer, "mlp_in"), norm_output=True)
    if module == "post_feedforward_layernorm" and which == "output":
        return ForeignHook(name, Site(layer, "mlp_out"), uncentred=True)
    if module in ("post_attention_layernorm", "ln_2") and which == "output" and not gemma:
        return ForeignHook(name, Site(layer, "mlp_in"), norm_output=True)
    if module == "ln_1" and which == "output" and family == "gptj":
        return ForeignHook(name, Site(layer, "mlp_in"), norm_output=True)
    raise ValueError(
        f"Hugging Face hook point {name!r} ({which}) has no exact TransformerLens site for a "
        f"{family or 'model of unknown family'}"
        + ("; on Gemma post_attention_layernorm is the attention output's post-norm" if gemma else "")
    )


def tl_hook(name: str, layer: int | None = None, *, fold_ln: bool = False) -> ForeignHook:
    """A TransformerLens hook name, absolute (``blocks.3.hook_mlp_out``) or relative to
    ``blocks.{layer}`` (circuit-tracer's ``hook_mlp_out``, ``mlp.hook_in``, ``mlp.hook_out``).

    ``fold_ln``: the processing of the model the file was read on. circuit-tracer's wrapper
    hook ``mlp.hook_in`` is ``ln2``'s output: ``n(x) * w + b`` on its unprocessed models
    (``fold_ln=False``), the bare ``n(x)`` with ``fold_ln``. ``ln2.hook_normalized`` is ``n(x)``
    under any processing.
    """
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    rel = m.group(2) if m else name
    if m:
        layer = int(m.group(1))
    if layer is None:
        raise ValueError(f"hook {name!r} names no layer")
    if rel == "mlp.hook_in":
        return ForeignHook(name, Site(layer, "mlp_in"), norm_output=not fold_ln)
    if rel == "mlp.hook_out":  # circuit-tracer's wrapper: the MLP's own output
        return ForeignHook(name, Site(layer, "mlp_out"), before_post_norm=True)
    try:
        site = Site.parse(f"blocks.{layer}.{rel}")
    except ValueError as err:
        raise ValueError(f"unsupported hook {name!r}: {err}") from err
    return ForeignHook(name, site)


def output_site(source: str, hook: ForeignHook, family: str | None, model: Any = None) -> Site:
    """Our site for an output hook; refuses a pre-post-norm MLP output on a post-norm family."""
    fam = family if family is not None else (module_family(model) if model is not None else None)
    if hook.before_post_norm and has_post_mlp_norm(fam):
        raise ValueError(
            f"{source}: output hook {hook.name!r} is the MLP's output before Gemma's post-MLP norm "
            f"(post_feedforward_layernorm / ln2_post), but blocks.{hook.site.layer}.hook_mlp_out, the "
            f"site our transcoders write, is after it; an RMSNorm of the output is not linear in it, "
            f"so the decoder cannot be converted exactly. Use a transcoder trained to predict the "
            f"post-norm output (hook_mlp_out / post_feedforward_layernorm.output)"
        )
    return hook.site


__all__ = ["ForeignHook", "check_family", "check_width", "describe", "family_of_name", "hf_hook",
           "output_site", "tl_hook"]
