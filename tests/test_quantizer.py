"""Residual VQ against a frozen codebook, and the multi-view encoder around it."""

import pytest
import torch
import torch.nn.functional as F

from dre_pipeline.model import quantizer as quantizer_module
from dre_pipeline.hardware import native_bf16
from dre_pipeline.model.gnn import MultiViewSAGE, StageOneModel
from dre_pipeline.model.quantizer import ResidualVQ, first_argmax, perplexity, search_dtype, straight_through_words


def codebook(m=64, d=16, seed=0):
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed))


def test_residual_norm_shrinks_with_each_code():
    cb = codebook(m=256, d=64)
    words = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(i))[:4] for i in range(50)])
    h = cb[words].sum(1)  # each view is a sum of four words
    vq = ResidualVQ(cb, num_codes=4)
    out = vq(h)
    norms = vq.residual_norms(h, out.codes)
    assert norms.shape == (50, 5)
    assert torch.all(norms[:, 1:] < norms[:, :-1])
    assert norms[:, -1].max() < 1e-3  # four codes explain it fully
    assert torch.equal(out.codes.sort(1).values, words.sort(1).values)  # and recover its words


def test_quantized_view_is_the_sum_of_code_words():
    cb = codebook()
    h = torch.randn(30, 16)
    out = ResidualVQ(cb, num_codes=3)(h)
    assert torch.allclose(out.z, cb[out.codes].sum(1), atol=1e-5)


def test_quantized_view_sums_the_words_exactly_as_gathering_them_level_by_level():
    # z_hat is one embedding_bag: the same fp32 sums, in the same order, as K row gathers added to zeros
    cb = codebook(m=512, d=96)
    h = torch.randn(300, 96, requires_grad=True)
    out = ResidualVQ(cb, num_codes=4)(h)
    z_hat = torch.zeros(300, 96)
    for k in range(4):
        z_hat += cb.index_select(0, out.codes[:, k])
    assert torch.equal(out.z.detach(), (h + (z_hat - h)).detach())
    assert torch.equal(out.commitment, F.mse_loss(h, z_hat))


def test_first_code_is_the_most_cosine_similar_word():
    cb = codebook()
    h = cb[[3, 17, 42]] * torch.tensor([[2.0], [0.5], [7.0]])  # scaled copies of codebook words
    assert ResidualVQ(cb, num_codes=2)(h).codes[:, 0].tolist() == [3, 17, 42]


def test_codes_are_deterministic():
    h = torch.randn(50, 16)
    vq = ResidualVQ(codebook(), num_codes=4)
    assert torch.equal(vq(h).codes, vq(h).codes)


def test_straight_through_output_equals_quantized_and_passes_gradient():
    h = torch.randn(10, 16, requires_grad=True)
    out = ResidualVQ(codebook(), num_codes=3)(h)
    out.z.sum().backward()
    assert torch.allclose(h.grad, torch.ones_like(h))  # identity gradient through the STE


def test_straight_through_words_are_llm_embeddings_with_gnn_gradient():
    cb = codebook()
    h = torch.randn(4, 16, requires_grad=True)
    codes = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    words = straight_through_words(h, codes, cb)
    assert torch.allclose(words, cb[codes])
    words.sum().backward()
    assert torch.allclose(h.grad, torch.full_like(h, 2.0))  # two code positions per node


@pytest.mark.parametrize("capability, avx512_bf16, amx, native", [
    ("AVX2", True, True, False),  # ATen dispatches AVX2 kernels: bf16 products are emulated
    ("AVX512", False, False, False),  # AVX-512 without the BF16 extension
    ("AVX512", True, False, True),
    ("AVX512", False, True, True),  # AMX tiles multiply bf16
    ("DEFAULT", True, True, False),
])
def test_search_precision_follows_cpu_capability(monkeypatch, capability, avx512_bf16, amx, native):
    from dre_pipeline.pipeline.placement import compute_dtype

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is native
    expected = torch.bfloat16 if native else torch.float32
    assert search_dtype(cpu) == expected
    assert compute_dtype(cpu) == expected  # stage two's LLM under --precision auto: the search's choice
    assert compute_dtype(cpu, "bf16") == torch.bfloat16
    vq = ResidualVQ(codebook(), num_codes=2)
    vq(torch.randn(5, 16))
    assert list(vq._tables) == [(cpu, expected)]  # the path taken


def reference_search(cb: torch.Tensor, h: torch.Tensor, k: int) -> tuple:
    """Direct float64 search: codes and, per level, the margin between the best and second-best score."""
    unit = F.normalize(cb.double(), dim=-1)
    residual, codes, margins = h.double(), [], []
    for _ in range(k):
        top = (residual @ unit.T).topk(2, dim=-1)
        codes.append(top.indices[:, 0])
        margins.append(top.values[:, 0] - top.values[:, 1])
        residual = residual - cb.double()[top.indices[:, 0]]
    return torch.stack(codes, 1), torch.stack(margins, 1)


