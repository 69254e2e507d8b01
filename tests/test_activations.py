"""TopK / ReLU / JumpReLU against references written here."""

from __future__ import annotations

import pytest
import torch

from tc_circuits.coders.activations import ACTIVATIONS, apply_activation, jumprelu, topk, topk_indices


def _pre(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _topk_reference(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Sort each row descending, keep the first k positions, ReLU the kept values."""
    flat = pre.reshape(-1, pre.shape[-1])
    out = torch.zeros_like(flat)
    order = flat.argsort(dim=-1, descending=True)
    for r in range(flat.shape[0]):
        for j in order[r, :k].tolist():
            out[r, j] = max(float(flat[r, j]), 0.0)
    return out.reshape(pre.shape)


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_topk_matches_sort_reference(k: int) -> None:
    pre = _pre(5, 4, 20, seed=k)
    out = topk(pre, k)
    assert torch.equal(out, _topk_reference(pre, k))
    # Exactly k active entries per row when all pre-activations are positive.
    pos = pre.abs() + 0.01
    out_pos = topk(pos, k)
    assert ((out_pos != 0).sum(-1) == k).all()
    kth = pos.sort(-1, descending=True).values[..., k - 1 : k]
    assert torch.equal(out_pos != 0, pos >= kth)
    assert (out >= 0).all()


def test_topk_negative_active_entries_become_zero() -> None:
    pre = torch.tensor([[-1.0, -2.0, -3.0, 0.5], [3.0, -0.1, 2.0, 1.0]])
    assert torch.equal(topk(pre, 2), torch.tensor([[0.0, 0.0, 0.0, 0.5], [3.0, 0.0, 2.0, 0.0]]))
    values, indices = topk_indices(pre, 2)
    for r in range(2):
        got = sorted(zip(indices[r].tolist(), values[r].tolist()))
        assert got == sorted(
            (j, max(float(pre[r, j]), 0.0)) for j in pre[r].argsort(descending=True)[:2].tolist()
        )


def test_topk_gradient_flows_to_positive_active_entries_only() -> None:
    pre = _pre(6, 10, seed=3).requires_grad_(True)
    topk(pre, 4).sum().backward()
    expected = (_topk_reference(pre.detach(), 4) > 0).float()
    assert torch.equal(pre.grad, expected)


@pytest.mark.parametrize("k", [0, 11, -1])
def test_topk_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match=f"got {k}"):
        topk(_pre(2, 10), k)
    with pytest.raises(ValueError, match=f"got {k}"):
        topk_indices(_pre(2, 10), k)


def test_relu() -> None:
    pre = _pre(3, 8)
    out = apply_activation("relu", pre)
    assert torch.equal(out, torch.where(pre > 0, pre, torch.zeros_like(pre)))


def test_jumprelu_forward() -> None:
    pre = _pre(4, 3, 6)
    theta = torch.tensor([0.0, 0.1, 0.5, -0.2, 1.0, 2.0])
    out = jumprelu(pre, theta)
    expected = torch.where(pre > theta, pre, torch.zeros_like(pre))
    assert torch.equal(out, expected)
    assert torch.equal(apply_activation("jumprelu", pre, threshold=theta), expected)


def test_jumprelu_gradients_hand_worked() -> None:
    # theta = (0.5, 1.0), bandwidth 0.2: the rectangle kernel is 1/0.2 = 5 where |z - theta| < 0.1.
    theta = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([[0.55, 0.95], [0.45, 2.0], [0.7, 1.05]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    (jumprelu(z, theta, bandwidth=0.2) * w).sum().backward()
    # In the kernel: column 0 rows 0,1 (weights 1, 3); column 1 rows 0,2 (weights 2, 6).
    # d/dtheta = -theta * 5 * sum of weights: -0.5*5*4 = -10, -1.0*5*8 = -40.
    assert torch.allclose(theta.grad, torch.tensor([-10.0, -40.0], dtype=torch.float64))
    # d/dz is the weight times the mask z > theta (no straight-through term for z).
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(z.grad, w * mask)


def test_jumprelu_threshold_gradient_sums_over_leading_dims() -> None:
    gen = torch.Generator().manual_seed(5)
    z = torch.rand(3, 4, 5, generator=gen, dtype=torch.float64)
    theta = torch.rand(5, generator=gen, dtype=torch.float64).requires_grad_(True)
    g = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    bw = 0.3
    (jumprelu(z, theta, bw) * g).sum().backward()
    kernel = ((z - theta.detach()).abs() < bw / 2).double() / bw
    expected = (-theta.detach() * kernel * g).sum((0, 1))
    assert torch.allclose(theta.grad, expected)


def test_apply_activation_errors() -> None:
    pre = _pre(2, 4)
    assert ACTIVATIONS == ("topk", "relu", "jumprelu")
    with pytest.raises(ValueError, match="'topk' needs k"):
        apply_activation("topk", pre)
    with pytest.raises(ValueError, match="'jumprelu' needs a threshold"):
        apply_activation("jumprelu", pre)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        apply_activation("gelu", pre)
    assert torch.equal(apply_activation("topk", pre, k=2), _topk_reference(pre, 2))
