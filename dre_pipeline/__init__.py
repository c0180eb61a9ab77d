"""dre-pipeline: Dr.E (Dual-level Residual VQ-VAE with Embedding) as an installable pipeline.

Graph → words in the LLM's own vocabulary (stage one) → LoRA-finetuned LLM predictor (stage two).
From Python: :class:`DrE` and :func:`load_pyg` (:mod:`.api`); on the command line: ``dre-pipeline``.
"""

__version__ = "0.1.0"
__all__ = ["DrE", "Predictions", "load_pyg"]


def __getattr__(name: str):
    # the API imports torch and the pipeline: loaded on first use, so that `dre-pipeline --help` stays quick
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dre_pipeline' has no attribute {name!r}")
