"""Stage one's trimmed step before and after its two allocation cuts, side by side, each in a fresh process.

- before (54ba6f1): the quantizer built z_hat from zeros and K row gathers and computed every view's K + 1
  residual norms in training too, under glibc's default allocator;
- gathered: z_hat in one ``embedding_bag``, the norms only where encode's metrics read them;
- kept: the same, with freed blocks kept for reuse as every CLI process now does
  (:func:`dre_pipeline.pipeline.runtime.keep_freed_memory`).

The three give the same codes and losses (tests/test_quantizer.py); only their time and resident memory differ.

    PYTHONPATH=. python benchmarks/step_allocations.py --sizes 100000,1000000 --rounds 2 --steps 4

On ``bench --scale``'s generated graphs with the embedded SmolLM2's codebook (576 dimensions, 8,192 words), 256
seeds, 15,10,5 neighbours. Per size, the settings take turns, ``--rounds`` times; each process times ``--steps``
steps after an untimed one. The epoch estimate is encode's steps per epoch times the mean seconds per step.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

SEEDS = 256
SETTINGS = ("before", "gathered", "kept")


def forward_before(self, h):
    """54ba6f1's ``ResidualVQ.forward``: zeros plus K gathers, and the residual norms, in every step."""
    import torch
    import torch.nn.functional as F

    from dre_pipeline.model.quantizer import Quantized

    codes = self.search(h.detach())
    z_hat, norms = torch.zeros_like(h.detach()), [h.detach().norm(dim=-1)]
    for k in range(self.num_codes):
        z_hat += self.words.index_select(0, codes[:, k])
        norms.append((h.detach() - z_hat).norm(dim=-1))
    torch.stack(norms, dim=1)  # held by the view then; nothing read it in training
    return Quantized(h, h + (z_hat - h).detach(), codes, F.mse_loss(h, z_hat))


def measure(setting: str, num_nodes: int, steps: int, store_root: str) -> dict:
    """In a fresh process: ``steps`` trimmed training steps under ``setting``, after an untimed one."""
    from trimmed_step import training_setup

    from dre_pipeline.model import quantizer
    from dre_pipeline.pipeline.artifacts import Store
    from dre_pipeline.pipeline.config import EncodeConfig
    from dre_pipeline.pipeline.llm import resolve_llm
    from dre_pipeline.pipeline.runtime import keep_freed_memory
    from dre_pipeline.pipeline.stages import codebook as codebook_stage, encode

    kept = keep_freed_memory() if setting == "kept" else False
    if setting == "before":
        quantizer.ResidualVQ.forward = forward_before
    cfg = EncodeConfig(batch_nodes=SEEDS)
    store = Store(Path(store_root))
    codebook = codebook_stage.load(codebook_stage.run(cfg, resolve_llm(cfg.llm_path, store), store))
    data, train_mask, model, optimizer, sampler = training_setup(cfg, codebook, num_nodes)
    seeds = encode.epoch_seeds(train_mask, SEEDS, cfg.reconstruction_seeds, sampler.generator)
    seconds = []
    for _ in range(steps + 1):
        nodes, edges, *hops = sampler.sample_hops(next(seeds))
        begun = time.perf_counter()
        encode.train_step(model, optimizer, data, train_mask, nodes, edges, SEEDS, cfg, None, hops)
        seconds.append(time.perf_counter() - begun)
    return {"setting": setting, "nodes": num_nodes, "kept": kept, "seconds": seconds[1:],
            "steps_per_epoch": encode.steps_per_epoch(int(train_mask.sum()), SEEDS, cfg.reconstruction_seeds),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(sizes: list, rounds: int, steps: int, store_root: str) -> list:
    from trimmed_step import in_glibc_default_process

    rows = []
    for num_nodes in sizes:
        runs = {setting: [] for setting in SETTINGS}
        for round_ in range(rounds):
            for setting in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
                found = in_glibc_default_process(measure, setting, num_nodes, steps, store_root)
                print(json.dumps(found), flush=True)
                runs[setting].append(found)
        row = {"nodes": num_nodes, "steps_per_epoch": runs["before"][0]["steps_per_epoch"]}
        for setting, found in runs.items():
            times = [s for f in found for s in f["seconds"]]
            mean = sum(times) / len(times)
            row[setting] = {"seconds_per_step": mean, "steps_timed": len(times),
                            "epoch_seconds_estimate": mean * row["steps_per_epoch"],
                            "peak_rss_mb": max(f["peak_rss_mb"] for f in found)}
        for setting in SETTINGS[1:]:
            row[setting]["speedup"] = row["before"]["seconds_per_step"] / row[setting]["seconds_per_step"]
        rows.append(row)
    return rows


def main() -> None:
    from trimmed_step import save_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="graph sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per size and setting, taking turns")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--store", default=None, help="a store holding the de-quantized SmolLM2 (default: a fresh one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    store = args.store or tempfile.mkdtemp(prefix="step-allocations-")
    save_rows("step_allocations", run(sizes, args.rounds, args.steps, store),
              f"PYTHONPATH=. python benchmarks/step_allocations.py --sizes {args.sizes} --rounds {args.rounds} "
              f"--steps {args.steps}")


if __name__ == "__main__":
    main()
