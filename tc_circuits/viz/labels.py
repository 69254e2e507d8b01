"""Short node labels, and which of them to show so that no two overlap.

A feature's short label is, in order of preference: the user's label
(``graph.label(...)``, or ``labels={(layer, latent): ...}``), ``→'tok'`` with its top promoted
token (direct logit effect, from the dashboards or the transcoder weights), ``'tok'`` with
the token of its top-activating context (dashboards), else ``#latent``. Labels are cut to
``max_chars`` (the full text is in the hover).

Placement (:func:`place_labels`) is greedy, most important node first (targets, then
supernodes, then features by influence, at most ``max_labels`` of them): a label goes above
its node, else below, in the first spot whose box (text width estimated at
:data:`~tc_circuits.viz.layout.CHAR_PX` per character) overlaps no label already placed and
no other node's marker; otherwise that node stays unlabelled.
"""

from __future__ import annotations

from collections.abc import Mapping

from tc_circuits.viz.feature_weights import promoted_tokens
from tc_circuits.viz.layout import CHAR_PX, LINE_PX

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in px, y downwards


def shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def feature_labels(keys, *, model=None, transcoders=None, dashboards=None,
                   labels: Mapping[tuple[int, int], str] | None = None) -> dict[tuple[int, int], str]:
    """Full (unshortened) default label of each feature ``(layer, latent)`` in ``keys``."""
    out: dict[tuple[int, int], str] = {}
    for key in sorted(set(keys)):
        if labels and key in labels:
            out[key] = labels[key]
            continue
        board = dashboards.get(key) if dashboards else None
        top = board.promoted[:1] if board else None
        if not top and model is not None and transcoders and key[0] in transcoders:
            top = promoted_tokens(model, transcoders[key[0]], key[1], 1)[0]
        if top:
            out[key] = f"→{top[0].string!r}"
        elif board and board.top_examples:
            ex = board.top_examples[0]
            out[key] = repr(ex.tokens[ex.highlight]) if 0 <= ex.highlight < len(ex.tokens) else f"#{key[1]}"
        else:
            out[key] = f"#{key[1]}"
    return out


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    xy_px: list[tuple[float, float]],
    radius_px: list[float],
    texts: list[str],
    priority: list[float],
    max_labels: int,
    forced: list[bool],
    bounds: Box | None = None,
) -> list[str | None]:
    """For each node ``"top center"``, ``"bottom center"`` or None (no label shown).

    ``xy_px`` are marker centres in pixels (y downwards), ``priority`` orders the candidates
    (higher first); ``forced`` nodes (targets) are tried first and do not count against
    ``max_labels``. Boxes must also stay inside ``bounds`` when given.
    """
    n = len(texts)
    order = sorted((i for i in range(n) if texts[i]), key=lambda i: (not forced[i], -priority[i]))
    markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(xy_px, radius_px)]
    placed: list[Box] = []
    out: list[str | None] = [None] * n
    shown = 0
    for i in order:
        if not forced[i] and shown >= max_labels:
            break
        x, y = xy_px[i]
        w = len(texts[i]) * CHAR_PX + 2
        r = radius_px[i]
        for where, y0 in (("top center", y - r - LINE_PX - 1), ("bottom center", y + r + 1)):
            box = (x - w / 2, y0, x + w / 2, y0 + LINE_PX)
            if bounds and not (bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1] and box[3] <= bounds[3]):
                continue
            if any(_overlap(box, b) for b in placed):
                continue
            if any(j != i and _overlap(box, m) for j, m in enumerate(markers)):
                continue
            placed.append(box)
            out[i] = where
            shown += not forced[i]
            break
    return out
