"""Site <-> hook name, parse errors, model checks and widths."""

from __future__ import annotations

import pytest

from tc_circuits.models.sites import GLOBAL_HOOKS, SITE_KINDS, Site, global_hook, mlp_in, mlp_out, site_dim
from conftest import make_tiny_model


@pytest.mark.parametrize("kind", sorted(SITE_KINDS))
@pytest.mark.parametrize("layer", [0, 1, 12])
def test_round_trip_every_kind(kind: str, layer: int) -> None:
    site = Site(layer, kind)
    name = site.hook_name
    # Independent expectation: the template text with the layer spliced in by hand.
    prefix, suffix = SITE_KINDS[kind].split("{L}")
    assert name == f"{prefix}{layer}{suffix}"
    assert Site.parse(name) == site
    assert Site.parse(site) is site
    assert str(site) == name


def test_known_hook_names() -> None:
    assert Site(3, "mlp_in").hook_name == "blocks.3.ln2.hook_normalized"
    assert Site(3, "mlp_out").hook_name == "blocks.3.hook_mlp_out"
    assert Site.parse("blocks.10.hook_resid_pre") == Site(10, "resid_pre")
    assert mlp_in(2) == Site(2, "mlp_in") and mlp_out(2) == Site(2, "mlp_out")


def test_every_kind_exists_in_a_real_model() -> None:
    model = make_tiny_model()
    for kind in SITE_KINDS:
        if kind in ("ln1_post_scale", "ln2_post_scale"):
            continue  # Gemma post-norms only: checked in tests/test_families.py
        for layer in range(model.cfg.n_layers):
            assert Site(layer, kind).hook_name in model.hook_dict, kind
    for name in GLOBAL_HOOKS.values():
        assert name in model.hook_dict, name


@pytest.mark.parametrize(
    "bad", ["blocks.x.hook_mlp_out", "blocks.0.hook_nothing", "hook_embed", "blocks.-1.hook_mlp_out", ""]
)
def test_parse_error_names_the_string(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        Site.parse(bad)
    assert repr(bad) in str(err.value)


def test_bad_kind_and_layer() -> None:
    with pytest.raises(ValueError, match="'mlp_middle'"):
        Site(0, "mlp_middle")
    for layer in (-1, True):
        with pytest.raises(ValueError, match="non-negative int"):
            Site(layer, "mlp_out")  # type: ignore[arg-type]


def test_check_rejects_layer_out_of_range() -> None:
    model = make_tiny_model(n_layers=2)
    assert Site(1, "mlp_out").check(model) == Site(1, "mlp_out")
    with pytest.raises(ValueError, match=r"layer 2 out of range .* 2 layers"):
        Site(2, "mlp_out").check(model)
    with pytest.raises(ValueError, match="layer 7"):
        Site(7, "resid_pre").check(model)


def test_global_hook() -> None:
    assert global_hook("embed") == "hook_embed"
    assert global_hook("ln_final_scale") == "ln_final.hook_scale"
    with pytest.raises(ValueError, match="'nope'"):
        global_hook("nope")


def test_site_dim_matches_cached_activation_width() -> None:
    model = make_tiny_model(d_model=32, d_mlp=64)
    model.set_use_hook_mlp_in(True)  # blocks.L.hook_mlp_in only fires with this flag
    tokens = make_tokens()
    _, cache = model.run_with_cache(tokens)
    for kind in SITE_KINDS:
        site = Site(1, kind)
        if kind in ("ln1_post_scale", "ln2_post_scale"):
            continue  # Gemma post-norms only
        if kind.startswith("attn_"):
            if kind == "attn_out":
                assert site_dim(model, site) == cache[site.hook_name].shape[-1] == 32
            else:
                with pytest.raises(ValueError, match="no single width"):
                    site_dim(model, site)
            continue
        assert site_dim(model, site) == cache[site.hook_name].shape[-1], kind
    assert site_dim(model, Site(0, "mlp_pre")) == 64
    with pytest.raises(ValueError, match="layer 5"):
        site_dim(model, Site(5, "mlp_in"))


def make_tokens():
    import torch

    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
