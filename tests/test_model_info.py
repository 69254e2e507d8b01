"""Weight-processing flags read off the model, and the checkpoint signature."""

from __future__ import annotations

import pytest

from conftest import make_tiny_model
from tc_circuits.models.model_info import PROCESSING_KEYS, model_signature, weight_processing

ALL_FALSE = dict.fromkeys(PROCESSING_KEYS, False)
ALL_TRUE = dict.fromkeys(PROCESSING_KEYS, True)


def _max_row_mean(w) -> float:
    """Independent check of centering: largest |mean over the last axis| relative to |w|."""
    return float(w.detach().mean(-1).abs().max() / w.detach().abs().mean())


def test_raw_model_all_false() -> None:
    model = make_tiny_model()
    assert weight_processing(model) == ALL_FALSE
    assert _max_row_mean(model.W_E) > 1e-2 and _max_row_mean(model.W_U) > 1e-2


def test_processed_model_all_true() -> None:
    model = make_tiny_model()
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert weight_processing(model) == ALL_TRUE
    for w in (model.W_E, model.W_pos, model.W_O, model.W_out, model.W_U):
        assert _max_row_mean(w) < 1e-5


@pytest.mark.parametrize(
    "flags",
    [
        dict(fold_ln=True, center_writing_weights=False, center_unembed=False),
        dict(fold_ln=False, center_writing_weights=True, center_unembed=False),
        dict(fold_ln=False, center_writing_weights=False, center_unembed=True),
        dict(fold_ln=True, center_writing_weights=False, center_unembed=True),
    ],
)
def test_each_flag_read_separately(flags: dict) -> None:
    model = make_tiny_model()
    model.process_weights_(**flags)
    assert weight_processing(model) == flags


@pytest.mark.parametrize("norm, folded", [("LNPre", True), ("RMSPre", True), ("RMS", False)])
def test_fold_ln_from_normalization_type(norm: str, folded: bool) -> None:
    assert weight_processing(make_tiny_model(normalization_type=norm))["fold_ln"] is folded


def test_model_signature() -> None:
    model = make_tiny_model(n_layers=3, d_model=24, n_heads=4, d_vocab=37, model_name="sig-test")
    assert model_signature(model) == {
        "model_name": "sig-test",
        "n_layers": 3,
        "d_model": 24,
        "d_vocab": 37,
        "weight_processing": ALL_FALSE,
    }


def test_flags_cached_until_weights_change(monkeypatch) -> None:
    import torch

    import tc_circuits.models.model_info as mi

    calls = []
    real = mi._centered
    monkeypatch.setattr(mi, "_centered", lambda ws, dim: calls.append(len(ws)) or real(ws, dim))
    model = make_tiny_model()
    assert weight_processing(model) == ALL_FALSE
    n = len(calls)
    assert n > 0
    assert weight_processing(model) == ALL_FALSE
    assert len(calls) == n  # second call: served from the cache, no scan
    # an in-place edit of W_U must invalidate the cache
    with torch.no_grad():
        model.unembed.W_U -= model.unembed.W_U.mean(-1, keepdim=True)
    assert weight_processing(model)["center_unembed"] is True
    assert len(calls) > n
    # process_weights_ (replaces / edits the writing weights) is seen too
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert weight_processing(model) == ALL_TRUE
    # a returned dict is a copy: mutating it does not poison the cache
    weight_processing(model)["fold_ln"] = False
    assert weight_processing(model) == ALL_TRUE


def test_flags_of_a_model_built_in_inference_mode() -> None:
    """Inference-mode weights have no version counter: the flags are computed, not cached."""
    import torch

    with torch.inference_mode():
        model = make_tiny_model()
    assert model.unembed.W_U.is_inference()
    assert weight_processing(model) == ALL_FALSE
    assert weight_processing(model) == ALL_FALSE
    assert model_signature(model)["weight_processing"] == ALL_FALSE
