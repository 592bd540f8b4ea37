"""The masked-softmax / pooling kernels against a naive per-text loop."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_attnprobe import RaggedArray
from sklearn_attnprobe._kernels import (
    attention_pool,
    last_token_pool,
    masked_softmax,
    mean_pool,
)
from sklearn_attnprobe._packing import length_buckets, pack


def naive_attention(text, query, slope, position):
    """The seed's pseudocode for one text, values left out: (H, d), (T, H)."""
    T = text.shape[0]
    logits = text @ query  # (T, H)
    if position is not None:
        t = torch.arange(T, dtype=text.dtype)
        p = t - (T - 1) if position == "last" else -t
        logits = logits + p[:, None] * slope[None, :]
    weights = torch.softmax(logits, dim=0)
    return weights.T @ text, weights


def random_block(rng, lengths, d, dtype=torch.float64):
    texts = [rng.standard_normal((n, d)) for n in lengths]
    X = RaggedArray.from_list(texts)
    batch = pack(X, dtype, torch.device("cpu"))
    return texts, batch


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=9),
    d=st.integers(1, 6),
    H=st.integers(1, 4),
    position=st.sampled_from(["last", "first", None]),
    seed=st.integers(0, 2**16),
)
def test_attention_pool_matches_naive_loop(lengths, d, H, position, seed):
    rng = np.random.default_rng(seed)
    texts, batch = random_block(rng, lengths, d)
    query = torch.as_tensor(rng.standard_normal((d, H)))
    slope = torch.as_tensor(rng.standard_normal(H))
    for block in batch.blocks:
        pooled, weights = attention_pool(block.x, block.mask, block.lengths, query,
                                         slope, position)
        for j, i in enumerate(block.index):
            text = torch.as_tensor(texts[i])
            exp_pooled, exp_w = naive_attention(text, query, slope, position)
            T = len(texts[i])
            torch.testing.assert_close(pooled[j], exp_pooled)
            torch.testing.assert_close(weights[j, :, :T], exp_w.T)
            assert torch.all(weights[j, :, T:] == 0)


def test_pool_gradcheck_float64():
    rng = np.random.default_rng(0)
    texts, batch = random_block(rng, [1, 3, 4, 7, 7], 3)
    for block in batch.blocks:
        x = block.x.clone().requires_grad_()
        query = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
        slope = torch.randn(2, dtype=torch.float64, requires_grad=True)
        for position in ("last", "first", None):
            def f(x, q, s, position=position):
                return attention_pool(x, block.mask, block.lengths, q, s, position)
            assert torch.autograd.gradcheck(f, (x, query, slope))


def test_softmax_stable_for_huge_logits_and_half_precision():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logits = torch.tensor([[[1e4, -1e4, 5.0]], [[3e4, 0.0, 0.0]]])
    w = masked_softmax(logits, mask)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[:, 0].sum(-1), torch.ones(2))
    assert w[0, 0, 0] == 1 and w[0, 0, 2] == 0 and w[1, 0, 0] == 1
    half = masked_softmax(torch.tensor([[[60000.0, 60000.0, 1.0]]], dtype=torch.float16),
                          torch.tensor([[True, True, True]]))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), torch.tensor([[[0.5, 0.5, 0.0]]]))


def test_half_precision_attention_pool_close_to_float32():
    rng = np.random.default_rng(1)
    _, batch32 = random_block(rng, [5, 9, 16], 8, torch.float32)
    q = torch.randn(8, 2) * 3
    s = torch.randn(2)
    for block in batch32.blocks:
        p32, _ = attention_pool(block.x, block.mask, block.lengths, q, s, "last")
        p16, w16 = attention_pool(block.x.bfloat16(), block.mask, block.lengths,
                                  q.bfloat16(), s.bfloat16(), "last")
        assert torch.isfinite(p16).all()
        torch.testing.assert_close(p16.float(), p32, atol=0.1, rtol=0.05)


def test_mean_and_last_pool():
    rng = np.random.default_rng(2)
    texts, batch = random_block(rng, [1, 2, 5, 5, 8], 4)
    for block in batch.blocks:
        means = mean_pool(block.x, block.lengths)
        lasts = last_token_pool(block.x, block.lengths)
        for j, i in enumerate(block.index):
            np.testing.assert_allclose(means[j].numpy(), texts[i].mean(0))
            np.testing.assert_array_equal(lasts[j].numpy(), texts[i][-1])


