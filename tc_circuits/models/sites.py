"""Typed hook sites: the only place TransformerLens hook strings are built or parsed.

A :class:`Site` is a ``(layer, kind)`` pair. ``Site(3, "mlp_in").hook_name`` is
``"blocks.3.ln2.hook_normalized"``, the HookedTransformer name (the backend-neutral identity
checkpoints record); :meth:`Site.parse` goes the other way. Every other module asks this one
for hook names, so a model family with other names needs changes here only.

Per backend (:mod:`tc_circuits.models.backend`): ``Site.hook_for(model)`` and
``global_hook(name, model)`` give the name to hook on *that* model. On a ``TransformerBridge``
that is its canonical name (:data:`BRIDGE_SITE_KINDS`: ``blocks.3.mlp.hook_out``,
``blocks.3.hook_in``...), which exists with and without compatibility mode; :meth:`Site.parse`
accepts the canonical names too. Two legacy names mean something else on a bridge, so the
canonical names avoid them: the bridge's ``hook_mlp_in`` alias is the MLP's input *after*
``ln2`` (HookedTransformer's is the residual before it: ``ln2.hook_in`` on a bridge), and its
``hook_resid_mid`` (= ``ln2.hook_in``) can be read but writing it does not change the residual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tc_circuits.models.backend import backend_of

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

#: kind -> hook name template (``{L}`` is the layer).
SITE_KINDS: dict[str, str] = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.hook_attn_out",
    "mlp_in": "blocks.{L}.ln2.hook_normalized",
    "mlp_in_resid": "blocks.{L}.hook_mlp_in",
    "mlp_pre": "blocks.{L}.mlp.hook_pre",
    "mlp_post": "blocks.{L}.mlp.hook_post",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "ln1_scale": "blocks.{L}.ln1.hook_scale",
    "ln1_normalized": "blocks.{L}.ln1.hook_normalized",
    "ln2_scale": "blocks.{L}.ln2.hook_scale",
    "ln1_post_scale": "blocks.{L}.ln1_post.hook_scale",
    "ln2_post_scale": "blocks.{L}.ln2_post.hook_scale",
    "attn_pattern": "blocks.{L}.attn.hook_pattern",
    "attn_z": "blocks.{L}.attn.hook_z",
    "attn_v": "blocks.{L}.attn.hook_v",
}

#: kind -> canonical ``TransformerBridge`` hook name template (TL 3.x / 4.x).
BRIDGE_SITE_KINDS: dict[str, str] = {
    "resid_pre": "blocks.{L}.hook_in",
    "resid_mid": "blocks.{L}.ln2.hook_in",
    "resid_post": "blocks.{L}.hook_out",
    "attn_out": "blocks.{L}.attn.hook_out",
    "mlp_in": "blocks.{L}.ln2.hook_normalized",
    "mlp_in_resid": "blocks.{L}.ln2.hook_in",
    "mlp_pre": "blocks.{L}.mlp.in.hook_out",
    "mlp_post": "blocks.{L}.mlp.out.hook_in",
    "mlp_out": "blocks.{L}.mlp.hook_out",
    "ln1_scale": "blocks.{L}.ln1.hook_scale",
    "ln1_normalized": "blocks.{L}.ln1.hook_normalized",
    "ln2_scale": "blocks.{L}.ln2.hook_scale",
    "attn_pattern": "blocks.{L}.attn.hook_pattern",
    "attn_z": "blocks.{L}.attn.o.hook_in",
    "attn_v": "blocks.{L}.attn.v.hook_out",
}

#: Hook names that belong to no layer.
GLOBAL_HOOKS: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final_scale": "ln_final.hook_scale",
    "ln_final_normalized": "ln_final.hook_normalized",
}

#: Canonical ``TransformerBridge`` names of the layer-less hooks.
BRIDGE_GLOBAL_HOOKS: dict[str, str] = {
    "embed": "embed.hook_out",
    "pos_embed": "pos_embed.hook_out",
    "ln_final_scale": "ln_final.hook_scale",
    "ln_final_normalized": "ln_final.hook_normalized",
}

_TEMPLATES = {"hooked": (SITE_KINDS, GLOBAL_HOOKS), "bridge": (BRIDGE_SITE_KINDS, BRIDGE_GLOBAL_HOOKS)}


def _pattern(tpl: str) -> re.Pattern:
    return re.compile("^" + re.escape(tpl).replace(re.escape("{L}"), r"(\d+)") + "$")


# legacy names first: a name both backends share (``ln2.hook_normalized``) parses to one kind,
# and ``ln2.hook_in`` parses to ``resid_mid`` (the same value as ``mlp_in_resid`` on a bridge)
_PATTERNS = [(kind, _pattern(tpl)) for kind, tpl in SITE_KINDS.items()] + [
    (kind, _pattern(tpl)) for kind, tpl in BRIDGE_SITE_KINDS.items()
]


@dataclass(frozen=True, order=True)
class Site:
    """A hook site inside transformer block ``layer``.

    Attributes:
        layer: block index, ``0 <= layer < n_layers``.
        kind: one of :data:`SITE_KINDS` (``"mlp_in"``, ``"mlp_out"``, ...).
    """

    layer: int
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise ValueError(
                f"unknown site kind {self.kind!r}; expected one of {sorted(SITE_KINDS)}"
            )
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(f"site layer must be a non-negative int, got {self.layer!r}")

    @property
    def hook_name(self) -> str:
        """The HookedTransformer hook name of this site (the name checkpoints record)."""
        return SITE_KINDS[self.kind].format(L=self.layer)

    def hook_name_in(self, backend: str) -> str:
        """The hook name of this site on a ``backend`` (``"hooked"`` or ``"bridge"``) model."""
        if backend not in _TEMPLATES:
            raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(_TEMPLATES)}")
        # a kind without a bridge template keeps its legacy name (the bridge's aliases)
        return _TEMPLATES[backend][0].get(self.kind, SITE_KINDS[self.kind]).format(L=self.layer)

    def hook_for(self, model) -> str:
        """The hook name of this site on ``model`` (a HookedTransformer or a TransformerBridge)."""
        return self.hook_name_in(backend_of(model))

    @classmethod
    def parse(cls, hook_name: str | Site) -> Site:
        """Parse a TransformerLens hook name (or pass a :class:`Site` through)."""
        if isinstance(hook_name, Site):
            return hook_name
        for kind, pattern in _PATTERNS:
            match = pattern.match(hook_name)
            if match:
                return cls(int(match.group(1)), kind)
        raise ValueError(
            f"unknown hook name {hook_name!r}; expected a per-layer hook such as "
            f"'blocks.0.ln2.hook_normalized' or 'blocks.0.hook_mlp_out'"
        )

    def check(self, model: HookedTransformer) -> Site:
        """Raise ``ValueError`` unless this site exists in ``model``; return self."""
        n_layers = model.cfg.n_layers
        if self.layer >= n_layers:
            raise ValueError(
                f"layer {self.layer} out of range for a model with {n_layers} layers ({self.hook_name})"
            )
        if self.hook_for(model) not in model.hook_dict:
            raise ValueError(f"hook {self.hook_for(model)!r} does not exist in this model")
        return self

    def __str__(self) -> str:
        return self.hook_name


def mlp_in(layer: int) -> Site:
    """The MLP input site (after ``ln2``): a transcoder's default input."""
    return Site(layer, "mlp_in")


def mlp_out(layer: int) -> Site:
    """The MLP output site: a transcoder's default output."""
    return Site(layer, "mlp_out")


def global_hook(name: str, model=None) -> str:
    """Hook name for a layer-less site (``"embed"``, ``"pos_embed"``, ``"ln_final_scale"``...).

    With ``model``, the name on that model's backend; without, the HookedTransformer name.
    """
    if name not in GLOBAL_HOOKS:
        raise ValueError(f"unknown global hook {name!r}; expected one of {sorted(GLOBAL_HOOKS)}")
    if model is None:
        return GLOBAL_HOOKS[name]
    return _TEMPLATES[backend_of(model)][1][name]


def site_dim(model: HookedTransformer, site: Site) -> int:
    """Width of the activation at ``site`` (d_model, or d_mlp for MLP-internal sites)."""
    site.check(model)
    if site.kind in ("mlp_pre", "mlp_post"):
        return int(model.cfg.d_mlp)
    if site.kind in ("ln1_scale", "ln2_scale", "ln1_post_scale", "ln2_post_scale"):
        return 1
    if site.kind in ("attn_pattern", "attn_z", "attn_v"):
        raise ValueError(f"site {site} has no single width")
    return int(model.cfg.d_model)
