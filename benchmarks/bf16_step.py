"""The LLM's training step and forward pass in fp32 and in bf16 on this CPU, side by side in one process.

A batch of 8 rows of 96 random token ids through the embedded SmolLM2 (de-quantized in ``--store``): a forward
and backward with the top 4 decoder layers trainable (a top-layer adapter's share), and a forward alone; each
the mean of 3 after one untimed, both dtypes twice, alternating. Only where the CPU multiplies bf16 natively
(``dre_pipeline.hardware.native_bf16``) does bf16 have a chance; the AVX2 class emulates it.

    PYTHONPATH=. python benchmarks/bf16_step.py --store artifacts
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.llm import resolve_llm

ROWS, TOKENS, TRAINED_LAYERS, REPEATS = 8, 96, 4, 3


def seconds(fn) -> float:
    fn()
    begun = time.perf_counter()
    for _ in range(REPEATS):
        fn()
    return (time.perf_counter() - begun) / REPEATS


def measure(path: Path, dtype: torch.dtype, ids: torch.Tensor) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.requires_grad_(False)
    model.model.layers[-TRAINED_LAYERS:].requires_grad_(True)

    def step():
        model(input_ids=ids).logits[:, -1].float().logsumexp(-1).sum().backward()

    with torch.no_grad():
        forward = seconds(lambda: model(input_ids=ids))
    return {"dtype": str(dtype).split(".")[-1], "train_step_seconds": seconds(step), "forward_seconds": forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    path = resolve_llm(None, Store(args.store)).folder
    print(f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads, {path}")
    ids = torch.randint(0, 49_000, (ROWS, TOKENS), generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16) * 2:
        print(measure(path, dtype, ids), flush=True)


if __name__ == "__main__":
    main()
