"""What the machine's processors do natively: the capability every dtype choice is made by.

It sits below every layer: the method (:mod:`.model.quantizer`) and the LLM's loading both ask it."""

import torch

# Compute capability 8.0 (Ampere) is the first with bf16 tensor cores; older GPUs (T4 7.5, V100 7.0) run bf16 only
# as emulation, which torch.cuda.is_bf16_supported() counts as support.
NATIVE_BF16_CAPABILITY = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware.

    A GPU is asked for its own compute capability (not the current device's): native from
    :data:`NATIVE_BF16_CAPABILITY` on. CPUs are asked through PyTorch's kernel capability
    (``ATEN_CPU_CAPABILITY`` can lower it) and their AVX512-BF16 / AMX flags: without them
    PyTorch emulates bf16 matrix products, measured 118x slower than fp32 on an AVX2-only EPYC.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY  # ROCm GPUs report 9.0 and up
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
