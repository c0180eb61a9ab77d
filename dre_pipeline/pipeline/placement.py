"""Where each stage computes and in what, decided once per command from ``--device``, ``--quantization`` and
``--precision``.

- Stage one (the GNN and residual VQ, :mod:`~dre_pipeline.pipeline.stages.encode`) trains on the command's device in
  fp32, its code search in :func:`~dre_pipeline.model.quantizer.search_dtype` of that device. Its artifact is the
  same whatever the device: the device stays out of every key, and so does anything chosen from the
  machine's memory (see :func:`~dre_pipeline.pipeline.stages.encode.mini_batch_size`).
- The LLM (``--features llm``, stage two) loads on the same device in :func:`compute_dtype`
  under stage two's ``--precision``, with ``--quantization``'s k-bit layers. Quantized weights are another model:
  their text features are cached under a key of their own (:mod:`~dre_pipeline.pipeline.stages.features`).
"""

import re
from dataclasses import dataclass

import torch

from .config import FinetuneConfig
from ..errors import InputError
from ..hardware import native_bf16


def resolve_device(device) -> torch.device:
    """``auto``, ``cpu`` or ``cuda[:N]`` as the device it names, refused (one line) where this machine has no such device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    named = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if named is None:
        raise InputError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if named.group(1) is not None and int(named.group(1)) >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolved_precision(device: torch.device, precision: str = "auto") -> str:
    """``--precision`` on ``device`` as the name of the dtype it computes in (fp32 or bf16): :func:`compute_dtype`."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype the LLM is loaded and computes in on ``device`` under ``--precision``: ``fp32`` or ``bf16`` as
    named; ``auto``: bf16 where ``device`` multiplies it natively (:func:`~dre_pipeline.hardware.native_bf16`: a GPU
    of compute capability 8.0+, a CPU with AVX512-BF16 or AMX), fp32 everywhere else.

    On CPUs it was chosen on the validation data of three graphs, ``bench --economy`` with SmolLM2, seed 0, on an
    AVX-512 EPYC (benchmarks/RESULTS.md): bf16 minus fp32 validation accuracy -0.37 points on Cora, -0.18 on Cora
    with its text, +0.33 on Cora-ML (mean -0.07), at 1.6-2.3x the training prompts/s and 1.7-3.1x the scoring
    rate. The AVX2 class emulates bf16, ~100x slower: fp32 there.
    Not fp16 on older GPUs (T4, V100): fp16's range (max 65504) lets activations of the frozen layers
    overflow and small gradients underflow, and this training loop has no loss scaler (``GradScaler``) to
    guard them; fp32 is slower there but trains the same as on the CPU.
    """
    return PRECISIONS[resolved_precision(device, precision)]


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
