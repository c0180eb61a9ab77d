"""dre-pipeline: Dr.E (Dual-level Residual VQ-VAE with Embedding) as an installable pipeline.

Graph → words in the LLM's own vocabulary (stage one) → LoRA-finetuned LLM predictor (stage two).
"""

__version__ = "0.1.0"
