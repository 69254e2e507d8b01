"""The local replacement model: the real model linearised at one prompt.

One real forward pass caches, per layer, the LayerNorm scales (``ln1``, ``ln2``,
``ln_final``), the attention patterns, the transcoder inputs (``mlp_in``) and the MLP outputs.
The transcoders are run on the cached inputs, giving the active latents and the error
``e = mlp_out - transcoder(mlp_in)`` of each (layer, position).

The *frozen* model replaces every LN scale and attention pattern by its cached constant, and
every MLP output by

    sum_s a_s W_dec[s] + b_dec + e + mlp_in @ W_skip

where the feature activations ``a_s`` and errors ``e`` are constants (sources) and the skip
path stays linear. The frozen model is affine in its sources: token embeddings, position
embeddings, feature activations, errors and the biases. At the cached point it reproduces
the real forward pass (up to float rounding): that is what makes the attribution exact.

The shape of each block comes from :func:`tc_circuits.models.block_plan.block_plan` (this
module knows no architecture names): which norms are frozen and whether they centre
(LayerNorm) or not (RMSNorm), an attention post-norm (Gemma's ``ln1_post``, its scale frozen),
parallel blocks (the MLP reads ``ln2(resid_pre)``), position nodes only for learned absolute
positions (rotary / q-k norms / soft-capped scores / sliding windows all live inside the
frozen pattern), grouped-query attention (``W_V``, ``b_V`` read expanded per query head).
With a final-logit soft-cap the linear model ends at the *pre-cap* logits: targets are those,
and :attr:`LinearisedModel.last_logits` (used to choose targets by probability) is capped.

Layers without a transcoder keep their whole MLP output as a constant (an ``mlp_const`` node
per position); the model stays linear and exact, that MLP is just not explained.

:meth:`LinearisedModel.vjp` is the transpose of the frozen model's linear part, written out
by hand (LN: centre and divide by the cached scale; attention: ``pattern^T`` then ``W_V``,
``W_O``; skip: ``W_skip^T``). It runs many targets at once with no autograd graph, truncated
to the positions and layers the targets can see.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.attribution import adjoint_kernels as kernels
from tc_circuits.attribution.packed_matmul import PackedMatmul
from tc_circuits.coders.clt import decode_output, decoder_of, layer_coders
from tc_circuits.coders.transcoder import Transcoder
from tc_circuits.models import backend
from tc_circuits.attribution.frozen_norm import FrozenLN as FrozenLN
from tc_circuits.attribution.frozen_norm import frozen_ln
from tc_circuits.models.block_plan import block_plan
from tc_circuits.models.block_plan import check_supported as check_supported
from tc_circuits.models.sites import Site, global_hook


class ActiveFeatures(NamedTuple):
    """The non-zero latents of all transcoders, sorted by (layer, pos, latent)."""

    layer: Int[Tensor, " f"]
    pos: Int[Tensor, " f"]
    latent: Int[Tensor, " f"]
    activation: Float[Tensor, " f"]
    pre_activation: Float[Tensor, " f"]


class FrozenOutput(NamedTuple):
    """Activations of one frozen-model forward pass."""

    resid_mid: Float[Tensor, "layer pos d_model"]
    """Residual after each layer's attention (in parallel blocks: ``resid_pre + attn_out``)."""
    mlp_in: Float[Tensor, "layer pos d_model"]
    mlp_out: Float[Tensor, "layer pos d_model"]
    final_ln_out: Float[Tensor, "pos d_model"]
    """Output of the final LayerNorm (after its ``w``, ``b``): logits = this @ W_U + b_U."""


def check_transcoders(model, transcoders) -> None:
    """Transcoders (or a CLT's layers) must map ``mlp_in`` -> ``mlp_out`` of their layer and fit the model."""
    transcoders = layer_coders(transcoders)
    checked: set[tuple] = set()
    for layer, tc in transcoders.items():
        if not 0 <= int(layer) < model.cfg.n_layers:
            raise ValueError(f"transcoder layer {layer} out of range for a {model.cfg.n_layers}-layer model")
        c = tc.cfg
        # check_compatible reads the model's weight processing (slow on big vocabularies);
        # its answer depends only on these fields once the sites are known to be mlp_in/mlp_out
        key = (c.d_in, c.d_out, c.model_name, c.model_d_model, tuple(sorted(c.weight_processing.items())))
        if key not in checked:
            tc.check_compatible(model)
            checked.add(key)
        if tc.cfg.in_site != Site(int(layer), "mlp_in") or tc.cfg.out_site != Site(int(layer), "mlp_out"):
            raise ValueError(
                f"transcoder for layer {layer} maps {tc.cfg.input_site} -> {tc.cfg.output_site}; "
                f"attribution needs {Site(int(layer), 'mlp_in')} -> {Site(int(layer), 'mlp_out')} "
                "(SAEs and other sites are not linearisable this way)"
            )


