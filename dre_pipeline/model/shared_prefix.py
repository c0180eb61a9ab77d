"""Attention over a prefix shared by every row of a batch, stored once (batch 1), never copied.

Every prompt of stage two begins with the same prefix (task and class names) of ``P`` tokens.
Its keys and values ``K_p, V_p [1, H_kv, P, d]`` are computed once; a batch of ``B`` rows of
``S`` node-specific tokens attends to them and to its own keys ``K_s, V_s [B, H_kv, S, d]``:

.. math::
    \\mathrm{softmax}\\!\\left(\\tfrac{1}{\\sqrt d}\\,[\\,q K_p^\\top \\;\\|\\; q K_s^\\top + M\\,]\\right)
    \\,[\\,V_p \\,\\|\\, V_s\\,]

with ``M`` the causal mask among the row's own tokens (every row sees the whole prefix). The
prefix products fold the batch into the query rows (``[H_kv, B·n_rep·S, d] @ [H_kv, d, P]``), so
``K_p`` and ``V_p`` are read in place: a key/value cache repeated per row (``B·P`` keys in every
layer, ``B·C·P`` when each class is scored as its own row) is never built. Grouped-query heads
(``n_rep = H / H_kv``) share their key head the same way, without ``repeat_kv``.

Use: a decoder layer run inside :func:`shared_prefix_attention` calls :func:`attention` through
transformers' ``AttentionInterface``, with ``prefix=`` (a :class:`SharedPrefix`) passed down as a
keyword. The pass over the prefix itself records its keys and values; later passes read them.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface

NAME = "dre_shared_prefix"


class SharedPrefix:
    """Per decoder layer, the prefix's keys and values ``[1, H_kv, P, d]``.

    Args:
        layers (dict): ``layer_idx → (keys, values)``, already recorded. (default: none)
        recording (bool): the pass over the prefix itself, which stores each layer's keys and
            values here. (default: ``False``)
    """

    def __init__(self, layers: dict = None, recording: bool = False):
        self.layers = dict(layers or {})
        self.recording = recording

    def __or__(self, other: "SharedPrefix") -> "SharedPrefix":
        return SharedPrefix({**self.layers, **other.layers})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.layers.values() for t in kv)


def _fold(query: Tensor, kv_heads: int) -> Tensor:
    """``[B, H, S, d]`` queries as ``[H_kv, B·n_rep·S, d]``: one matrix per key head."""
    b, h, s, d = query.shape
    return query.reshape(b, kv_heads, h // kv_heads, s, d).permute(1, 0, 2, 3, 4).reshape(kv_heads, -1, d)


def attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling: float,
              dropout: float = 0.0, prefix: SharedPrefix = None, **kwargs) -> tuple:
    """The formula above for one layer; ``attention_mask`` is ``M`` (additive, ``[1, 1, S, S]``).

    Shapes: ``query [B, H, S, d]``, ``key``/``value [B, H_kv, S, d]`` → ``[B, S, H, d]``.
    """
    b, h, s, d = query.shape
    kv_heads = key.size(1)
    if prefix.recording:
        prefix.layers[module.layer_idx] = (key, value)
    shared_kv = None if prefix.recording else prefix.layers[module.layer_idx]
    own = query.reshape(b, kv_heads, h // kv_heads * s, d) @ key.transpose(-1, -2)  # [B, H_kv, n_rep·S, S]
    own = own.view(b, h, s, s) * scaling + attention_mask
    if shared_kv is None:
        weights = F.softmax(own, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = F.dropout(weights, p=dropout, training=module.training)
        out = (weights.reshape(b, kv_heads, -1, s) @ value).view(b, h, s, d)
        return out.transpose(1, 2).contiguous(), None
    shared_keys, shared_values = shared_kv
    p = shared_keys.size(-2)
    shared = (_fold(query, kv_heads) @ shared_keys[0].transpose(-1, -2)) * scaling  # [H_kv, B·n_rep·S, P]
    shared = shared.view(kv_heads, b, h // kv_heads, s, p).permute(1, 0, 2, 3, 4).reshape(b, h, s, p)
    weights = F.softmax(torch.cat([shared, own], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    on_prefix, on_own = weights[..., :p], weights[..., p:]
    from_prefix = _fold(on_prefix, kv_heads) @ shared_values[0]  # [H_kv, B·n_rep·S, d]
    from_prefix = from_prefix.view(kv_heads, b, h // kv_heads, s, d).permute(1, 0, 2, 3, 4).reshape(b, h, s, d)
    from_own = (on_own.reshape(b, kv_heads, -1, s) @ value).view(b, h, s, d)
    return (from_prefix + from_own).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)


@contextmanager
def shared_prefix_attention(config):
    """Route the decoder layers of ``config``'s model through :func:`attention` for the ``with`` block.

    Each layer call inside it passes ``prefix=``; outside it the model is as loaded (the plain
    PEFT comparison path, saving).
    """
    inner = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = inner