def score_error_bound(cb, h, codes, unit_roundoff: float) -> torch.Tensor:
    """``[N, K]`` bound on |computed - exact| score per level (the :class:`ResidualVQ` docstring's delta_k).

    Level 1: inputs and output rounded (3u) plus fp32 accumulation over d terms; each Gram
    row subtracted adds its own rounding, u times the word's norm.
    """
    d, u32 = h.size(1), 2.0 ** -24
    accumulation = d * u32 / (1 - d * u32)
    word_norms = cb.norm(dim=-1)[codes]  # n k
    earlier = torch.cat([torch.zeros_like(word_norms[:, :1]), word_norms.cumsum(1)[:, :-1]], dim=1)
    level = torch.arange(codes.size(1)) + 1
    return ((3 * unit_roundoff + accumulation) * h.norm(dim=-1, keepdim=True)
            + (unit_roundoff + accumulation) * earlier + level * u32 * h.norm(dim=-1, keepdim=True) * 4)


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.float32, 2.0 ** -24), (torch.bfloat16, 2.0 ** -8)])
@pytest.mark.parametrize("gram", [True, False])
def test_codes_match_the_exact_search_outside_near_ties(monkeypatch, dtype, unit_roundoff, gram):
    """Codes equal an exact (float64) search at every level whose best and second-best words are
    further apart than twice the score error bound; a row is followed until its first near tie."""
    if not gram:
        monkeypatch.setattr(quantizer_module, "GRAM_MAX_BYTES", 0)  # the direct search of large codebooks
    cb = codebook(m=2048, d=64, seed=1)
    words = torch.randint(0, 2048, (600, 3), generator=torch.Generator().manual_seed(2))
    h = torch.cat([cb[words].sum(1) + 0.3 * torch.randn(600, 64), 5 * torch.randn(600, 64)])
    k = 4
    vq = ResidualVQ(cb, num_codes=k)
    codes = vq.search(h, dtype)
    assert (vq._tables[(h.device, dtype)][1] is not None) == gram
    exact, margins = reference_search(cb, h, k)
    bound = score_error_bound(cb, h, exact, unit_roundoff)
    compared = 0
    for level in range(k):
        followed = (codes[:, :level] == exact[:, :level]).all(1) & (margins[:, :level] > 2 * bound[:, :level]).all(1)
        decisive = followed & (margins[:, level] > 2 * bound[:, level])
        assert torch.equal(codes[decisive, level], exact[decisive, level])
        compared += int(decisive.sum())
    # The bound is worst-case (Cauchy-Schwarz); it still leaves many decisions to check.
    assert compared > (0.99 if dtype == torch.float32 else 0.25) * k * len(h)


@pytest.mark.parametrize("words", [100, 256, 2048, 2050, 8192 + 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_argmax_is_argmax_ties_included(words, dtype):
    """The search's argmax, block by block, picks argmax's index: each row's first maximum, even where the
    maximum recurs (in two blocks, or in a block and the words after the last whole block)."""
    scores = torch.randn(64, words, generator=torch.Generator().manual_seed(words)).to(dtype)
    tied = (scores * 2).round()  # a handful of values: every row's maximum recurs
    tied[0, -1] = tied[0, 0] = tied[0].max()  # first and last word
    for s in (scores, tied):
        assert torch.equal(first_argmax(s), s.argmax(dim=-1))


def test_perplexity_bounds():
    assert abs(perplexity(torch.zeros(100, dtype=torch.long), 10) - 1.0) < 1e-6
    assert abs(perplexity(torch.arange(10), 10) - 10.0) < 1e-4


def small_graph():
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    return torch.randn(5, 8), edge_index


def test_gradients_reach_every_gnn_layer():
    x, edge_index = small_graph()
    torch.manual_seed(0)
    model = StageOneModel(MultiViewSAGE(8, codebook(), num_views=3, codes_per_view=2, dropout=0.0), 8, 3)
    views, logits, x_rec, z = model(x, edge_index)
    assert len(views) == 3 and views[0].codes.shape == (5, 2)
    (logits.sum() + x_rec.sum()).backward()
    for conv in model.encoder.convs:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


def test_inter_layer_residual_changes_deeper_views():
    x, edge_index = small_graph()
    torch.manual_seed(0)
    with_residual = MultiViewSAGE(8, codebook(), 2, 2, dropout=0.0, inter_residual=True).eval()
    without = MultiViewSAGE(8, codebook(), 2, 2, dropout=0.0, inter_residual=False).eval()
    without.load_state_dict(with_residual.state_dict())
    a, b = with_residual(x, edge_index), without(x, edge_index)
    assert torch.allclose(a[0].z, b[0].z)  # hop 1 sees no residual yet
    assert not torch.allclose(a[1].z, b[1].z)  # Eq. 7 feeds z^1 into hop 2
