"""``dre-pipeline explain`` and ``report``: what a fine-tuned Dr.E model reads and answers, for people.

``explain`` shows one node as ``predict`` answers it: its words per hop, its text, the
prompt, the per-class scores. ``report`` writes a folder holding ``index.html`` and PNG
figures: codebook perplexity per view over stage-one epochs (the paper's Figure 4), both
stages' training curves, the test confusion matrix, the most frequent words per view and
per class, and a few explained nodes (the paper's Table 4). The page refers to its
figures by relative path and carries its style inline, so it opens from disk with no
server and no network.
"""

import html
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure  # the object API renders with Agg and touches no global backend
from matplotlib.ticker import MaxNLocator

from ..pipeline.artifacts import Artifact, Store
from ..pipeline.config import FinetuneConfig
from ..errors import InputError
from ..pipeline import commands
from ..pipeline.stages.finetune import predict as predict_stage

TOP_WORDS = 10
DPI = 110


def class_shares(scores: dict) -> dict:
    """Each class's share of the probability the LLM gives to any class name.

    The scores are log-probabilities over the whole vocabulary (or of whole answers), so
    they rarely sum to one; renormalised over the classes they read as a distribution.
    """
    values = np.array(list(scores.values()), dtype=np.float64)
    shares = np.exp(values - values.max())
    return dict(zip(scores, (shares / shares.sum()).tolist()))


def explanation_text(row: dict) -> str:
    """One node from ``predict.run``, laid out for a terminal."""
    verdict = "correct" if row["correct"] else "wrong"
    lines = [f"node {row['node_id']} ({row['split']})  label: {row['label']}  "
             f"prediction: {row['prediction']} ({verdict})",
             "scores (log-probability, share among the classes):"]
    shares, width = class_shares(row["scores"]), max(map(len, row["scores"]))
    for name, score in sorted(row["scores"].items(), key=lambda item: -item[1]):
        lines.append(f"  {name:<{width}}  {score:9.3f}  {shares[name]:6.1%}")
    lines.append("words per view:")
    lines += [f"  {t}-hop: {' '.join(words)}" for t, words in enumerate(row["words"], start=1)]
    if row["title"]:
        lines += [f"title: {row['title']}", f"abstract: {shorten(row['abstract'])}"]
    elif row["text"] is not None:
        lines.append(f"text: {shorten(row['text'])}")
    return "\n".join(lines + ["prompt:", row["prompt"]])


def shorten(text: str, chars: int = 300) -> str:
    """``text`` on one line, cut at a word boundary near ``chars`` characters."""
    rest = " ".join(text.split())
    return rest if len(rest) <= chars else rest[:chars].rsplit(" ", 1)[0] + " …"


def pick_nodes(predictions: dict, count: int) -> list:
    """``count`` test nodes taken from each true class in turn, so the table shows several classes."""
    taken, keyed = Counter(), []
    for node, label, split in zip(predictions["node_id"], predictions["label"], predictions["split"]):
        if split == "test":
            keyed.append((taken[label], label, node))
            taken[label] += 1
    return [node for *_, node in sorted(keyed)[:count]]


# ----------------------------------------------------------------------------- figures


def _whole_numbers_on_x(*axes) -> None:
    for ax in axes:  # epochs and steps: no 2.5 ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def perplexity_figure(history: list, best_epoch: int) -> Figure:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    for t, series in enumerate(zip(*(h["perplexity"] for h in history)), start=1):
        ax.plot(epochs, series, label=f"{t}-hop view")
    ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="kept model")
    ax.set(xlabel="stage-one epoch", ylabel="codebook perplexity (Eq. 11)", title="Codebook perplexity per view")
    ax.legend()
    _whole_numbers_on_x(ax)
    return fig


def stage_one_figure(history: list, best_epoch: int) -> Figure:
    fig = Figure(figsize=(11, 3.6))
    losses, accuracy = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for name in ("loss", "feature", "adjacency", "label", "commitment"):
        losses.plot(epochs, [h[name] for h in history], label="total" if name == "loss" else name)
    losses.set_yscale("log")  # the parts differ by orders of magnitude
    losses.set(xlabel="epoch", ylabel="loss", title="Stage one: losses")
    for split in ("train", "val", "test"):
        accuracy.plot(epochs, [h["accuracy"][split] for h in history], label=split)
    accuracy.set(xlabel="epoch", ylabel="accuracy", title="Stage one: label head accuracy", ylim=(0, 1))
    for ax in (losses, accuracy):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.legend()
    _whole_numbers_on_x(losses, accuracy)
    return fig


