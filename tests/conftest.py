"""Shared fixtures: tiny random HookedTransformers (GPT-2 style) built offline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:  # TransformerLens 4 has no HookedTransformer: the TL4 CI run uses the bridge tests only
    from transformer_lens import HookedTransformer


def make_tiny_model(
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_mlp: int = 64,
    d_vocab: int = 50,
    n_ctx: int = 16,
    seed: int = 0,
    normalization_type: str = "LN",
    act_fn: str = "gelu",
    model_name: str = "tiny-test",
) -> HookedTransformer:
    """A small GPT-2-style model with random weights (LayerNorm, learned positions, GELU)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn=act_fn,
        normalization_type=normalization_type,
        positional_embedding_type="standard",
        model_name=model_name,
        seed=seed,
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):  # LayerNorm gains: keep near 1 but not exactly
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b") or name.startswith("b_") or ".b_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.eval()
    return model


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the offline GPT-2 tokenizer folder (and any cache) out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TC_CIRCUITS_CACHE", str(tmp_path_factory.mktemp("tc_cache")))
    yield
    mp.undo()


@pytest.fixture
def tiny_model() -> HookedTransformer:
    return make_tiny_model()


@pytest.fixture
def tiny_tokens() -> torch.Tensor:
    return torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(1))
