"""Residual VQ against a frozen codebook, and the multi-view encoder around it."""

import torch

from dre_pipeline.gnn import MultiViewSAGE, StageOneModel
from dre_pipeline.quantizer import ResidualVQ, perplexity, straight_through_words


def codebook(m=64, d=16, seed=0):
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed))


def test_residual_norm_shrinks_with_each_code():
    cb = codebook(m=256, d=64)
    words = torch.stack([torch.randperm(256, generator=torch.Generator().manual_seed(i))[:4] for i in range(50)])
    h = cb[words].sum(1)  # each view is a sum of four words
    out = ResidualVQ(cb, num_codes=4)(h)
    norms = out.residual_norms
    assert norms.shape == (50, 5)
    assert torch.all(norms[:, 1:] < norms[:, :-1])
    assert norms[:, -1].max() < 1e-3  # four codes explain it fully
    assert torch.equal(out.codes.sort(1).values, words.sort(1).values)  # and recover its words


def test_quantized_view_is_the_sum_of_code_words():
    cb = codebook()
    h = torch.randn(30, 16)
    out = ResidualVQ(cb, num_codes=3)(h)
    assert torch.allclose(out.z, cb[out.codes].sum(1), atol=1e-5)


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
