"""The LLM as a classifier over class names, with token economy built in.

- The shared prefix (task + class names) is run once and its keys/values, stored once, are
  attended to by every row of a batch (:mod:`~dre_pipeline.model.shared_prefix`), so each prompt
  costs only its node-specific tokens, in compute and in memory.
- LoRA adapts only the top ``trained_layers`` decoder layers. The layers below are frozen
  and, with stored code words, see the same tokens every epoch: their output for a prompt
  is computed once and cached, so a training step runs (and back-propagates through) the
  top layers only.
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
from .shared_prefix import SharedPrefix, shared_prefix_attention

FROZEN_CACHE_BYTES = 4 << 30  # beyond this, frozen-layer outputs are recomputed instead of kept
FROZEN_CHUNK = 32  # prompts per frozen-layer pass when filling the cache


class GraphWordPredictor:
    """Wraps a (LoRA-adapted) Llama-style causal LM and a prompt template.

    Args:
        model: a transformers causal LM or a PEFT model around one.
        template (PromptTemplate): prefix, view leads, answers.
        pad_id (int): token used to pad rows (never attended to by real tokens).
        trained_layers (int): how many top decoder layers carry LoRA; the others are
            frozen and their outputs cached. 0: all layers are trained. (default: 0)
    """

    def __init__(self, model, template: PromptTemplate, pad_id: int, trained_layers: int = 0):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model = model
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()
        self.embed = base.get_input_embeddings()
        self.template = template
        self.pad_id = pad_id
        layers = list(self.decoder.layers)
        split = len(layers) - trained_layers if 0 < trained_layers < len(layers) else 0
        self.frozen_layers, self.trained_layers = layers[:split], layers[split:]
        self._prefix_state = None  # (prefix keys/values in the frozen layers, prefix hidden state above them)
        self._frozen_rows = {}  # prompt row (token ids) → its hidden states above the frozen layers
        self._frozen_bytes = 0

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _layers(self, layers: list, hidden: Tensor, start: int, prefix: SharedPrefix) -> Tensor:
        """Run ``layers`` on ``hidden [B, S, d]`` at positions ``start..start+S-1``, after ``prefix``.

        Causal attention among the rows' own tokens is all the mask needed: rows are right-padded,
        so no real token sees a pad, and every row sees the whole prefix.
        """
        if not layers:
            return hidden
        length = hidden.size(1)
        positions = torch.arange(start, start + length, device=hidden.device)[None]
        blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        mask = torch.zeros(blocked.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None]
        rope = self.decoder.rotary_emb(hidden, position_ids=positions)
        with shared_prefix_attention(self.decoder.config):
            for layer in layers:
                hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=positions,
                               prefix=prefix)
        return hidden

    def _frozen_prefix(self) -> tuple:
        """The shared prefix through the frozen layers, once: their keys/values and its output above them."""
        if self._prefix_state is None:
            with torch.no_grad():
                recorded = SharedPrefix(recording=True)
                ids = torch.tensor([self.template.prefix_ids], device=self.device)
                hidden = self._layers(self.frozen_layers, self.embed(ids), 0, recorded)
            self._prefix_state = (SharedPrefix(recorded.layers), hidden)
        return self._prefix_state

    def _prefix(self, frozen: bool, trained: bool) -> SharedPrefix:
        """The prefix's keys/values in the frozen and/or trained layers, stored once for the whole batch.

        The trained layers' change with every step, so they are recomputed (with gradient) per call;
        rows read from the frozen-row cache skip the frozen layers, so they need no frozen keys.
        """
        frozen_prefix, prefix_hidden = self._frozen_prefix()
        prefix = frozen_prefix if frozen else SharedPrefix()
        if trained and self.trained_layers:
            recorded = SharedPrefix(recording=True)
            self._layers(self.trained_layers, prefix_hidden, 0, recorded)
            prefix = prefix | recorded
        return prefix

    def _pad(self, rows: list) -> Tensor:
        ids = torch.full((len(rows), max(len(r) for r in rows)), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids.to(self.device)

    def _above_frozen(self, rows: list) -> Tensor:
        """``[B, S, d]`` hidden states of ``rows`` above the frozen layers, from the cache where possible."""
        known, fresh = self._frozen_rows, {}
        missing = [r for r in dict.fromkeys(map(tuple, rows)) if r not in known]
        with torch.no_grad():
            for start in range(0, len(missing), FROZEN_CHUNK):
                chunk = missing[start: start + FROZEN_CHUNK]
                out = self._layers(self.frozen_layers, self.embed(self._pad(chunk)), len(self.template.prefix_ids),
                                   self._prefix(frozen=True, trained=False))
                for row, hidden in zip(chunk, out):
                    fresh[row] = hidden[: len(row)].clone()
        for row, hidden in fresh.items():
            if self._frozen_bytes < FROZEN_CACHE_BYTES:
                known[row] = hidden
                self._frozen_bytes += hidden.numel() * hidden.element_size()
        width = max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, self.embed.embedding_dim, dtype=self.embed.weight.dtype,
                          device=self.device)
        for i, row in enumerate(map(tuple, rows)):
            out[i, : len(row)] = known.get(row, fresh.get(row))
        return out

    def hidden_states(self, rows: list, words: Optional[tuple] = None) -> Tensor:
        """Last hidden states ``[B, S, d]`` of the node-specific rows, after the shared prefix.

        ``words = (row_index, position, vectors)`` replaces the input embeddings at those
        positions (soft tokens, or the joint pass's straight-through code words); such rows
        go through the frozen layers every time, since their inputs change.
        """
        start = len(self.template.prefix_ids)
        cached_rows = words is None and bool(self.frozen_layers)
        prefix = self._prefix(frozen=not cached_rows, trained=True)
        if cached_rows:
            hidden = self._above_frozen(rows)
        else:
            hidden = self.embed(self._pad(rows))
            if words is not None:
                row_index, position, vectors = words
                hidden = hidden.index_put((row_index.to(self.device), position.to(self.device)),
                                          vectors.to(hidden.dtype))
            hidden = self._layers(self.frozen_layers, hidden, start, prefix)
        return self.decoder.norm(self._layers(self.trained_layers, hidden, start, prefix))

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

    def loss(self, suffixes: list, labels, words: Optional[tuple] = None, kind: str = "answer",
             weights: Optional[Tensor] = None) -> Tensor:
        """``answer``: mean negative log-likelihood of the answer tokens over the whole vocabulary.
        ``class``: cross-entropy over the class names' scores, the very scores prediction ranks,
        so no gradient goes to words that are no class name. Its ``labels`` may also be ``[B, C]``
        class distributions (soft targets), and ``weights`` ``[B]`` weigh the rows of the mean.
        """
        if kind == "class":
            target = torch.as_tensor(labels, device=self.device)
            if self.template.first_token_unique:  # softmax over the class tokens' logits only
                scores = self._last_logits(suffixes, words)[:, self._firsts()]
            else:
                scores = self.scores(suffixes, words)
            per_row = F.cross_entropy(scores, target, reduction="none")
            return (per_row if weights is None else per_row * weights.to(self.device)).mean()
        answers = [self.template.answer_ids[y] for y in labels]
        logprob, count = self.answer_logprobs(suffixes, answers, words)
        return -logprob.sum() / count

    def tokens_run(self, suffixes: list) -> int:
        """Tokens a training step over ``suffixes`` runs through the model: the prefix once per batch."""
        return len(self.template.prefix_ids) + sum(map(len, suffixes))

    def _firsts(self) -> Tensor:
        return torch.tensor([a[0] for a in self.template.answer_ids], device=self.device)

    def _last_logits(self, suffixes: list, words: Optional[tuple]) -> Tensor:
        """``[B, V]`` next-token logits after each prompt: where the answer's first token is predicted."""
        hidden = self.hidden_states(suffixes, words)
        last = torch.tensor([len(s) - 1 for s in suffixes], device=self.device)
        return self.lm_head(hidden[torch.arange(len(suffixes), device=self.device), last]).float()

    @torch.no_grad()
    def class_scores(self, suffixes: list, words: Optional[tuple] = None) -> Tensor:
        """``[B, C]`` log-probability of each class name; the prediction is the argmax."""
        return self.scores(suffixes, words).cpu()

    def scores(self, suffixes: list, words: Optional[tuple] = None) -> Tensor:
        """``[B, C]`` class-name log-probabilities: of the first token where class names' first
        tokens differ (one pass), else of the whole name (one row per class)."""
        answers = self.template.answer_ids
        if self.template.first_token_unique:
            return F.log_softmax(self._last_logits(suffixes, words), dim=-1)[:, self._firsts()]
        repeated = [s for s in suffixes for _ in answers]
        if words is not None:  # each row is repeated once per class: so are its replaced positions
            row_index, position, vectors = words
            copies = torch.arange(len(answers)).repeat(len(row_index))
            row_index = (row_index.repeat_interleave(len(answers)) * len(answers) + copies)
            words = (row_index, position.repeat_interleave(len(answers)), vectors.repeat_interleave(len(answers), 0))
        logprob, _ = self.answer_logprobs(repeated, [a for _ in suffixes for a in answers], words)
        return logprob.view(len(suffixes), len(answers))


class FullPromptPredictor(GraphWordPredictor):
    """The plain PEFT + transformers way, kept for comparison (``--no-token-economy``).

    Every prompt, shared prefix included, runs in full through every layer at every step:
    right-padded rows with an attention mask, one call of the decoder stack, nothing cached.
    Scores and losses are those of :class:`GraphWordPredictor` (the same math); only the
    cost differs, which is what the bench's economy table measures.
    """

    def hidden_states(self, rows: list, words: Optional[tuple] = None) -> Tensor:
        start = len(self.template.prefix_ids)
        full = [self.template.prefix_ids + list(row) for row in rows]
        ids = self._pad(full)
        lengths = torch.tensor([len(row) for row in full], device=self.device)
        mask = (torch.arange(ids.size(1), device=self.device)[None] < lengths[:, None]).long()
        hidden = self.embed(ids)
        if words is not None:
            row_index, position, vectors = words
            hidden = hidden.index_put((row_index.to(self.device), position.to(self.device) + start),
                                      vectors.to(hidden.dtype))
        out = self.decoder(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state
        return out[:, start:]

    def tokens_run(self, suffixes: list) -> int:
        return len(suffixes) * len(self.template.prefix_ids) + sum(map(len, suffixes))