def test_zero_query_and_slope_is_mean_pooling():
    rng = np.random.default_rng(3)
    texts, batch = random_block(rng, [2, 3, 9], 5)
    for block in batch.blocks:
        pooled, _ = attention_pool(block.x, block.mask, block.lengths,
                                   torch.zeros(5, 3, dtype=torch.float64),
                                   torch.zeros(3, dtype=torch.float64), "last")
        expected = mean_pool(block.x, block.lengths)
        torch.testing.assert_close(pooled, expected[:, None, :].expand(-1, 3, -1))


@pytest.mark.parametrize("position, anchor", [("last", -1), ("first", 0)])
def test_large_slope_puts_all_weight_on_anchor(position, anchor):
    rng = np.random.default_rng(4)
    texts, batch = random_block(rng, [1, 4, 6, 30], 3)
    query = torch.as_tensor(rng.standard_normal((3, 1)))
    for block in batch.blocks:
        pooled, _ = attention_pool(block.x, block.mask, block.lengths, query,
                                   torch.tensor([1e3], dtype=torch.float64), position)
        for j, i in enumerate(block.index):
            np.testing.assert_allclose(pooled[j, 0].numpy(), texts[i][anchor])


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=300),
       d=st.sampled_from([1, 8, 512]))
def test_length_buckets_partition_and_bound_padding(lengths, d):
    lengths = np.array(lengths)
    buckets = length_buckets(lengths, 1.25, d)
    allidx = np.concatenate(buckets)
    assert sorted(allidx.tolist()) == list(range(len(lengths)))
    for lo, hi in zip(buckets, buckets[1:]):  # buckets are runs of sorted lengths
        assert lengths[lo].max() <= lengths[hi].min()
    padded = sum(len(b) * lengths[b].max() for b in buckets)
    n_bins = len(np.unique(np.floor(np.log(lengths) / np.log(1.25))))
    # geometric bins pad at most 25%; each merge of two bins adds less padding
    # than one block's overhead
    assert padded * d <= 1.25 * lengths.sum() * d + (n_bins - len(buckets)) * (1 << 16)


def test_flush_denormal_context_flushes_then_restores():
    from sklearn_attnprobe._training import flush_denormal

    sub = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal numbers")
    with flush_denormal():
        assert (sub * 1.0).item() == 0.0
    assert (sub * 1.0).item() > 0.0


@pytest.mark.parametrize("position", ["last", None])
def test_binary_stack_direct_form_equals_pooled_form(position, monkeypatch):
    """Wide binary stacks train through per-token values (one GEMM of query and
    value columns); logits and gradients equal the pooled form's."""
    from sklearn_attnprobe import _modules
    from sklearn_attnprobe._modules import StackedAttentionProbeModule
    from sklearn_attnprobe._packing import pack
    from sklearn_attnprobe._ragged import RaggedArray

    rng = np.random.default_rng(3)
    X = RaggedArray.from_list([rng.standard_normal((int(L), 6)) for L in
                               rng.integers(1, 30, size=23)])
    batch = pack(X, torch.float64, "cpu")
    module = StackedAttentionProbeModule(
        8, 6, 4, 1, position=position, dtype=torch.float64,
        generators=[torch.Generator().manual_seed(i) for i in range(8)])
    with torch.no_grad():
        module.query.normal_(0, 0.7)
        module.slope.uniform_(-0.3, 0.3)
    assert all(module._direct(b) for b in batch.blocks)  # 32 heads >= 32

    def run():
        module.zero_grad()
        out = module(batch)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in module.named_parameters()
                              if p.grad is not None}

    direct, g_direct = run()
    monkeypatch.setattr(_modules, "DIRECT_MIN_HEADS", 10**6)
    assert not any(module._direct(b) for b in batch.blocks)
    pooled, g_pooled = run()
    assert direct.shape == (len(X), 8, 1)
    torch.testing.assert_close(direct, pooled, rtol=1e-10, atol=1e-12)
    assert g_direct.keys() == g_pooled.keys()
    for name in g_pooled:
        torch.testing.assert_close(g_direct[name], g_pooled[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("a_shape, b_shape", [((7, 30), (30, 3)), ((4, 7, 30), (4, 30, 1))])
def test_thin_matmul_matches_matmul_and_its_gradients(a_shape, b_shape):
    from sklearn_attnprobe._modules import thin_matmul

    g = torch.Generator().manual_seed(0)
    a = torch.randn(a_shape, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(b_shape, dtype=torch.float64, generator=g, requires_grad=True)
    torch.testing.assert_close(thin_matmul(a, b), a @ b)
    assert torch.autograd.gradcheck(thin_matmul, (a, b))
    # one operand frozen: its gradient is not asked for
    frozen = b.detach()
    thin_matmul(a, frozen).sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(a_shape[:-1] + b_shape[-1:],
                                                  dtype=torch.float64) @ frozen.mT)
