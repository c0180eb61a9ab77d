"""The LLM as a classifier over class names, with token economy built in.

- The shared prefix (task + class names) is run once per batch and its key/value cache
  repeated over the batch, so each prompt costs only its node-specific tokens.
- Rows are right-padded to the longest row of the batch only (rows are sorted by length
  by the caller); the language-model head runs only where an answer token is predicted.
- Prediction is constrained to the class names: with distinct first tokens, one forward
  pass scores every class (first-token scoring); otherwise each class's full answer is
  scored by the sum of its token log-probabilities.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .prompts import PromptTemplate


class GraphWordPredictor:
    """Wraps a (LoRA-adapted) causal LM and a prompt template.

    Args:
        model: a transformers causal LM or a PEFT model around one.
        template (PromptTemplate): prefix, view leads, answers.
        pad_id (int): token used to pad rows (masked out).
    """

    def __init__(self, model, template: PromptTemplate, pad_id: int):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()
        self.embed = base.get_input_embeddings()
        self.template = template
        self.pad_id = pad_id

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def hidden_states(self, rows: list, words: Optional[tuple] = None) -> Tensor:
        """Last hidden states ``[B, S, d]`` of the node-specific rows, after the shared prefix.

        ``words = (row_index, position, vectors)`` replaces the input embeddings at those
        positions (the joint pass's straight-through code words).
        """
        batch, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        prefix = torch.tensor([self.template.prefix_ids], device=self.device)
        cache = self.decoder(prefix, use_cache=True).cache
        cache.batch_repeat_interleave(batch)
        attention = torch.cat([torch.ones(batch, prefix.size(1), dtype=torch.long, device=self.device), mask], 1)
        embeds = self.embed(ids)
        if words is not None:
            row_index, position, vectors = words
            embeds = embeds.index_put((row_index.to(self.device), position.to(self.device)), vectors.to(embeds.dtype))
        return self.decoder(inputs_embeds=embeds, cache=cache, attention_mask=attention).last_hidden_state

    def answer_logprobs(self, suffixes: list, answers: list, words: Optional[tuple] = None) -> tuple:
        """Sum of log p(answer tokens | prompt) per row, and the number of answer tokens."""
        rows = [list(s) + list(a) for s, a in zip(suffixes, answers)]
        hidden = self.hidden_states(rows, words)
        row_index = torch.tensor([i for i, a in enumerate(answers) for _ in a])
        position = torch.tensor([len(s) - 1 + j for s, a in zip(suffixes, answers) for j in range(len(a))])
        target = torch.tensor([t for a in answers for t in a], device=self.device)
        logits = self.lm_head(hidden[row_index.to(self.device), position.to(self.device)]).float()
        token_logprob = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
        per_row = torch.zeros(len(rows), device=self.device).index_add(0, row_index.to(self.device), token_logprob)
        return per_row, target.numel()

    def loss(self, suffixes: list, labels: list, words: Optional[tuple] = None) -> Tensor:
        """Mean negative log-likelihood of the answer tokens only."""
        answers = [self.template.answer_ids[y] for y in labels]
        logprob, count = self.answer_logprobs(suffixes, answers, words)
        return -logprob.sum() / count

    @torch.no_grad()
    def class_scores(self, suffixes: list, words: Optional[tuple] = None) -> Tensor:
        """``[B, C]`` log-probability of each class name; the prediction is the argmax."""
        answers = self.template.answer_ids
        if self.template.first_token_unique:
            hidden = self.hidden_states(suffixes, words)
            last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
            logits = self.lm_head(hidden[torch.arange(len(suffixes), device=self.device), last]).float()
            firsts = torch.tensor([a[0] for a in answers], device=self.device)
            return F.log_softmax(logits, dim=-1)[:, firsts].cpu()
        repeated = [s for s in suffixes for _ in answers]
        if words is not None:  # each row is repeated once per class: so are its replaced positions
            row_index, position, vectors = words
            copies = torch.arange(len(answers)).repeat(len(row_index))
            row_index = (row_index.repeat_interleave(len(answers)) * len(answers) + copies)
            words = (row_index, position.repeat_interleave(len(answers)), vectors.repeat_interleave(len(answers), 0))
        logprob, _ = self.answer_logprobs(repeated, [a for _ in suffixes for a in answers], words)
        return logprob.view(len(suffixes), len(answers)).cpu()
