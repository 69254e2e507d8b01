"""Splice transcoders into a model in place of its MLPs, and always take them out again.

``with splice(model, transcoders) as state:`` adds two kinds of forward hooks for every
transcoder, at TransformerLens hook points, inside ``model.hooks()`` (so they are removed on
exit, also when the body raises, and they compose with the caller's own ``run_with_hooks`` /
``run_with_cache``, whose hooks run after ours and see the spliced values):

1. at the transcoder's input site (``blocks.L.ln2.hook_normalized``) a hook records the input
   ``x`` of the current forward pass;
2. at its output site (``blocks.L.hook_mlp_out``) a hook replaces the MLP output ``y`` by the
   transcoder's reconstruction ``f(x)``. With ``error_term=True`` it returns
   ``f(x) + (y - f(x)).detach()``: numerically the original ``y`` (the model is unchanged), the
   error is a constant, and gradients flow through the transcoder's latents.

For an SAE (input site == output site) both steps are one hook: it encodes the original MLP
output and returns the reconstruction.

The :class:`SpliceState` yielded by the context manager holds the latest latents,
reconstructions and errors per layer (optionally with ``retain_grad()`` so that ``.grad`` is
filled by a backward pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.coders.clt import CLTLayer, CoderLayer, CrossLayerTranscoder, clt_of
from tc_circuits.coders.transcoder import Transcoder
from tc_circuits.models import backend
from tc_circuits.evaluation.splice_clt import clt_hooks
from tc_circuits.models.safe_hooks import temporary_hooks
from tc_circuits.validate import check_spliceable

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

TranscodersLike = Mapping[int, CoderLayer] | Iterable[CoderLayer] | Transcoder | CrossLayerTranscoder


@dataclass
class SpliceState:
    """What the spliced transcoders saw and produced in the latest forward pass.

    All dicts are keyed by layer (the layer of the transcoder's output site).
    """

    transcoders: dict[int, CoderLayer]
    """The spliced transcoders."""
    error_term: bool
    """Whether the reconstruction error is added back (model unchanged)."""
    latents: dict[int, Tensor] = field(default_factory=dict)
    """Latent activations ``[batch, pos, n_latents]`` of the latest forward pass."""
    inputs: dict[int, Tensor] = field(default_factory=dict)
    """Transcoder inputs ``[batch, pos, d_in]`` of the latest forward pass."""
    reconstructions: dict[int, Tensor] = field(default_factory=dict)
    """Transcoder outputs ``f(x)`` ``[batch, pos, d_out]`` of the latest forward pass."""
    errors: dict[int, Tensor] = field(default_factory=dict)
    """Original output minus reconstruction ``[batch, pos, d_out]`` (detached)."""
    n_forward: int = 0
    """How many output-site hooks have fired (one per layer per forward pass)."""

    @property
    def layers(self) -> list[int]:
        return sorted(self.transcoders)


def as_transcoder_dict(transcoders: TranscodersLike) -> dict[int, CoderLayer]:
    """Normalise a ``{layer: Transcoder}`` mapping, a list, or one transcoder to a dict.

    Raises ``ValueError`` when a mapping key disagrees with the transcoder's own layer or
    when two transcoders replace the same layer. A ``CrossLayerTranscoder`` becomes
    ``{layer: CLTLayer}`` (:meth:`~tc_circuits.coders.clt.CrossLayerTranscoder.layers`).
    """
    if isinstance(transcoders, CrossLayerTranscoder):
        transcoders = transcoders.layers()
    if isinstance(transcoders, Transcoder):
        transcoders = [transcoders]
    out: dict[int, CoderLayer] = {}
    if isinstance(transcoders, Mapping):
        for layer, tc in transcoders.items():
            if not isinstance(tc, (Transcoder, CLTLayer)):
                raise ValueError(f"expected a Transcoder for layer {layer}, got {type(tc).__name__}")
            if int(layer) != tc.cfg.layer:
                raise ValueError(
                    f"transcoder stored under layer {layer} writes to {tc.cfg.output_site} "
                    f"(layer {tc.cfg.layer})"
                )
            out[int(layer)] = tc
    else:
        for tc in transcoders:
            if not isinstance(tc, (Transcoder, CLTLayer)):
                raise ValueError(f"expected Transcoder objects, got {type(tc).__name__}")
            if tc.cfg.layer in out:
                raise ValueError(f"two transcoders replace layer {tc.cfg.layer}")
            out[tc.cfg.layer] = tc
    if not out:
        raise ValueError("no transcoders given to splice")
    return out


def select_layers(
    transcoders: dict[int, CoderLayer], layers: Iterable[int] | int | None
) -> dict[int, CoderLayer]:
    """The subset of ``transcoders`` at ``layers`` (all when None); unknown layers raise."""
    if layers is None:
        return dict(transcoders)
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    missing = [layer for layer in layers if layer not in transcoders]
    if missing:
        raise ValueError(f"no transcoder for layers {missing}; available: {sorted(transcoders)}")
    if not layers:
        raise ValueError("layers is empty: nothing to splice")
    return {layer: transcoders[layer] for layer in layers}


def _make_hooks(state: SpliceState, retain_grad: bool, model: Any) -> list[tuple[str, Any]]:
    clt = clt_of(state.transcoders)
    if clt is not None:  # a cross-layer transcoder: every encoder runs, the chosen layers are replaced
        return clt_hooks(state, clt, retain_grad, model)
    hooks: list[tuple[str, Any]] = []
    pending: dict[int, Tensor] = {}
    for layer, tc in state.transcoders.items():
        in_name, out_name = tc.cfg.in_site.hook_for(model), tc.cfg.out_site.hook_for(model)

        def run_tc(x: Tensor, y: Tensor, layer: int = layer, tc: CoderLayer = tc) -> Tensor:
            p = tc.W_enc
            out = tc(x.to(device=p.device, dtype=p.dtype))
            recon = out.output.to(device=y.device, dtype=y.dtype)
            latents = out.latents
            if retain_grad and latents.requires_grad:
                latents.retain_grad()
            state.latents[layer] = latents
            state.reconstructions[layer] = recon
            state.errors[layer] = (y - recon).detach()
            state.n_forward += 1
            if state.error_term:
                return recon + state.errors[layer]
            return recon

        if tc.cfg.is_sae:

            def sae_hook(act: Tensor, hook: Any, layer: int = layer, run=run_tc) -> Tensor:
                state.inputs[layer] = act
                return run(act, act)

            hooks.append((out_name, sae_hook))
            continue

        def in_hook(act: Tensor, hook: Any, layer: int = layer) -> None:
            state.inputs[layer] = act
            pending[layer] = act
            return None

        def out_hook(act: Tensor, hook: Any, layer: int = layer, run=run_tc, in_name=in_name) -> Tensor:
            x = pending.pop(layer, None)  # never reuse an input from an earlier pass
            if x is None:
                raise RuntimeError(
                    f"splice: the input site {in_name} did not fire before {hook.name} in this "
                    "forward pass (is the input site downstream of the output site?)"
                )
            return run(x, act)

        hooks.append((in_name, in_hook))
        hooks.append((out_name, out_hook))
    return hooks


def check_transcoders(model: HookedTransformer, transcoders: dict[int, CoderLayer]) -> None:
    """Run :meth:`Transcoder.check_compatible` on each transcoder; check output sites differ."""
    seen: dict[str, int] = {}
    for layer, tc in transcoders.items():
        try:
            tc.check_compatible(model)
        except ValueError as err:
            raise ValueError(f"transcoder for layer {layer} does not fit this model: {err}") from err
        site = tc.cfg.output_site
        if site in seen:
            raise ValueError(f"transcoders for layers {seen[site]} and {layer} both write {site}")
        seen[site] = layer
    check_spliceable(transcoders, getattr(model.cfg, "model_name", None))


@contextmanager
def splice(
    model: HookedTransformer,
    transcoders: TranscodersLike,
    *,
    error_term: bool = False,
    layers: Iterable[int] | int | None = None,
    retain_grad: bool = False,
) -> Iterator[SpliceState]:
    """Replace the MLP outputs of ``model`` by transcoder outputs inside a ``with`` block.

    Args:
        model: a TransformerLens ``HookedTransformer``.
        transcoders: ``{layer: Transcoder}`` (e.g. a ``TranscoderSet``), a list, or one.
        error_term: add back ``(original - reconstruction).detach()`` so that the forward
            pass is unchanged while the latents are exposed.
        layers: splice only these layers (default: all given).
        retain_grad: call ``retain_grad()`` on the latents so that ``.grad`` is filled by a
            backward pass through the spliced model.

    Yields:
        a :class:`SpliceState` updated on every forward pass.

    Raises:
        ValueError: a transcoder does not fit the model (another model, site, weight
            processing or width), or ``layers`` names a layer without a transcoder.
    """
    chosen = select_layers(as_transcoder_dict(transcoders), layers)
    check_transcoders(model, chosen)
    state = SpliceState(transcoders=chosen, error_term=error_term)
    hooks = _make_hooks(state, retain_grad, model)
    with temporary_hooks(model, hooks):  # model.hooks() + removal that survives an interrupt
        yield state


def run_spliced(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    transcoders: TranscodersLike,
    *,
    error_term: bool = False,
    layers: Iterable[int] | int | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of ``model`` on ``tokens`` with the transcoders spliced in (see :func:`splice`)."""
    with splice(model, transcoders, error_term=error_term, layers=layers):
        return model(tokens)


def count_hooks(model: HookedTransformer) -> int:
    """Number of forward hooks currently on ``model`` (0 on a clean model)."""
    return backend.count_hooks(model)


__all__ = [
    "SpliceState",
    "as_transcoder_dict",
    "check_transcoders",
    "count_hooks",
    "run_spliced",
    "select_layers",
    "splice",
]
