r"""Residual vector quantization against the frozen LLM codebook (Dr.E Eq. 5-6).

One view ``h`` of a node becomes K words. Each level picks the codebook word most
cosine-similar to what is still unexplained and subtracts that word's embedding:

.. math::
    r_0 = h, \qquad
    c_k = \arg\max_j \cos(r_{k-1}, e_j), \qquad
    r_k = r_{k-1} - e_{c_k}, \qquad
    \hat z = \sum_{k=1}^{K} e_{c_k}.

:math:`\hat z` is the sum of the LLM's own embeddings of the K words, so it holds
exactly what the words say and nothing else: the stage-one heads that read it measure
what the LLM will be able to read. It is passed on with the straight-through estimator
:math:`z = h + \mathrm{sg}(\hat z - h)`; the commitment loss, the mean squared error
:math:`\frac{1}{Nd}\lVert h - \mathrm{sg}(\hat z)\rVert^2`, pulls the GNN towards sums of words.
The codebook is never updated.

Shapes: ``h`` is ``[N, d]``; ``codes`` ``[N, K]``; :meth:`ResidualVQ.residual_norms` ``[N, K + 1]``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hardware import native_bf16

# The Gram matrix of the incremental search holds M x M scores; above this size (e.g. the
# whole 49k vocabulary) each level searches directly instead.
GRAM_MAX_BYTES = 1 << 30
# Rows searched together: one chunk's [rows, M] scores stay in cache through all K levels.
SEARCH_CHUNK = 512
# Words per block of :func:`first_argmax`.
ARGMAX_BLOCK = 128


@dataclass
class Quantized:
    h: Tensor  # [N, d] the view before quantization
    z: Tensor  # [N, d] straight-through quantized view
    codes: Tensor  # [N, K] code ids, level by level
    commitment: Tensor  # scalar: mean squared error of h against sg(z_hat), pulls the GNN towards words


def search_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies it natively, else fp32 (emulated bf16 is ~100x slower)."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


class ResidualVQ(nn.Module):
    r"""K-level residual VQ with cosine similarity over a frozen codebook.

    The search is exact nearest-word search by matrix multiply, done incrementally:
    with unit words :math:`\hat e_j = e_j / \lVert e_j \rVert`,
    :math:`r_k \cdot \hat e_j = r_{k-1} \cdot \hat e_j - e_{c_k} \cdot \hat e_j`, so only level 1
    multiplies (``[N, d] @ [d, M]``); each later level subtracts one row of the Gram matrix
    :math:`G = E \hat E^\top` (``[M, M]``, built once). Scores are computed in
    :func:`search_dtype`; with bf16, each score is within
    :math:`\delta_k = 2^{-6}\lVert r_0\rVert + 2^{-8}\sum_{i<k}\lVert e_{c_i}\rVert` of the exact one
    (3 roundings of unit roundoff :math:`2^{-8}` on the level-1 product, one per Gram entry),
    so codes differ from an fp32 search only where two words' scores lie within
    :math:`2\delta_k`.

    Args:
        codebook (Tensor): ``[M, d]`` word embeddings of the LLM (refined tokens).
        num_codes (int): K, codes per view.
    """

    def __init__(self, codebook: Tensor, num_codes: int):
        super().__init__()
        self.num_codes = num_codes
        self.register_buffer("words", codebook.float(), persistent=False)
        self._tables = {}  # (device, dtype) -> (unit words^T [d, M], Gram [M, M] or None)

    def search_tables(self, device: torch.device, dtype: torch.dtype) -> tuple:
        if (device, dtype) not in self._tables:
            words = self.words.to(device)
            unit_t = F.normalize(words, dim=-1).T.contiguous()
            fits = len(words) ** 2 * torch.finfo(dtype).bits // 8 <= GRAM_MAX_BYTES
            gram = (words @ unit_t).to(dtype) if fits else None
            self._tables[(device, dtype)] = (unit_t.to(dtype), gram)
        return self._tables[(device, dtype)]

    @torch.no_grad()
    def search(self, h: Tensor, dtype: torch.dtype = None) -> Tensor:
        """``[N, K]`` codes of ``h`` ``[N, d]``: level by level, the word most cosine-similar to the residual."""
        dtype = dtype or search_dtype(h.device)
        unit_t, gram = self.search_tables(h.device, dtype)
        codes = torch.empty(h.size(0), self.num_codes, dtype=torch.long, device=h.device)
        # One chunk's [rows, M] buffers, reused by every chunk and level: fresh temporaries each time left
        # glibc's heap fragmented, ~86 MB resident above the live tensors with an 8k-word codebook.
        chunk = max(1, min(SEARCH_CHUNK, h.size(0)))
        scores = torch.empty(chunk, unit_t.size(1), device=h.device)  # b m; cos up to the norm of r
        picked = torch.empty(chunk, unit_t.size(1), dtype=dtype, device=h.device)  # a product or Gram rows
        for start in range(0, h.size(0), chunk):
            residual = h[start:start + chunk]  # b d
            b = residual.size(0)
            self._score(residual.to(dtype), unit_t, scores[:b], picked[:b])
            for k in range(self.num_codes):
                code = first_argmax(scores[:b])
                codes[start:start + b, k] = code
                if k + 1 == self.num_codes:
                    break
                # index_select: ~3x faster than fancy indexing for whole rows on CPU
                if gram is not None:
                    scores[:b] -= torch.index_select(gram, 0, code, out=picked[:b])
                else:
                    residual = residual - self.words.index_select(0, code)
                    self._score(residual.to(dtype), unit_t, scores[:b], picked[:b])
        return codes

    @staticmethod
    def _score(residual: Tensor, unit_t: Tensor, scores: Tensor, product: Tensor) -> None:
        """``scores`` (fp32) = ``residual @ unit_t``, multiplied in the search dtype."""
        if product.dtype == scores.dtype:
            torch.matmul(residual, unit_t, out=scores)
        else:
            scores.copy_(torch.matmul(residual, unit_t, out=product))

    def forward(self, h: Tensor) -> Quantized:
        codes = self.search(h.detach())
        # z_hat = e_{c_1} + .. + e_{c_K} in one gather-and-sum, no [N, K, d] tensor held: on the CPU the same sums,
        # added in the same order, as K row gathers added to zeros (tested), and ~10x faster (22 against 218 ms with
        # the residual norms, 21k x 576, K = 4)
        z_hat = F.embedding_bag(codes, self.words, mode="sum")
        commitment = F.mse_loss(h, z_hat)
        z = h + (z_hat - h).detach()
        return Quantized(h, z, codes, commitment)

    @torch.no_grad()
    def residual_norms(self, h: Tensor, codes: Tensor) -> Tensor:
        r"""``[N, K + 1]``: :math:`\lVert r_0\rVert .. \lVert r_K\rVert` of ``h`` under its ``codes``, what each level
        left unexplained (encode's metrics; training has no use for them)."""
        z_hat, norms = torch.zeros_like(h), [h.norm(dim=-1)]
        for k in range(self.num_codes):
            z_hat += self.words.index_select(0, codes[:, k])
            norms.append((h - z_hat).norm(dim=-1))
        return torch.stack(norms, dim=1)


def first_argmax(scores: Tensor) -> Tensor:
    """``scores.argmax(-1)`` of ``[b, M]`` scores, each row's first maximum, found block by block.

    torch's CPU argmax over a long row is ~6x slower than its max (512 x 8,192 scores: 5.0 ms against
    0.8 ms this way, measured on an Intel Xeon with AVX512) and was a quarter of a mini-batch step: the blocks'
    maxima come from ``amax``, and argmax runs over them and over the winning block alone. The first block
    holding the row's maximum holds its first occurrence, so the index is argmax's, ties included.
    """
    b, m = scores.shape
    blocks = m // ARGMAX_BLOCK
    if blocks < 2:
        return scores.argmax(dim=-1)
    head = scores[:, :blocks * ARGMAX_BLOCK].unflatten(1, (blocks, ARGMAX_BLOCK))  # b blocks B
    block_max = head.amax(dim=-1)
    block = block_max.argmax(dim=-1)
    rows = torch.arange(b, device=scores.device)
    code = head[rows, block].argmax(dim=-1) + block * ARGMAX_BLOCK
    if blocks * ARGMAX_BLOCK < m:  # the words after the last whole block win only where strictly greater
        tail_max, tail_code = scores[:, blocks * ARGMAX_BLOCK:].max(dim=-1)
        code = torch.where(tail_max > block_max[rows, block], tail_code + blocks * ARGMAX_BLOCK, code)
    return code


def straight_through_words(h: Tensor, codes: Tensor, embeddings: Tensor) -> Tensor:
    """The code words as the LLM sees them, differentiable w.r.t. the GNN (joint pass).

    Value: the LLM's embedding of each code word, ``[N, K, d]``; gradient: flows to ``h``
    as if the word were the view itself (straight-through).
    """
    words = embeddings[codes]  # b k d
    return words + (h - h.detach()).unsqueeze(1).to(words.dtype)


def perplexity(codes: Tensor, codebook_size: int) -> float:
    """Codebook usage perplexity (Dr.E Eq. 11): exp of the entropy of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())
