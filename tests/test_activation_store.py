"""ActivationStore: yields exactly model.run_with_cache's pairs, one truncated forward per batch."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from tc_circuits.training.activation_store import ActivationStore
from tc_circuits.training.data import as_token_factory
from tc_circuits.models.sites import Site, mlp_in, mlp_out


def _tokens(n_rows=12, seq=8, seed=2):
    return torch.randint(0, 50, (n_rows, seq), generator=torch.Generator().manual_seed(seed))


def _sorted_rows(t: torch.Tensor) -> torch.Tensor:
    rows, counts = torch.unique(t, dim=0, return_counts=True)
    return torch.repeat_interleave(rows, counts, dim=0)


PAIRS = {0: (mlp_in(0), mlp_out(0)), 1: (mlp_in(1), mlp_out(1)), "sae1": (mlp_out(1), mlp_out(1))}


@pytest.mark.parametrize("exclude_bos", [True, False])
def test_pairs_equal_run_with_cache(exclude_bos):
    model = make_tiny_model(n_layers=3)
    tokens = _tokens()
    seq = tokens.shape[1] - (1 if exclude_bos else 0)
    n = tokens.shape[0] * seq
    store = ActivationStore(
        model, PAIRS, as_token_factory(tokens, batch_size=4), batch_size=n // 6,
        buffer_tokens=n, exclude_bos=exclude_bos, seed=3,
    )
    batches = [next(store) for _ in range(6)]  # exactly one fill
    _, cache = model.run_with_cache(tokens)
    for key, (i, o) in PAIRS.items():
        xs = torch.cat([b[key].x for b in batches])
        ys = torch.cat([b[key].y for b in batches])
        ref_x, ref_y = cache[i.hook_name], cache[o.hook_name]
        if exclude_bos:
            ref_x, ref_y = ref_x[:, 1:], ref_y[:, 1:]
        ref = torch.cat([ref_x.reshape(n, -1), ref_y.reshape(n, -1)], dim=1)
        got = torch.cat([xs, ys], dim=1)
        assert torch.equal(_sorted_rows(got), _sorted_rows(ref))  # same pairs, exactly
    # shuffled: the first batch is not the first rows in order
    assert not torch.equal(batches[0][0].y, cache["blocks.0.hook_mlp_out"][:, 1 if exclude_bos else 0:].reshape(n, -1)[: n // 6])


def test_one_truncated_forward_with_only_needed_hooks():
    model = make_tiny_model(n_layers=3)
    tokens = _tokens()
    calls = []
    original = model.run_with_cache

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    model.run_with_cache = spy  # instance attribute, removed below
    fired = []
    try:
        hooks = [(f"blocks.{i}.hook_resid_pre", lambda t, hook: fired.append(hook.name)) for i in (1, 2)]
        with model.hooks(fwd_hooks=hooks):
            store = ActivationStore(
                model, {0: (mlp_in(0), mlp_out(0)), 1: (mlp_in(1), mlp_out(1))},
                as_token_factory(tokens, batch_size=4), batch_size=7, buffer_tokens=12 * 7,
            )
            next(store)
    finally:
        del model.run_with_cache
    assert len(calls) == 3  # 12 rows / 4 per batch: one forward per token batch, both layers
    assert calls[0]["stop_at_layer"] == 2
    assert sorted(calls[0]["names_filter"]) == sorted(
        [mlp_in(0).hook_name, mlp_out(0).hook_name, mlp_in(1).hook_name, mlp_out(1).hook_name]
    )
    assert fired == ["blocks.1.hook_resid_pre"] * 3  # block 1 ran, block 2 never ran
    assert len(model.hook_dict["blocks.2.hook_resid_pre"].fwd_hooks) == 0


def test_shuffle_is_seeded_and_resume_matches():
    model = make_tiny_model()
    tokens = _tokens(n_rows=16)
    f = as_token_factory(tokens, batch_size=4)
    kw = dict(batch_size=10, buffer_tokens=60, exclude_bos=True)
    a = ActivationStore(model, PAIRS_2, f, seed=1, **kw)
    b = ActivationStore(model, PAIRS_2, f, seed=1, **kw)
    c = ActivationStore(model, PAIRS_2, f, seed=2, **kw)
    seq_a = [next(a)[0].y for _ in range(5)]
    seq_b = [next(b)[0].y for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(seq_a, seq_b))
    assert not torch.equal(seq_a[0], next(c)[0].y)
    state = a.state_dict()
    rest_a = [next(a)[1].x for _ in range(9)]  # crosses fills and a restart of the stream
    fresh = ActivationStore(model, PAIRS_2, f, seed=1, **kw)
    fresh.load_state_dict(state)
    rest_fresh = [next(fresh)[1].x for _ in range(9)]
    assert all(torch.equal(x, y) for x, y in zip(rest_a, rest_fresh))


PAIRS_2 = {0: (mlp_in(0), mlp_out(0)), 1: (mlp_in(1), mlp_out(1))}


def test_nan_activations_raise_naming_the_hook():
    model = make_tiny_model()
    with torch.no_grad():
        model.blocks[1].mlp.W_out[0, 0] = float("nan")
    store = ActivationStore(model, PAIRS_2, as_token_factory(_tokens(), batch_size=4), batch_size=4, buffer_tokens=8)
    with pytest.raises(ValueError, match=r"NaN/inf.*blocks\.1\.hook_mlp_out"):
        next(store)


def test_bad_arguments():
    model = make_tiny_model()
    f = as_token_factory(_tokens(), batch_size=4)
    with pytest.raises(ValueError, match="buffer_tokens=4"):
        ActivationStore(model, PAIRS_2, f, batch_size=8, buffer_tokens=4)
    with pytest.raises(ValueError, match="layer 5"):
        ActivationStore(model, {5: (Site(5, "mlp_in"), Site(5, "mlp_out"))}, f, batch_size=4, buffer_tokens=8)
    empty = ActivationStore(model, PAIRS_2, lambda: iter([]), batch_size=4, buffer_tokens=8)
    with pytest.raises(ValueError, match="no batches"):
        next(empty)
    outs = ActivationStore(model, PAIRS_2, f, batch_size=4, buffer_tokens=8).buffer_outputs()
    assert set(outs) == {0, 1} and outs[0].shape[1] == 32


def _store(model, tokens, prefetch):
    return ActivationStore(
        model, PAIRS, as_token_factory(tokens, batch_size=3), batch_size=5,
        buffer_tokens=20, seed=4, prefetch=prefetch,
    )


def test_prefetch_gives_the_same_batches_and_state():
    """The background fill changes nothing: same batches, same resumable state at every step,
    across several fills and epochs of the token stream."""
    # two copies of one model: a store's background fill must be the only user of its model
    tokens = _tokens(n_rows=9)
    plain, fetched = _store(make_tiny_model(n_layers=3), tokens, False), _store(make_tiny_model(n_layers=3), tokens, True)
    for step in range(40):
        a, b = next(plain), next(fetched)
        for key in PAIRS:
            assert torch.equal(a[key].x, b[key].x) and torch.equal(a[key].y, b[key].y), (step, key)
        assert plain.state_dict() == fetched.state_dict(), step
    fetched.close()


def test_prefetch_resume_and_close_keep_the_stream_position():
    model = make_tiny_model(n_layers=3)
    tokens = _tokens(n_rows=9)
    ref = _store(model, tokens, False)
    ref_batches = [next(ref) for _ in range(30)]  # before any background fill uses the model
    store = _store(model, tokens, True)
    for _ in range(11):
        next(store)
    state = store.state_dict()
    store.close()  # stops the background fill; position kept
    assert store.state_dict() == state
    for i in range(11, 16):
        assert torch.equal(next(store)[0].x, ref_batches[i][0].x), i
    state = store.state_dict()
    store.close()
    resumed = _store(model, tokens, True)
    resumed.load_state_dict(state)
    for i in range(16, 30):
        assert torch.equal(next(resumed)[1].y, ref_batches[i][1].y), i
    resumed.close()
    # the model has no hooks left after close
    assert all(not m._forward_hooks for m in model.modules())


def test_prefetch_errors_surface_in_the_consumer():
    model = make_tiny_model(n_layers=2)
    bad = {0: (mlp_in(0), mlp_out(0))}
    calls = {"n": 0}

    def factory():
        for i in range(100):
            calls["n"] += 1
            yield torch.full((2, 6), 60 if i >= 4 else 1)  # id 60 is outside the 50-token vocabulary

    store = ActivationStore(model, bad, factory, batch_size=5, buffer_tokens=20, prefetch=True)
    next(store)  # first fill: 4 good batches; the prefetched second fill fails in its thread
    with pytest.raises(Exception):
        for _ in range(10):
            next(store)
    store.close()
