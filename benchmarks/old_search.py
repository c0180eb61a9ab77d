"""The quantizer's code search as it was, for ``dre-pipeline bench --speed`` to measure today's against.

The package searches incrementally (level 1 multiplies, later levels subtract Gram rows), in cache-sized
chunks, in bf16 where the CPU multiplies it natively. Before, every level was a product of its own over
the whole graph at once, in fp32. The quantizer still computes that search when its limits say so (no
Gram matrix, one chunk, fp32), so the old search is today's code with those limits, set while it runs.

Kept out of the package, which has no use for the old search; ``dre_pipeline.harness.speed`` loads this
file from the checkout.
"""

from contextlib import contextmanager


@contextmanager
def search_as_before():
    """The search as it was: fp32, one product per level, over the whole graph at once."""
    import torch

    from dre_pipeline.model import quantizer

    saved = quantizer.GRAM_MAX_BYTES, quantizer.SEARCH_CHUNK, quantizer.search_dtype
    quantizer.GRAM_MAX_BYTES, quantizer.SEARCH_CHUNK = 0, 1 << 62
    quantizer.search_dtype = lambda device: torch.float32
    try:
        yield
    finally:
        quantizer.GRAM_MAX_BYTES, quantizer.SEARCH_CHUNK, quantizer.search_dtype = saved
