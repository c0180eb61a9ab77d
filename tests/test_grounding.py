"""Keyword grounding: each hop's keywords, and a loss that pulls a view towards their sum."""

import torch

from dre_pipeline.model.grounding import hop_keyword_targets, keyword_loss
from dre_pipeline.model.quantizer import ResidualVQ

WORDS = ["bayesian", "genetic", "neural", "learning", "nets"]
# a path 0 - 1 - 2, and node 3 alone; every text says "learning", so its idf is lowest
TEXTS = ["Bayesian learning", "genetic learning", "neural learning, NEURAL nets", "learning only"]
EDGES = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
NO_EDGES = torch.empty(2, 0, dtype=torch.long)


def keywords(target: torch.Tensor, words: torch.Tensor) -> set:
    """The words whose embeddings sum to ``target`` (the embeddings are one-hot here)."""
    return {WORDS[j] for j in torch.nonzero(target @ words.T > 0.5).flatten().tolist()}


def test_a_view_targets_its_hops_rarest_words_widened_by_one_hop_per_view():
    words = torch.eye(len(WORDS))  # one-hot embeddings: a target reads back as its words
    (alone,) = hop_keyword_targets(TEXTS, WORDS, words, NO_EDGES, num_nodes=4, num_views=1, keywords=1)
    assert keywords(alone[0], words) == {"bayesian"}  # a rare word outweighs the word every text has
    assert keywords(alone[3], words) == {"learning"}  # a node's only word is its keyword
    # with room for every word, a target holds the words within its hops
    one_hop, two_hops = hop_keyword_targets(TEXTS, WORDS, words, EDGES, 4, num_views=2, keywords=len(WORDS))
    assert keywords(one_hop[0], words) == {"bayesian", "genetic", "learning"}  # its own and its neighbour's
    assert keywords(two_hops[0], words) == set(WORDS)  # node 2's words reach it at the second hop


def test_a_node_without_codebook_words_has_no_target_and_no_loss():
    words = torch.randn(len(WORDS), 8)
    (target,) = hop_keyword_targets(["chocolate", "neural nets"], WORDS, words, NO_EDGES, 2, 1, keywords=2)
    assert torch.equal(target[0], torch.zeros(8)) and torch.allclose(target[1], words[2] + words[4])
    quantizer = ResidualVQ(words, num_codes=2)
    h = torch.stack([torch.randn(8), 2 * target[1]]).requires_grad_()
    loss = keyword_loss([quantizer(h)], [target])
    assert loss.abs() < 1e-6  # node 1 points at its target (cosine: the length is free); node 0 does not count
    loss.backward()
    assert h.grad[0].abs().sum() == 0


def test_loss_falls_as_the_view_turns_towards_its_keywords_and_reaches_the_gnn():
    torch.manual_seed(0)
    words = torch.randn(len(WORDS), 16)
    (target,) = hop_keyword_targets(TEXTS, WORDS, words, EDGES, 4, 1, keywords=2)
    quantizer = ResidualVQ(words, num_codes=2)
    assert keyword_loss([quantizer(target)], [target]) < keyword_loss([quantizer(-target)], [target])
    h = torch.randn(4, 16, requires_grad=True)
    keyword_loss([quantizer(h)], [target]).backward()
    assert h.grad.abs().sum() > 0  # through the view before quantization, not the frozen codebook


def test_a_view_on_its_target_is_quantized_into_its_keywords():
    torch.manual_seed(0)
    words = torch.randn(len(WORDS), 64)
    (target,) = hop_keyword_targets(TEXTS, WORDS, words, NO_EDGES, 4, 1, keywords=2)
    codes = ResidualVQ(words, num_codes=2).search(target[:3], torch.float32)
    assert [{WORDS[j] for j in row} for row in codes.tolist()] == [
        {"bayesian", "learning"}, {"genetic", "learning"}, {"neural", "nets"}]