def stage_two_figure(history: list) -> Figure:
    fig = Figure(figsize=(11, 3.6))
    loss, validation = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    loss.plot(steps, [h["train_loss"] for h in history], "o-")
    loss.set(xlabel="step", ylabel="mean answer-token loss", title="Stage two: training loss")
    validation.plot(steps, [h["val_accuracy"] for h in history], "o-", label="accuracy")
    validation.plot(steps, [h["val_macro_f1"] for h in history], "s-", label="macro-F1")
    validation.set(xlabel="step", ylabel="validation", title="Stage two: validation", ylim=(0, 1))
    validation.legend()
    _whole_numbers_on_x(loss, validation)
    return fig


def confusion_figure(confusion: list, names: list) -> Figure:
    matrix, n = np.array(confusion), len(names)
    side = max(4.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    if n <= 15:  # beyond that the numbers no longer fit their cells
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    return fig


def word_counts(codes: dict, num_views: int, rows=None) -> list:
    """Per view, how often each word is among the codes of ``rows`` (default: every node)."""
    rows = range(len(codes["node_id"])) if rows is None else rows
    return [Counter(w for i in rows for w in codes[f"view{t}_words"][i]) for t in range(1, num_views + 1)]


def _bars(ax, counts: Counter, title: str) -> None:
    words, heights = zip(*counts.most_common(TOP_WORDS)) if counts else ((), ())
    ax.barh(range(len(words)), heights)
    ax.set_yticks(range(len(words)), words)
    ax.invert_yaxis()  # most frequent on top
    ax.set_title(title, fontsize=10)


def bar_grid(panels: list, title: str, columns: int) -> Figure:
    """One horizontal bar chart of the most frequent words per (title, Counter) panel."""
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(3.4 * columns, 0.3 * TOP_WORDS * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, (panel_title, counts) in zip(axes, panels):
        _bars(ax, counts, panel_title)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- the page


def _table(rows: list) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{cells}</table>"


def _explained_table(rows: list, num_views: int) -> str:
    with_text = any(row["text"] is not None for row in rows)
    head = "".join(f"<th>{h}</th>" for h in ["node", "split", "label", "prediction", "share"]
                   + [f"{t}-hop words" for t in range(1, num_views + 1)] + ["text"] * with_text + ["prompt"])
    body = []
    for row in rows:
        cells = [row["node_id"], row["split"], row["label"],
                 f"{row['prediction']} {'✓' if row['correct'] else '✗'}",
                 f"{class_shares(row['scores'])[row['prediction']]:.1%}"] + [" ".join(w) for w in row["words"]]
        cells += [f"{row['title']}: {shorten(row['abstract'])}" if row["title"] else
                  shorten(row["text"] or "")] * with_text
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                    + f"<td><details><summary>show</summary><pre>{html.escape(row['prompt'])}</pre></details></td></tr>")
    return f"<table class='nodes'><tr>{head}</tr>{''.join(body)}</table>"


STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
table.summary th { background: #f4f4f4; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
pre { white-space: pre-wrap; font-size: 0.85em; }
"""


def render_html(title: str, summary: list, figures: list, explained: list, num_views: int, settings: dict) -> str:
    """The page: summary table, figures with captions, explained nodes, settings."""
    parts = [f"<h1>{html.escape(title)}</h1>", _table(summary)]
    for name, caption in figures:
        parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if explained:
        parts += ["<h2>Explained test nodes</h2>", _explained_table(explained, num_views)]
    parts.append(f"<details><summary>settings</summary><pre>{html.escape(json.dumps(settings, indent=2))}</pre></details>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def summary_rows(finetune: Artifact, encode: Artifact, metrics: dict) -> list:
    m, final = finetune.manifest, metrics["final"]
    rows = [
        ("dataset", m["dataset"]),
        ("LLM", m["llm"]["name"]),
        ("artifacts", f"finetune {finetune.key}, encode {encode.key}, codebook {encode.manifest['codebook']}"),
        ("stage one: label head test accuracy", f"{encode.manifest['label_head_accuracy']['test']:.4f}"),
        ("stage one: codebook perplexity per view", " / ".join(f"{p:.1f}" for p in encode.manifest["perplexity"])),
        ("Dr.E validation accuracy", f"{final['val']['accuracy']:.4f}"),
        ("Dr.E test accuracy (macro-F1)", f"{final['test']['accuracy']:.4f} ({final['test']['macro_f1']:.4f})"),
        ("scoring", metrics["finetune"]["scoring"]),
        ("trained tokens/s", metrics["finetune"]["trained_tokens_per_second"]),
    ]
    if "joint" in metrics:
        joint = metrics["joint"]
        rows.append(("joint pass", f"GNN weights moved {joint['gnn_weight_change']:.4f}; "
                                   f"{joint['codes_changed_fraction']:.1%} of codes changed"))
    return rows + [("created", m["created"])]


def build_figures(stage_one: dict, metrics: dict, codes: dict, names: list, num_views: int) -> list:
    """(file name, figure, caption) of every figure, from the two stages' metrics and the codes the LLM reads."""
    labels = np.array(codes["label"])
    per_view = word_counts(codes, num_views)
    per_class = [(name, sum(word_counts(codes, num_views, np.flatnonzero(labels == c)), Counter()))
                 for c, name in enumerate(names)]
    history, best = stage_one["history"], stage_one["best_epoch"]
    return [
        ("perplexity.png", perplexity_figure(history, best),
         "Codebook perplexity of each view over stage-one epochs (the paper's Figure 4); higher means more codes in use."),
        ("stage_one.png", stage_one_figure(history, best),
         "Stage one: the loss parts and the label head's accuracy per epoch; the dashed line marks the kept model."),
        ("stage_two.png", stage_two_figure(metrics["finetune"]["history"]),
         "Stage two: LoRA training loss and validation accuracy / macro-F1 at each evaluation."),
        ("confusion.png", confusion_figure(metrics["final"]["test"]["confusion"], names),
         "Test confusion matrix of the fine-tuned LLM (rows: true class, columns: prediction)."),
        ("words_per_view.png", bar_grid([(f"{t}-hop view", c) for t, c in enumerate(per_view, start=1)],
                                        "Most frequent words per view", columns=num_views),
         "The words the LLM reads most often, per hop view, over all nodes."),
        ("words_per_class.png", bar_grid(per_class, "Most frequent words per class (all views)",
                                         columns=min(4, len(names))),
         "The words the LLM reads most often for the nodes of each class, over all views."),
    ]


def write_report(cfg: FinetuneConfig, store: Store, out: Path, explain_nodes: int, device: str = "auto",
                 quiet: bool = False) -> Path:
    """Render the report of the fine-tuned model these settings name (never trains); return index.html."""
    if explain_nodes < 0:
        raise InputError(f"--explain-nodes must be 0 or more, got {explain_nodes}")
    ws = commands.workspace(cfg, store, quiet, cached_only=True, device=device)
    finetune = store.find("finetune", ws.key)
    if finetune is None:
        raise InputError("no fine-tuned model for these settings: run `dre-pipeline finetune` with the same options first")
    metrics = json.loads((finetune.path / "metrics.json").read_text())
    stage_one = json.loads((ws.encode.path / "metrics.json").read_text())
    codes = pq.read_table(finetune.path / "codes.parquet").to_pydict()
    figures = build_figures(stage_one, metrics, codes, finetune.manifest["class_names"], cfg.num_views)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig, _ in figures:
        fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    chosen = pick_nodes(pq.read_table(finetune.path / "predictions.parquet").to_pydict(), explain_nodes)
    explained = predict_stage.run(ws, predict_stage.from_store(ws), chosen) if chosen else []
    page = render_html(f"Dr.E report: {finetune.manifest['dataset']}", summary_rows(finetune, ws.encode, metrics),
                       [(name, caption) for name, _, caption in figures], explained, cfg.num_views,
                       finetune.manifest["settings"])
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
