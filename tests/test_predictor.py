"""The shared-prefix forward pass gives what a plain full-prompt forward gives."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from dre_pipeline.model.predictor import GraphWordPredictor
from dre_pipeline.model.prompts import build_template, node_suffix

NAMES = ["Theory", "Neural Networks", "Case Based"]


def load_model(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    template = build_template(tok, NAMES, num_views=2, use_text=False)
    return tok, model, template


def test_template_pieces(tiny_llm):
    tok, _, template = load_model(tiny_llm)
    assert template.first_token_unique
    suffix, positions = node_suffix(template, [[1000, 1001], [1002, 1003]])
    assert [suffix[p] for view in positions for p in view] == [1000, 1001, 1002, 1003]
    text = tok.decode(template.prefix_ids + suffix)
    assert "Neural Networks" in text and "2-hop information being" in text


@pytest.mark.parametrize("trained_layers", [0, 1])
def test_shared_prefix_matches_full_forward(tiny_llm, trained_layers):
    tok, model, template = load_model(tiny_llm)
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0, trained_layers)
    suffixes = [node_suffix(template, [[1000, 1001], [1002, 1003]])[0],
                node_suffix(template, [[2000, 2001], [2002, 2003]], text_ids=[500, 501, 502])[0]]
    scores = predictor.class_scores(suffixes)
    firsts = [a[0] for a in template.answer_ids]
    for row, suffix in zip(scores, suffixes):
        with torch.no_grad():
            logits = model(torch.tensor([template.prefix_ids + suffix])).logits[0, -1]
        assert torch.allclose(row, F.log_softmax(logits, -1)[firsts], atol=1e-4)
    if trained_layers:  # the frozen layers' output was kept, and is what a second call reads
        assert set(predictor._frozen_rows) == {tuple(s) for s in suffixes}
        assert torch.allclose(predictor.class_scores(suffixes), scores)


def test_frozen_layers_get_no_gradient_and_soft_tokens_do(tiny_llm):
    tok, model, template = load_model(tiny_llm)
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0, trained_layers=1)
    suffix, positions = node_suffix(template, [[1000, 1001], [1002, 1003]])
    predictor.loss([suffix], [1]).backward()
    frozen, trained = model.model.layers[0], model.model.layers[-1]
    assert all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None for p in trained.parameters())
    model.zero_grad(set_to_none=True)
    vectors = torch.randn(2, 32, requires_grad=True)
    words = (torch.tensor([0, 0]), torch.tensor(positions[0]), vectors)
    predictor.loss([suffix], [1], words).backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_sequence_scoring_when_first_tokens_collide(tiny_llm):
    tok, model, _ = load_model(tiny_llm)
    template = build_template(tok, ["Neural Networks", "Neural Nets"], num_views=1, use_text=False)
    assert not template.first_token_unique
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0)
    suffix = node_suffix(template, [[1000, 1001]])[0]
    scores = predictor.class_scores([suffix])
    for c, answer in enumerate(template.answer_ids):
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([template.prefix_ids + suffix + answer])).logits[0], -1)
        start = len(template.prefix_ids) + len(suffix) - 1
        expected = sum(logp[start + j, t] for j, t in enumerate(answer))
        assert torch.allclose(scores[0, c], expected, atol=1e-4)


def test_replaced_embeddings_are_used_in_both_scoring_modes(tiny_llm):
    tok, model, _ = load_model(tiny_llm)
    for names in (NAMES, ["Neural Networks", "Neural Nets"]):
        template = build_template(tok, names, num_views=1, use_text=False)
        predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0)
        suffix, positions = node_suffix(template, [[1000, 1001]])
        same = (torch.tensor([0, 0]), torch.tensor(positions[0]), model.get_input_embeddings().weight[[1000, 1001]])
        other = (same[0], same[1], 10 * torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
        plain = predictor.class_scores([suffix])
        assert torch.allclose(predictor.class_scores([suffix], same), plain, atol=1e-5)
        assert not torch.allclose(predictor.class_scores([suffix], other), plain, atol=1e-3)


def test_lora_only_on_the_top_layers(tiny_llm):
    from dre_pipeline.pipeline.config import FinetuneConfig
    from dre_pipeline.pipeline.llm import attach_lora

    model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_llm), FinetuneConfig(lora_layers=1),
                        ["q_proj", "v_proj"])
    trained = {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"1"}  # of layers 0 and 1


def test_class_loss_is_cross_entropy_over_the_scores_prediction_ranks(tiny_llm):
    tok, model, template = load_model(tiny_llm)
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0, trained_layers=1)
    suffixes = [node_suffix(template, [[1000, 1001], [1002, 1003]])[0],
                node_suffix(template, [[2000, 2001], [2002, 2003]])[0]]
    labels = [1, 2]
    logits_seen = []

    def keep(module, inputs, out):
        out.retain_grad()
        logits_seen.append(out)

    hook = predictor.lm_head.register_forward_hook(keep)
    loss = predictor.loss(suffixes, labels, kind="class")
    hook.remove()
    scores = predictor.class_scores(suffixes)
    assert torch.allclose(loss.detach(), F.cross_entropy(scores, torch.tensor(labels)), atol=1e-5)
    loss.backward()
    grad = logits_seen[0].grad  # [B, vocab] at the answer position
    firsts = [a[0] for a in template.answer_ids]
    others = torch.ones(grad.size(-1), dtype=torch.bool)
    others[firsts] = False
    assert grad[:, firsts].abs().sum() > 0
    assert grad[:, others].abs().max() == 0  # no word outside the class names is pushed up or down


def test_class_loss_takes_soft_targets_and_row_weights(tiny_llm):
    tok, model, template = load_model(tiny_llm)
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0, trained_layers=1)
    suffixes = [node_suffix(template, [[1000, 1001], [1002, 1003]])[0],
                node_suffix(template, [[2000, 2001], [2002, 2003]])[0]]
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    weights = torch.tensor([1.0, 0.5])
    scores = predictor.class_scores(suffixes)
    loss = predictor.loss(suffixes, targets, kind="class", weights=weights)
    expected = (-(targets * scores.log_softmax(-1)).sum(1) * weights).mean()
    assert torch.allclose(loss.detach(), expected, atol=1e-5)
    # a one-hot row is its label
    hard = predictor.loss(suffixes[:1], [1], kind="class")
    assert torch.allclose(hard, predictor.loss(suffixes[:1], targets[:1], kind="class"), atol=1e-6)


@pytest.mark.parametrize("names", [NAMES, ["Neural Networks", "Neural Nets"]])
def test_full_prompt_predictor_gives_the_same_scores_and_gradients(tiny_llm, names):
    """--no-token-economy (the plain PEFT + transformers forward) differs in cost only."""
    from dre_pipeline.model.predictor import FullPromptPredictor

    tok, model, _ = load_model(tiny_llm)
    template = build_template(tok, names, num_views=2, use_text=False)
    suffixes = [node_suffix(template, [[1000, 1001], [1002, 1003]])[0],
                node_suffix(template, [[2000, 2001], [2002, 2003]], text_ids=[500, 501, 502])[0]]
    _, positions = node_suffix(template, [[1000, 1001], [1002, 1003]])
    vectors = 10 * torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    words = (torch.tensor([0, 0]), torch.tensor(positions[0]), vectors)
    results = []
    for kind in (GraphWordPredictor, FullPromptPredictor):
        predictor = kind(model, template, tok.pad_token_id or 0, trained_layers=1)
        model.zero_grad(set_to_none=True)
        predictor.loss(suffixes, [1, 0], kind="class").backward()
        grads = [p.grad.clone() for p in model.model.layers[-1].parameters()]
        results.append((predictor.class_scores(suffixes), predictor.class_scores(suffixes, words), grads,
                        predictor.tokens_run(suffixes)))
    (economy, economy_words, economy_grads, economy_tokens), (plain, plain_words, plain_grads, plain_tokens) = results
    assert torch.allclose(economy, plain, atol=1e-5)
    assert torch.allclose(economy_words, plain_words, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(economy_grads, plain_grads))
    assert plain_tokens - economy_tokens == len(template.prefix_ids)  # the prefix once per row, not per batch


@pytest.mark.parametrize("names", [NAMES, ["Neural Networks", "Neural Nets"]])
def test_prefix_keys_are_stored_once_not_per_row(tiny_llm, names):
    """No tensor of a batch forward holds the prefix's keys/values per row: ``[B, H_kv, ≥P, d_head]``.

    A per-row copy (a key/value cache repeated over the batch, and over the classes when class
    names share a first token) grows with B·P in every layer; the shared prefix is read in place.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen += [o.shape for o in (out if isinstance(out, (tuple, list)) else [out])
                          if isinstance(o, torch.Tensor)]
            return out

    tok, model, _ = load_model(tiny_llm)
    template = build_template(tok, names, num_views=2, use_text=False)
    config = model.config
    head_dim, kv_heads = config.hidden_size // config.num_attention_heads, config.num_key_value_heads
    prefix = len(template.prefix_ids)
    rows = 8
    suffixes = [node_suffix(template, [[1000 + i, 1001], [1002, 1003]])[0] for i in range(rows)]
    predictor = GraphWordPredictor(model, template, tok.pad_token_id or 0, trained_layers=1)
    with Shapes() as shapes:
        scores = predictor.class_scores(suffixes)
        predictor.loss(suffixes, [0] * rows, kind="class").backward()
    assert scores.shape == (rows, len(names))
    per_row_prefix = [s for s in shapes.seen if len(s) == 4 and s[0] >= rows and s[1] == kv_heads
                      and s[2] >= prefix and s[3] == head_dim]
    assert per_row_prefix == []
    assert any(s[:3] == (1, kv_heads, prefix) for s in shapes.seen if len(s) == 4)  # the prefix, once