class LinearisedModel:
    """The frozen (linear) replacement model of ``model`` + ``transcoders`` at ``tokens``."""

    def __init__(self, model, transcoders, tokens: Int[Tensor, " pos"]):
        """``transcoders``: ``{layer: Transcoder}`` or a ``CrossLayerTranscoder`` (its layers)."""
        self.plan = plan = block_plan(model)
        check_transcoders(model, transcoders)
        cfg = model.cfg
        self.model = model
        self.transcoders = layer_coders(transcoders)
        self.n_layers = int(cfg.n_layers)
        self.d_model = int(cfg.d_model)
        self.d_vocab = int(cfg.d_vocab)
        self.tokens = tokens.detach().cpu().long()
        self.n_pos = int(tokens.shape[0])
        self.has_pos_embed = plan.position_nodes
        self.parallel = plan.parallel
        self.logit_softcap = plan.logit_softcap
        final_norm = plan.ln_final.kind is not None
        final_name = (
            global_hook("ln_final_normalized", model) if final_norm else Site(self.n_layers - 1, "resid_post").hook_for(model)
        )
        names = [global_hook("embed", model), final_name, *plan.frozen_scale_hooks()]
        if self.has_pos_embed:
            names.append(global_hook("pos_embed", model))
        for L in range(self.n_layers):
            names += [Site(L, k).hook_for(model) for k in ("attn_pattern", "mlp_in", "mlp_out")]
        device = next(model.parameters()).device
        with torch.no_grad():
            # return_type=None skips the unembedding of every position; only the last
            # position's logits are needed (below, from the cached final-LN output)
            _, cache = model.run_with_cache(
                self.tokens[None].to(device), names_filter=lambda n: n in set(names), return_type=None
            )
        self.device = device
        P = self.n_pos

        self.embed = cache[global_hook("embed", model)][0].detach()
        #: the dtype of the linear model and its transposed pass: the model's (half-precision
        #: models' float32 norm outputs, scales and patterns are cast to it)
        self.dtype = dt = self.embed.dtype
        self.pos_embed = (
            cache[global_hook("pos_embed", model)][0].detach() if self.has_pos_embed else torch.zeros_like(self.embed)
        )
        self.ln_final = frozen_ln(model, plan.ln_final, cache, P, device, dt)
        # TransformerLens normalises half-precision models in float32 and casts after
        # ``hook_normalized``: the same cast here (a no-op in float32 / float64)
        normalized = cache[final_name][0].detach().to(dt)
        lnf = self.ln_final
        self.final_ln_out = normalized * (1 if lnf.w is None else lnf.w) + (0 if lnf.b is None else lnf.b)
        #: the real model's logits at the last position (soft-capped when the model caps them)
        self.last_logits = self.softcap(self.logits_at(self.final_ln_out[-1:]))[0]
        self.ln1 = [frozen_ln(model, p, cache, P, device, dt) for p in plan.ln1]
        self.ln2 = [frozen_ln(model, p, cache, P, device, dt) for p in plan.ln2]
        self.ln1_post = [None if p is None else frozen_ln(model, p, cache, P, device, dt) for p in plan.ln1_post]
        self.patterns, self.mlp_in, self.mlp_out = [], [], []
        for L in range(self.n_layers):
            self.patterns.append(cache[Site(L, "attn_pattern").hook_for(model)][0].detach().to(dt))
            self.mlp_in.append(cache[Site(L, "mlp_in").hook_for(model)][0].detach().to(dt))
            self.mlp_out.append(cache[Site(L, "mlp_out").hook_for(model)][0].detach().to(dt))
        del cache
        ov = [backend.attn_ov(model, L) for L in range(self.n_layers)]  # either backend; K/V heads expanded
        self.W_V, self.b_V, self.W_O, self.b_O = ([o[i] for o in ov] for i in range(4))
        self._fold_cache: dict[tuple[str, int, torch.dtype], Tensor] = {}
        self._mm = PackedMatmul()  # x @ W for the fixed matrices (oneDNN, packed once, on CPU float32)
        self._encode()

    # ------------------------------------------------------------------ transcoders
    @torch.no_grad()
    def _encode(self) -> None:
        layers, poss, lats, acts, pres = [], [], [], [], []
        self.errors: list[Tensor] = []
        dense: dict[int, Tensor] = {}  # latents of every covered layer (a CLT layer writes later layers too)
        for L in range(self.n_layers):
            tc = self.transcoders.get(L)
            if tc is None:
                self.errors.append(self.mlp_out[L])  # the mlp_const nodes
                continue
            x = self.mlp_in[L].to(tc.W_enc.dtype)
            pre = tc.pre_acts(x)
            dense[L] = tc.activate(pre)
            output = decode_output(self.transcoders, L, dense, x, sparse=True)
            self.errors.append((self.mlp_out[L] - output.to(self.mlp_out[L].dtype)).detach())
            p, lat = torch.nonzero(dense[L], as_tuple=True)
            layers.append(torch.full_like(p, L))
            poss.append(p)
            lats.append(lat)
            acts.append(dense[L][p, lat])
            pres.append(pre[p, lat])
        if layers:
            cat = lambda xs: torch.cat(xs).cpu()  # noqa: E731
            self.features = ActiveFeatures(cat(layers), cat(poss), cat(lats), cat(acts), cat(pres))
        else:
            e = torch.zeros(0, dtype=torch.long)
            self.features = ActiveFeatures(e, e, e, torch.zeros(0), torch.zeros(0))
        # per-layer slices (features are sorted by layer, then pos)
        counts = torch.bincount(self.features.layer, minlength=self.n_layers)
        self.layer_start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    @property
    def n_features(self) -> int:
        return int(self.features.layer.shape[0])

    def features_in_layer(self, layer: int) -> slice:
        return slice(int(self.layer_start[layer]), int(self.layer_start[layer + 1]))

    def decoders(self, layer: int) -> dict[int, Tensor]:
        """``{output layer: W_dec [n, d]}`` of layer ``layer``'s features: its own layer for a
        per-layer transcoder, every later layer too for a cross-layer transcoder."""
        return decoder_of(self.transcoders[layer])

    @property
    def is_cross_layer(self) -> bool:
        """Whether some features write layers other than their own (a CLT)."""
        return any(set(self.decoders(L)) != {L} for L in self.transcoders)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(
        self,
        *,
        feature_acts: Float[Tensor, " f"] | None = None,
        error_scale: Float[Tensor, "layer pos"] | None = None,
        embed_scale: Float[Tensor, " pos"] | None = None,
        pos_scale: Float[Tensor, " pos"] | None = None,
    ) -> FrozenOutput:
        """The frozen model with optional source values (defaults: the real ones).

        ``feature_acts`` replaces the active features' activations; ``error_scale``,
        ``embed_scale`` and ``pos_scale`` multiply the errors (and mlp_const outputs),
        token and position embeddings per (layer,) position. All zeros gives the constant
        (bias-only) output.
        """
        dev, P = self.device, self.n_pos
        acts = (self.features.activation if feature_acts is None else feature_acts).to(dev)
        dt = self.dtype
        es = torch.ones(self.n_layers, P, device=dev, dtype=dt) if error_scale is None else error_scale.to(dev, dt)
        x = self.embed * (1 if embed_scale is None else embed_scale.to(dev, dt)[:, None])
        x = x + self.pos_embed * (1 if pos_scale is None else pos_scale.to(dev, dt)[:, None])
        mids, ins, outs = [], [], []
        dense_by_layer: dict[int, Tensor] = {}
        for L in range(self.n_layers):
            u = self.ln1[L].apply(x)
            v = torch.einsum("pd,hde->hpe", u, self.W_V[L]) + self.b_V[L][:, None, :]
            z = self.patterns[L] @ v
            a = torch.einsum("hpe,hed->pd", z, self.W_O[L]) + self.b_O[L]
            if self.ln1_post[L] is not None:
                a = self.ln1_post[L].apply(a)
            # parallel blocks: the MLP reads the block input; sequential: the residual after attention
            n = self.ln2[L].apply(x, affine=False) if self.parallel else None
            x = x + a
            mids.append(x)
            if n is None:
                n = self.ln2[L].apply(x, affine=False)
            ins.append(n)
            out = self.errors[L] * es[L][:, None]
            tc = self.transcoders.get(L)
            if tc is not None:
                sl = self.features_in_layer(L)
                dense = torch.zeros(P, tc.cfg.n_latents, device=dev, dtype=tc.W_dec.dtype)
                dense[self.features.pos[sl].to(dev), self.features.latent[sl].to(dev)] = acts[sl].to(dense.dtype)
                dense_by_layer[L] = dense
                decoded = decode_output(self.transcoders, L, dense_by_layer, n.to(tc.W_dec.dtype), sparse=True)
                out = out + decoded.to(x.dtype)
            outs.append(out)
            x = x + out
        return FrozenOutput(torch.stack(mids), torch.stack(ins), torch.stack(outs), self.ln_final.apply(x))

    def logits_at(self, ln_out: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
        """Unembed final-LN outputs: ``ln_out @ W_U + b_U`` (the pre-soft-cap logits)."""
        W_U, b_U = backend.unembed_weights(self.model)
        return ln_out @ W_U + b_U

    def softcap(self, logits: Tensor) -> Tensor:
        """The model's final-logit soft-cap ``c * tanh(z / c)`` (identity when it has none)."""
        c = self.logit_softcap
        return logits if c is None else c * torch.tanh(logits / c)

    # ------------------------------------------------------------------ backward
    @torch.no_grad()
    def vjp(
        self,
        layers: Int[Tensor, " b"],
        positions: Int[Tensor, " b"],
        vectors: Float[Tensor, "b d_model"],
    ) -> Iterator[tuple[int, Tensor]]:
        """Gradients of ``B`` linear read-outs, layer by layer from the top.

        Row ``i`` reads ``vectors[i] . mlp_in[layers[i], positions[i]]``, or, when
        ``layers[i] == n_layers``, ``vectors[i] . final_ln_out[positions[i]]``. Yields
        ``(L, g)`` with ``g = d readout / d resid_post_L`` (which is also the gradient at
        ``mlp_out_L``), shape ``[B, P, d_model]`` with ``P = max(positions) + 1``, for
        ``L`` from the top layer any row needs down to 0, then ``(-1, d / d resid_pre_0)``.
        """
        dev = self.device
        layers, positions = layers.to(dev), positions.to(dev)
        # detached: the pass writes into its temporaries with ``out=`` (test runs wrap this generator
        # in a type checker, outside the ``no_grad`` above)
        vectors = vectors.detach().to(dev, self.embed.dtype)
        B = int(layers.shape[0])
        P = int(positions.max()) + 1
        rows = torch.arange(B, device=dev)
        valid_pos = positions[:, None] >= torch.arange(P, device=dev)[None]  # [B, P]: p <= positions[b]
        at_pos = positions[:, None] == torch.arange(P, device=dev)[None]  # [B, P]: p == positions[b]
        g = torch.zeros(B, P, self.d_model, device=dev, dtype=self.embed.dtype)
        top = int(layers.max())
        fin = layers == self.n_layers
        # single[b]: row b's gradient is (still) non-zero at its own position only (it was injected
        # there and has not been through an attention layer yet)
        single = fin.clone()
        if bool(fin.any()):
            g[rows[fin], positions[fin]] = vectors[fin]
            g = self.ln_final.adjoint(g, inplace=True)
        nonzero = bool(fin.any())
        for L in range(min(top, self.n_layers - 1), -1, -1):
            if nonzero:
                yield L, g
            # below, only fresh temporaries are modified in place: a yielded ``g`` never changes.
            # The norms' adjoints are folded into the matrices before them (:meth:`_folded`):
            # ``h`` and the attention output come out centred (and ``w``-scaled), and one
            # ``addcmul`` with ``1 / scale`` adds them to the residual gradient.
            tc = self.transcoders.get(L)
            sel = layers == L
            h = None  # gradient at mlp_in (skip path + rows injected here), before the 1 / scale
            if nonzero and tc is not None and tc.W_skip is not None:
                above = layers > L  # rows injected above this layer
                live_in = kernels.live_rows(valid_pos & above[:, None] & (~single[:, None] | at_pos))
                h = kernels.rows_matmul(g.reshape(B * P, -1), self._folded("skip", L, g.dtype), live_in, self._mm).reshape(B, P, -1)
            inj = None  # rows injected here with no skip path: (rows, positions, vectors), added in place
            if bool(sel.any()):
                v_in = self.ln2[L].fold(vectors[sel], affine=False)
                if h is None:
                    inj = (rows[sel], positions[sel], v_in)
                else:
                    h[rows[sel], positions[sel]] += v_in
                nonzero = True
            if not nonzero:
                continue
            post = self.ln1_post[L]
            inv1 = self.ln1[L].inv_scale(P, g.dtype)
            W_V_T = self._folded("attn", L, g.dtype)
            if self.parallel:  # resid_post = resid_pre + attn(ln1 resid_pre) + mlp(ln2 resid_pre)
                reads = layers > L  # the attention reads g: rows injected here enter below it
                split = kernels.attention_rows(valid_pos, positions, reads, single)
                out = self._attn_adjoint(L, g, *split, W_V_T=W_V_T, post=post)
                g_new = torch.addcmul(g, out, inv1, out=out)
                if h is not None:
                    g_new.addcmul_(h, self.ln2[L].inv_scale(P, g.dtype))
                elif inj is not None:
                    r, p, v = inj
                    g_new[r, p] += v * self.ln2[L].inv_scale(P, g.dtype)[p]
                g = g_new
                single = (single & ~reads) | sel
                continue
            if h is not None:  # g += ln2^T h
                g = torch.addcmul(g, h, self.ln2[L].inv_scale(P, g.dtype), out=h)
            elif inj is not None:  # only the injected entries change: a copy, not a zero [B, P, d] h
                r, p, v = inj
                g = g.clone()
                g[r, p] += v * self.ln2[L].inv_scale(P, g.dtype)[p]
            single = single | sel
            reads = layers >= L
            split = kernels.attention_rows(valid_pos, positions, reads, single)
            out = self._attn_adjoint(L, g, *split, W_V_T=W_V_T, post=post)
            g = torch.addcmul(g, out, inv1, out=out)
            single = single & ~reads
        yield -1, g

    def _attn_adjoint(
        self,
        L: int,
        g: Tensor,
        live: Tensor | None = None,
        single: tuple[Tensor, Tensor] | None = None,
        W_V_T: Tensor | None = None,
        post: FrozenLN | None = None,
    ) -> Tensor:
        """Adjoint of the frozen attention (OV with cached patterns) as three plain matmuls.

        The gradients are kept transposed, ``[heads * d_head, rows * positions]``: ``W_O``,
        the pattern (one ``[d_head * rows, P] @ [P, P]`` matmul per head) and ``W_V`` then
        follow one another with no permuting copy between them.
        ``live``: flat indices ``b * P + p`` of the (row, position) pairs that can be non-zero
        (:func:`live_rows`); the two ``d_model x d_model`` contractions skip the others, which
        are zero in ``g`` and in the result. ``single = (rows, positions)``: rows whose ``g`` is
        non-zero at that one position only (just injected); for them the result is
        ``sum_h A[h, p, k] (g[p] W_O[h]^T W_V[h]^T)`` at every key ``k``: two matmuls of one
        ``d``-vector per row instead of two per position (rank one in the positions). Rows in
        ``single`` must not be in ``live``. ``W_V_T``: the ``[heads * d_head, d_model]`` read-back
        matrix to use instead of ``W_V^T`` (the transposed pass passes it with the next
        LayerNorm's weight and centring folded in, :meth:`_folded`). ``post``: an attention
        post-norm (Gemma's ``ln1_post``) whose adjoint comes first, ``_attn_adjoint(post.adjoint(g))``;
        without centring (RMSNorm) it is folded in: its weight into ``W_O`` (:meth:`_folded`,
        ``"post"``) and its ``1 / scale`` into the pattern's query rows, so ``g`` is not rescaled
        (a LayerNorm post-norm is applied to ``g`` first). Equal to :meth:`_attn_adjoint_reference`
        (``tests/test_fast_paths.py``).
        """
        if post is not None and post.center:
            g, post = post.adjoint(g), None
        B, P, d = g.shape
        W_O = self.W_O[L].to(g.dtype)
        H, dh = W_O.shape[0], W_O.shape[1]
        A = self.patterns[L][:, :P, :P].to(g.dtype)
        W_O_flat = W_O.reshape(H * dh, d)
        if post is not None:  # M @ (g * w / scale[q]) == (M * w) @ g, then 1 / scale[q] on the pattern's rows
            W_O_flat = self._folded("post", L, g.dtype)
            A = A * post.inv_scale(P, g.dtype)[None]
        if W_V_T is None:
            W_V_T = self.W_V[L].to(g.dtype).permute(0, 2, 1).reshape(H * dh, d)
        flat = g.reshape(B * P, d)
        if live is None:
            gz = self._mm(flat, W_O_flat.T).T.contiguous().view(H, dh * B, P)  # [(h, e), (b, p)]
            gv = kernels.causal_right_matmul(gz, A).view(H * dh, B * P)
            out = self._mm(gv.T, W_V_T).view(B, P, d)
        elif single is not None and not live.numel() and single[0].numel() == B:
            out = None  # every row is rank one: the bmm below writes all of ``out``
        else:
            out = g.new_zeros(B * P, d)
            if live.numel():
                gz = g.new_zeros(H * dh, B * P)
                gz.index_copy_(1, live, self._mm(flat.index_select(0, live), W_O_flat.T).T)
                gv = kernels.causal_right_matmul(gz.view(H, dh * B, P), A).view(H * dh, B * P)
                out.index_copy_(0, live, self._mm(gv.index_select(1, live).T, W_V_T))
            out = out.view(B, P, d)
        if single is not None:
            rows, pos = single
            gz1 = (g[rows, pos] @ W_O_flat.T).reshape(-1, H, dh)  # [n, H, dh]
            # each head's read-back of its value: [H, n, dh] @ [H, dh, d]
            U = torch.bmm(gz1.transpose(0, 1), W_V_T.view(H, dh, d)).transpose(0, 1)  # [n, H, d]
            coef = A[:, pos, :].permute(1, 2, 0)  # [n, P (keys), H]: A[h, pos_n, k]
            if out is None:
                out = torch.bmm(coef, U)  # rows == arange(B)
            else:
                out[rows] = torch.bmm(coef, U)
        return out

    def _folded(self, which: str, L: int, dtype: torch.dtype) -> Tensor:
        """The transposed pass's matrices with the next norm's adjoint folded in
        (:meth:`FrozenLN.fold`), made once per (matrix, layer, dtype) and kept for this prompt:
        ``"attn"``: ``W_V^T`` ``[heads * d_head, d_model]`` folded with ``ln1`` (weight and
        centring); ``"post"``: ``W_O`` ``[heads * d_head, d_model]`` times the attention post-norm's
        weight; ``"skip"``: ``W_skip^T`` folded with ``ln2``'s centring (the transcoder reads
        the normalised input before ``w``). The folded pass equals autograd through the hooked
        model (``tests/test_attribution.py``) and :meth:`FrozenLN.adjoint` on the plain matrices
        (``tests/test_fast_paths.py``)."""
        key = (which, L, dtype)
        M = self._fold_cache.get(key)
        if M is None:
            if which == "attn":
                W_V = self.W_V[L].to(dtype)
                M = self.ln1[L].fold(W_V.permute(0, 2, 1).reshape(-1, W_V.shape[1]))
            elif which == "post":  # W_O [heads * d_head, d_model] with the post-norm's weight (no centring)
                W_O, w = self.W_O[L].to(dtype), self.ln1_post[L].w
                M = W_O.reshape(-1, W_O.shape[-1]) * (1 if w is None else w.to(dtype))
            else:
                M = self.ln2[L].fold(self.transcoders[L].W_skip.detach().T.to(dtype), affine=False)
            self._fold_cache[key] = M = M.contiguous()
        return M

    def _attn_adjoint_reference(self, L: int, g: Tensor) -> Tensor:
        """Plain reference of :meth:`_attn_adjoint` (einsums)."""
        B, P, d = g.shape
        W_O, W_V = self.W_O[L].to(g.dtype), self.W_V[L].to(g.dtype)
        H, dh = W_O.shape[0], W_O.shape[1]
        gz = torch.einsum("bqd,hed->hqbe", g, W_O).reshape(H, P, B * dh)
        A = self.patterns[L][:, :P, :P].to(g.dtype)
        gv = (A.transpose(1, 2) @ gz).reshape(H, P, B, dh)
        return torch.einsum("hkbe,hde->bkd", gv, W_V)
