r"""Stage two's step costs by LoRA depth: how far the token economy can go against a plain PEFT loop.

``bench --economy`` measures Dr.E at 2.85x the plain PEFT + transformers forward on Cora (fp32, 2 epochs), where
issue 28 asks for 5x. This script takes the three costs behind that ratio apart, per LoRA depth L (LoRA on the
top L of the 30 decoder layers), on real prompts of ``--dataset`` (its stage one in ``--store``), in fp32:

- ``fill``: the frozen-layer cache filled for one batch of new prompts (Dr.E, once per prompt: epoch 1), as the
  first step on a batch less a second step on it;
- ``step``: Dr.E's training step, cache warm (the shared prefix once, the top L layers, backward through them);
- ``plain``: the plain row's step (``--no-token-economy``): every full padded prompt through every layer.

Each is the median of ``--repeats`` batches of training nodes (the fine-tuning batch size, 8) after one untimed,
the three in turn per batch, one model per depth. A run of E epochs over n batches then costs about
:math:`n(\mathrm{fill} + E\,\mathrm{step})` against :math:`nE\,\mathrm{plain}`, so its ratio is

.. math::
    \rho_E = \frac{E\,\mathrm{plain}}{\mathrm{fill} + E\,\mathrm{step}}, \qquad
    \rho_\infty = \frac{\mathrm{plain}}{\mathrm{step}},

without the validation passes (both rows score validation each epoch). Accuracy at other depths is not measured.

    DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=.:benchmarks python benchmarks/economy_depth.py --store S
"""

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from dre_pipeline.model.predictor import FullPromptPredictor, GraphWordPredictor
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.pipeline.llm import attach_lora, load_model, lora_targets
from dre_pipeline.pipeline.placement import CPU
from dre_pipeline.pipeline.stages.code_table import read_codes
from dre_pipeline.pipeline.stages.finetune.node_tokens import StoredWords
from dre_pipeline.pipeline.stages.finetune.training import (TrainedParameters, optimizer_for, train_step,
                                                            training_targets)
from dre_pipeline.pipeline.stages.finetune.workspace import with_settings
from trimmed_step import save_rows

EPOCHS = (2, 20)  # the bench's fine-tuning epochs, and the CLI's most


def costs(ws, depth: int, batches: list, repeats: int) -> dict:
    """Median seconds of ``fill``, ``step`` and ``plain`` per batch at LoRA depth ``depth`` (the first batch untimed)."""
    cfg = replace(ws.cfg, lora_layers=depth)
    ws = with_settings(ws, cfg)
    torch.manual_seed(cfg.seed)
    model = attach_lora(load_model(ws.llm, CPU.device, "none", "fp32"), cfg, lora_targets(ws.llm, cfg.lora_targets))
    pad = ws.tokenizer.pad_token_id
    dre, plain = GraphWordPredictor(model, ws.template, pad, depth), FullPromptPredictor(model, ws.template, pad, depth)
    node_tokens = StoredWords(ws, read_codes(ws.encode.path / "codes.parquet", cfg.num_views))
    optimizer, scheduler = optimizer_for(TrainedParameters(model), node_tokens, cfg, total_steps=10 * len(batches))
    targets, weights = training_targets(ws, None)
    seconds = {"fill": [], "step": [], "plain": []}
    for i, batch in enumerate(batches[: repeats + 1]):
        def step(predictor) -> float:
            started = time.perf_counter()
            train_step(predictor, node_tokens, optimizer, scheduler, batch, targets, weights, cfg)
            return time.perf_counter() - started

        new_prompts = step(dre)  # fills the cache with the batch's prompts, then trains
        measured = {"step": step(dre), "plain": step(plain)}
        measured["fill"] = new_prompts - measured["step"]
        if i:
            for name, value in measured.items():
                seconds[name].append(value)
    row = {"lora_layers": depth, "frozen_layers": len(dre.frozen_layers), "batch_size": len(batches[0]),
           **{f"{name}_seconds": statistics.median(v) for name, v in seconds.items()}}
    row["steady_ratio"] = row["plain_seconds"] / row["step_seconds"]
    for epochs in EPOCHS:
        row[f"ratio_{epochs}_epochs"] = epochs * row["plain_seconds"] / (row["fill_seconds"] + epochs * row["step_seconds"])
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--store", default="artifacts")
    parser.add_argument("--depths", default="1,2,4,8,16", help="LoRA depths, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ws = commands.workspace(FinetuneConfig(dataset=args.dataset, precision="fp32"), Store(args.store), device="cpu")
    train_nodes = np.flatnonzero(training_targets(ws, None)[1].numpy() > 0)
    order = np.random.default_rng(ws.cfg.seed).permutation(train_nodes)
    size = ws.cfg.batch_size
    batches = [np.sort(order[i: i + size]) for i in range(0, (args.repeats + 1) * size, size)]
    print(f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads", flush=True)
    rows = [costs(ws, int(d), batches, args.repeats) for d in args.depths.split(",")]
    save_rows("economy_depth", rows, "DRE_DATA_DIR=../shared/datasets/planetoid PYTHONPATH=.:benchmarks python "
              f"benchmarks/economy_depth.py --dataset {args.dataset} --depths {args.depths} --repeats {args.repeats}",
              dataset=args.dataset, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
