"""``dre-pipeline bench``'s options: which rows, seeds and mode (the CLI generates them as it does a stage's)."""

from dataclasses import dataclass, field
from typing import Optional

from ..errors import InputError
from ..pipeline.config import LLMConfig, _help

# Each replaces the main rows with a benchmark of its own, so two at once would leave one silently unrun.
MODES = ("extra", "speed", "scale", "economy", "end_to_end")


@dataclass
class BenchConfig(LLMConfig):
    """The benchmark harness: Dr.E, its ablations and the baselines on one split, side by side."""

    dataset: str = field(default="cora", metadata=_help("Dataset to benchmark (see encode --dataset)."))
    data_dir: Optional[str] = field(default=None, metadata=_help("Local raw data (default $DRE_DATA_DIR)."))
    seeds: int = field(
        default=3,
        metadata=_help("Seeds (random 60/20/20 splits) for the main rows.", check="at-least-1"),
    )
    ablation_seeds: int = field(
        default=1,
        metadata=_help("Seeds for the rows behind --extra (ablations, joint pass, soft prompt, text only).",
                       check="at-least-1"),
    )
    extra: bool = field(
        default=False,
        metadata=_help("Run the rows that do not fit make bench's time budget, once each (--ablation-seeds), "
                       "instead of the main rows."),
    )
    rows: str = field(
        default="",
        metadata=_help(
            "Comma-separated subset of: mlp, gcn, sage, {mlp,gcn,sage}-{bow,sbert,llm}, text, soft, one-view, single-code, "
            "no-inter, no-refine, no-pseudo, dre-words, dre, joint (default: the main rows the graph can run, or with "
            "--extra the others; the -llm, text and dre-words rows need a graph with text). With --economy: a subset of "
            "dre, fp32, bf16, plain, plain-fp32, plain-bf16, 8bit, 4bit (default: all but the two that name the "
            "precision --precision auto takes here)."
        ),
    )
    ft_epochs: int = field(
        default=2,
        metadata=_help("Fine-tuning epochs of the LLM rows (the soft-prompt row runs 1: it has no layer cache).",
                       check="at-least-1"),
    )
    quick: bool = field(
        default=False, metadata=_help("Plumbing check: synthetic graph, tiny random Llama, a few epochs (for CI).")
    )
    speed: bool = field(
        default=False,
        metadata=_help("Instead of the rows: stage one's code search and encode, before and after, per CPU class."),
    )
    scale: bool = field(
        default=False,
        metadata=_help("Instead of the rows: stage one on generated graphs of 100k, 300k and 1M nodes (training "
                       "steps, whole-graph encoding, peak memory, the search against a plain matmul)."),
    )
    economy: bool = field(
        default=False,
        metadata=_help("Instead of the rows: Dr.E's token economy against a plain PEFT + transformers forward, and "
                       "its weights in 8 and 4 bits, seed 0 (accuracy, train prompts/s, peak memory), on --dataset."),
    )
    end_to_end: bool = field(
        default=False,
        metadata=_help("Instead of the rows: codebook, encode, finetune and predict as commands on a generated graph "
                       "of ogbn-arxiv's 169,343 nodes with text (wall time and peak memory per stage, test accuracy "
                       "beside GraphSAGE's)."),
    )
    out: str = field(default="benchmarks", metadata=_help("Where results/<dataset>.json, RESULTS.md and the chart go."))

    def __post_init__(self):
        super().__post_init__()
        flags = {mode: "--" + mode.replace("_", "-") for mode in MODES}
        given = [flags[mode] for mode in MODES if getattr(self, mode)]
        if len(given) > 1:
            raise InputError(f"{' and '.join(given)}: one benchmark at a time "
                             f"({', '.join(flags.values())}, or none for the main rows)")
