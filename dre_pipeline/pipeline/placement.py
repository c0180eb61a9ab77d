"""Where each stage computes and in what, decided once per command from ``--device`` and ``--quantization``.

- Stage one (the GNN and residual VQ, :mod:`~dre_pipeline.pipeline.stages.encode`) trains on the command's device in
  fp32, its code search in :func:`~dre_pipeline.model.quantizer.search_dtype` of that device. Its artifact is the
  same whatever the device: the device stays out of every key, and so does anything chosen from the
  machine's memory (see :func:`~dre_pipeline.pipeline.stages.encode.mini_batch_size`).
- The LLM (``--features llm``, stage two) loads on the same device in :func:`~dre_pipeline.pipeline.llm.compute_dtype`
  under stage two's ``--precision``, with ``--quantization``'s k-bit layers. Quantized weights are another model:
  their text features are cached under a key of their own (:mod:`~dre_pipeline.pipeline.stages.features`).
"""

from dataclasses import dataclass

import torch

from .config import FinetuneConfig
from ..errors import InputError
from .llm import compute_dtype, resolve_device

QUANTIZATIONS = FinetuneConfig.__dataclass_fields__["quantization"].metadata["choices"]


def auto_quantization(device_type: str) -> str:
    """What ``--quantization auto`` means on a device of this type: 4-bit on CUDA, none elsewhere."""
    return "4bit" if device_type == "cuda" else "none"


@dataclass(frozen=True)
class Placement:
    """``device``: the command's; ``quantization``: none, 8bit or 4bit (``auto`` already resolved); ``precision``:
    ``--precision`` (auto, fp32, bf16)."""

    device: torch.device
    quantization: str = "none"
    precision: str = "auto"

    @classmethod
    def resolve(cls, device="auto", quantization: str = "none", precision: str = "auto") -> "Placement":
        """``--device``, ``--quantization`` and ``--precision`` as given; ``auto`` quantizes (4-bit) on CUDA only."""
        device = resolve_device(device)
        if quantization not in QUANTIZATIONS:
            raise InputError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
        return cls(device, auto_quantization(device.type) if quantization == "auto" else quantization, precision)

    @property
    def llm_dtype(self) -> torch.dtype:
        return compute_dtype(self.device, self.precision)

    @property
    def llm_dtype_name(self) -> str:
        """The LLM's compute dtype as a manifest records how a run computed ("float32", "bfloat16")."""
        return str(self.llm_dtype).removeprefix("torch.")


CPU = Placement(torch.device("cpu"))
