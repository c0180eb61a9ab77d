"""The bench's rows: Dr.E, its ablations (the paper's Table 3), the baselines and the --economy rows, and which
of them a run takes."""

from dataclasses import dataclass, field

from ..errors import InputError


@dataclass(frozen=True)
class Row:
    label: str
    kind: str  # gnn: a baseline trained here; llm: through the normal stages
    overrides: dict = field(default_factory=dict)  # FinetuneConfig fields
    main: bool = True  # in make bench, all --seeds; else behind --extra, --ablation-seeds
    needs_text: bool = False  # runs on graphs with text only
    versus: str = "dre"  # --economy: the row whose training prompts/s its own are a multiple of


# The joint pass is one of the paper's Table 3 ablations.
ROWS = {
    "mlp": Row("MLP (no graph)", "gnn"),
    "gcn": Row("GCN", "gnn"),
    "sage": Row("GraphSAGE", "gnn"),
    **{f"{model}-{kind}": Row(f"{label} on {name}", "gnn", {"features": kind}, needs_text=True)
       for kind, name in (("bow", "a bag of words of the text"), ("sbert", "sentence embeddings of the text (MiniLM)"),
                          ("llm", "LLM text features"))
       for model, label in (("mlp", "MLP"), ("gcn", "GCN"), ("sage", "GraphSAGE"))},
    # Fine-tuning on ~54 tokens of text per prompt costs about 2x a Dr.E row: once, behind --extra.
    "text": Row("LLM fine-tuned on the node's text alone (no graph)", "llm", {"node_tokens": "none"}, main=False,
                needs_text=True),
    # The GNN runs inside every step, so no frozen-layer cache: an epoch costs ~4x a Dr.E epoch; one is its budget.
    "soft": Row("LLM + GNN soft prompt, no VQ (LLaGA-style), 1 epoch", "llm", {"node_tokens": "soft", "ft_epochs": 1},
                main=False),
    "one-view": Row("Dr.E, one view (1-hop only)", "llm", {"num_views": 1}, main=False),
    "single-code": Row("Dr.E, one code per view (no intra-layer residual)", "llm", {"codes_per_view": 1}, main=False),
    "no-inter": Row("Dr.E without inter-layer residual", "llm", {"inter_residual": False}, main=False),
    "no-refine": Row("Dr.E without token refinement", "llm", {"refine": False}, main=False),
    "no-pseudo": Row("Dr.E without pseudo-labels (training nodes only)", "llm", {"distill_weight": 0.0}, main=False),
    "dre-words": Row("Dr.E, graph words only (no text)", "llm", {"use_text": False}, needs_text=True),
    "dre": Row("Dr.E (full: graph words, and text where the graph has it)", "llm"),
    "joint": Row("Dr.E + joint pass", "llm", {"joint": True}, main=False),
}
# bench --economy: Dr.E's token economy against the plain way at the same precision, each precision named beside
# auto's, and its weights in 8 and 4 bits (on CPU too). "dre" is the bench's own row (the cache they share).
PLAIN = "Plain PEFT + transformers forward: full padded prompts every step, no prefix or frozen-layer cache"
ECONOMY_ROWS = {
    "dre": ROWS["dre"],
    "fp32": Row("Dr.E in fp32 (--precision fp32)", "llm", {"precision": "fp32"}),
    "bf16": Row("Dr.E in bf16 (--precision bf16)", "llm", {"precision": "bf16"}),
    "plain": Row(PLAIN, "llm", {"token_economy": False}),
    "plain-fp32": Row(f"{PLAIN}, in fp32", "llm", {"token_economy": False, "precision": "fp32"}, versus="fp32"),
    "plain-bf16": Row(f"{PLAIN}, in bf16", "llm", {"token_economy": False, "precision": "bf16"}, versus="bf16"),
    "8bit": Row("Dr.E, 8-bit weights (bitsandbytes LLM.int8)", "llm", {"quantization": "8bit"}),
    "4bit": Row("Dr.E, 4-bit nf4 weights (bitsandbytes)", "llm", {"quantization": "4bit"}),
}
ALL_ROWS = {**ROWS, **ECONOMY_ROWS}
# per dataset; Llama-2-7B for Dr.E (AAAI 2025), whose Cora is the raw-text one
PAPER = {"cora": {"gcn": 87.78, "sage": 88.24, "dre": 91.33}, "cora-text": {"dre": 91.33}}


def selected_rows(rows: str, has_text: bool, extra: bool = False, has_features: bool = True) -> list:
    """``--rows``, or the main rows the graph can run (``extra``: the others; the text rows need a graph with text;
    on a graph of text alone the plain GNN rows would repeat the rows on its default text features)."""
    chosen = chosen_rows(rows, ROWS)
    if not has_text and (textual := [r for r in chosen if ROWS[r].needs_text]):
        raise InputError(f"--rows: {', '.join(textual)} need a graph with text")
    return chosen or [r for r, spec in ROWS.items() if (has_text or not spec.needs_text) and spec.main != extra
                      and (has_features or spec.kind != "gnn" or "features" in spec.overrides)]


def economy_rows(rows: str, auto_precision: str) -> list:
    """``--economy --rows``: a subset of the economy rows, in the table's order; none given: all but the two that
    name ``auto_precision``, what ``--precision auto`` computes in here (the "dre" and "plain" rows compute that)."""
    chosen = chosen_rows(rows, ECONOMY_ROWS) or [r for r, spec in ECONOMY_ROWS.items()
                                                  if spec.overrides.get("precision") != auto_precision]
    return [r for r in ECONOMY_ROWS if r in chosen]


def chosen_rows(rows: str, known: dict) -> list:
    """The rows ``--rows`` names, each one of ``known``."""
    chosen = [r.strip() for r in rows.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in known]
    if unknown:
        raise InputError(f"--rows: unknown {unknown}; choose from {', '.join(known)}")
    return chosen
