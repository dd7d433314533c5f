"""CSR GATv2 (model.sparse_gat) vs PyG's GATv2Conv, and the 15-bit dropout mask (model.grn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.nn import GATv2Conv

from atft_core.model import gat as gat_module
from atft_core.model import sparse_gat
from atft_core.model.gat import GraphFusion
from atft_core.model.grn import Dropout, keep_mask
from atft_core.model.sparse_gat import EdgeCSR, SparseGATv2Conv


def random_graph(n: int, e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed edges, no duplicates: some self loops (removed and re-added
    by the layer), some nodes without incoming edges, asymmetric pairs, random [rho, same]."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=g)
    dst = torch.randint(0, n - 3, (e,), generator=g)  # the last 3 nodes get only their self loop
    src[:3] = dst[:3]  # explicit self loops in the input
    key = torch.unique(dst * n + src)  # no duplicate edges (PyG's sum would count them twice)
    ei = torch.stack([key % n, key // n])
    ea = torch.stack([torch.rand(ei.shape[1], generator=g) * 2 - 1,
                      (torch.rand(ei.shape[1], generator=g) < 0.3).float()], 1)
    perm = torch.randperm(ei.shape[1], generator=g)  # any input order
    return ei[:, perm], ea[perm]


@pytest.mark.parametrize("d,heads", [(8, 2), (32, 4)])
def test_sparse_gatv2_equals_pyg_gatv2conv(d, heads):
    """sparse_forward == GATv2Conv.forward (the parent class's code) on the same parameters:
    outputs and the gradients of the input and of every parameter."""
    torch.manual_seed(d)
    conv = SparseGATv2Conv(d, d, heads=heads, concat=False, dropout=0.0, edge_dim=2,
                           add_self_loops=True, fill_value="mean")
    torch.nn.init.normal_(conv.bias)  # PyG initialises it to 0: make its gradient path visible
    assert conv.supports_sparse()
    n = 60
    ei, ea = random_graph(n, 400, seed=d)
    x = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(n, d)
    params = [x, *conv.parameters()]

    ref = GATv2Conv.forward(conv, x, ei, ea)
    got = conv.sparse_forward(x, EdgeCSR(ei, ea, n))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    want = torch.autograd.grad((ref * weight).sum(), params)
    have = torch.autograd.grad((got * weight).sum(), params)
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_csr_products_pass_gradcheck():
    """The two hand-written backwards against finite differences (float64)."""
    n, heads, c = 9, 2, 3
    ei, ea = random_graph(n, 30, seed=3)
    g = EdgeCSR(ei, ea.double(), n)
    alpha = torch.rand(g.num_edges, heads, dtype=torch.float64, requires_grad=True)
    x = torch.randn(heads, n, c, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sparse_gat._HeadSpMM.apply(a, b, g), (alpha, x))
    a = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: sparse_gat._EdgeSum.apply(u, v, g), (a, b))


def test_edge_csr_adds_mean_self_loops_and_sorts_by_target():
    ei = torch.tensor([[0, 1, 2, 2], [1, 0, 1, 2]])  # (2 -> 2) is an input self loop: replaced
    ea = torch.tensor([[0.5, 1.0], [0.1, 0.0], [0.3, 1.0], [9.0, 9.0]])
    g = EdgeCSR(ei, ea, 3)
    assert g.dst.tolist() == [0, 0, 1, 1, 1, 2]
    assert g.src.tolist() == [0, 1, 0, 1, 2, 2]
    assert g.ptr.tolist() == [0, 2, 5, 6]
    # node 1's loop: mean of its incoming [0.5, 1.0] and [0.3, 1.0]; node 2 has none: 0
    torch.testing.assert_close(g.edge_attr[3], torch.tensor([0.4, 1.0]))
    torch.testing.assert_close(g.edge_attr[5], torch.tensor([0.0, 0.0]))
    assert sorted(g.src[g.by_src].tolist()) == g.src[g.by_src].tolist()


def test_graph_fusion_takes_the_csr_path_on_cpu_fp32_and_matches_pyg(monkeypatch):
    torch.manual_seed(0)
    fusion = GraphFusion(16, 4, 2, 2, dropout=0.0, n_inputs=5)
    n = 50
    ei, ea = random_graph(n, 300, seed=1)
    h, x_last = torch.randn(n, 16), torch.randn(n, 5)
    calls = []
    real = sparse_gat._HeadSpMM.apply
    monkeypatch.setattr(sparse_gat._HeadSpMM, "apply", lambda *a: calls.append(1) or real(*a))
    got = fusion(h, ei, ea, x_last)
    assert len(calls) == 2  # both layers on CSR
    monkeypatch.setattr(gat_module, "cpu_fp32", lambda x: False)  # as on a GPU or under autocast
    ref = fusion(h, ei, ea, x_last)
    assert len(calls) == 2  # PyG's path this time
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_keep_mask_is_the_documented_draw_and_unbiased():
    """The mask equals its definition rebuilt in numpy from the same generator state, keeps
    1 - p' of the entries in every int16 lane, and dropout preserves the mean."""
    p, shape = 0.1, (1000, 401)  # numel not a multiple of 4
    torch.manual_seed(7)
    keep, scale = keep_mask(shape, p)
    torch.manual_seed(7)
    words = torch.empty((keep.numel() + 3) // 4, dtype=torch.int64).random_().numpy()
    lanes = words.view(np.int16)[: keep.numel()].reshape(shape) & 0x7FFF
    cut = round(p * 32768)
    np.testing.assert_array_equal(keep.numpy(), lanes >= cut)
    assert scale == pytest.approx(1 / (1 - cut / 32768))
    flat = keep.flatten()[: keep.numel() // 4 * 4].view(-1, 4).float()
    rate, sd = 1 - cut / 32768, np.sqrt(0.09 / flat.shape[0])
    for lane in range(4):  # the top lane has a zero sign bit: masked, so it keeps like the others
        assert abs(flat[:, lane].mean().item() - rate) < 5 * sd
    x = torch.ones(2_000_000)
    drop = Dropout(p).train()
    assert abs(drop(x).mean().item() - 1.0) < 5 * np.sqrt(p / (1 - p) / x.numel())


def test_dropout_eval_identity_training_mask_and_fallbacks():
    drop = Dropout(0.3)
    x = torch.randn(64, 33, requires_grad=True)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - round(0.3 * 32768) / 32768))
    assert 0.6 < kept.float().mean().item() < 0.8
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.float() / (1 - round(0.3 * 32768) / 32768))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    xb = torch.randn(64, 33, dtype=torch.bfloat16)  # not fp32: nn.Dropout's own kernel
    torch.manual_seed(1)
    got = Dropout(0.3).train()(xb)
    torch.manual_seed(1)
    torch.testing.assert_close(got, torch.nn.functional.dropout(xb, 0.3, True))


def test_csr_path_is_reproducible_in_training():
    """Same seed, same output and gradient, bit for bit (resume and DDP equivalence rely on it)."""
    torch.manual_seed(0)
    fusion = GraphFusion(32, 4, 2, 2, dropout=0.1, n_inputs=5).train()
    ei, ea = random_graph(300, 3000, seed=2)
    h, x_last = torch.randn(300, 32, requires_grad=True), torch.randn(300, 5)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        y = fusion(h, ei, ea, x_last)
        runs.append((y, *torch.autograd.grad(y.square().sum(), [h, *fusion.parameters()])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
