"""The ``dre-pipeline`` command line (typer).

Each stage command's options are generated from its config dataclass, so the CLI, the
defaults and the artifact keys cannot drift apart. Bad input exits with code 2 and one
line on stderr.
"""

import errno
import inspect
import json
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Callable, Optional

import typer

from .pipeline.artifacts import Store
from .harness.bench_config import BenchConfig
from .pipeline.config import PRESETS, CodebookConfig, EncodeConfig, FinetuneConfig, StoreConfig
from .errors import InputError
from .pipeline import distributed, run_file
from .pipeline.runtime import check_environment, keep_freed_memory, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dr.E: graphs as words for LLMs.")


def _option(name: str, annotation, default, help: str, *flags: str) -> inspect.Parameter:
    """A keyword option; ``flags``: its spelling where it is not the name's (``--device`` for ``target_device``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, help=help))


RUN_OPTIONS = [
    _option("store", Path, Path("artifacts"), "Artifact store folder ($DRE_STORE overrides the default)."),
    _option("quiet", bool, False, "No progress bars, warnings only."),
    _option("config", Optional[Path], None, "A run file (TOML) of options by name, e.g. an artifact's run.toml; "
            "options given here win over it, and it over --preset."),
]
FORCE = _option("force", bool, False, "Recompute even when a cached artifact matches.")
PRESET = _option("preset", str, "none", f"none | {' | '.join(PRESETS)}: a named bundle of settings "
                 "(paper: the reference run's); options given here win over it.")


def _store(path: Path) -> Store:
    import os

    if path == Path("artifacts") and os.environ.get("DRE_STORE"):
        path = Path(os.environ["DRE_STORE"])
    try:  # refused now rather than after an hour of work
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise InputError(f"store folder {str(path)!r} cannot be written: {error.strerror}") from None
    return Store(path)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop) ends a run as Ctrl-C does."""


def _terminated(signum, frame):
    raise Terminated()


@contextmanager
def user_errors():
    """Turn bad input, a full disk and an interruption into one line: exit code 2, or 130 / 143 (SIGINT / SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except InputError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: no space left on device writing {error.filename or 'the store'}; "
                   "finished artifacts are kept", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt as error:
        typer.echo("interrupted: finished artifacts are kept; a rerun resumes from the last checkpoint", err=True)
        raise typer.Exit(128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)


def stage_command(name: str, config_cls, extra: tuple = (), computes: bool = True, presets: bool = True) -> Callable:
    """Register ``body(cfg, store, quiet=, [force=,] **extra)`` as a command with options from ``config_cls``.

    ``computes``: the command produces artifacts, so it takes ``--force``; ``presets``: it takes ``--preset``.
    """

    def register(body: Callable) -> Callable:
        config_names = [f.name for f in fields(config_cls)]

        def command(ctx: typer.Context, **kwargs):
            with user_errors():
                given = {option for option in kwargs if ctx.get_parameter_source(option).name != "DEFAULT"}
                kwargs, given = run_file.apply(kwargs.pop("config"), kwargs, given, options, name)
                setup_logging(kwargs["quiet"])
                check_environment()
                cfg = config_cls(**run_file.with_preset({k: kwargs[k] for k in config_names},
                                                        kwargs.get("preset", "none"), given))
                if "device" in kwargs:  # a device this machine lacks stops here, not after the work before it
                    from .pipeline.placement import resolve_device

                    kwargs["device"] = resolve_device(kwargs["device"])
                store = _store(kwargs["store"])
                run_options = {k: v for k, v in kwargs.items() if k not in (*config_names, "store", "preset")}
                if "given" in inspect.signature(body).parameters:  # the options the command line or run file set
                    run_options["given"] = given
                body(cfg, store, **run_options)

        params = [_option(f.name, f.type, f.default if f.default is not MISSING else f.default_factory(),
                          f.metadata["help"]) for f in fields(config_cls)]
        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        command.__signature__ = inspect.Signature([context] + params + RUN_OPTIONS + ([PRESET] if presets else [])
                                                  + ([FORCE] if computes else []) + list(extra))
        options = {p.name: p.annotation for p in command.__signature__.parameters.values()
                   if isinstance(p.default, typer.models.OptionInfo) and p.name != "config"}
        command.__doc__ = body.__doc__
        app.command(name)(command)
        return body

    return register


@stage_command("codebook", CodebookConfig)
def codebook(cfg: CodebookConfig, store: Store, force: bool, quiet: bool):
    """Refine the LLM's vocabulary into the VQ codebook (token-level alignment)."""
    from .pipeline import commands

    artifact = commands.codebook(cfg, store, force)
    typer.echo(f"codebook: kept {artifact.manifest['kept']}/{artifact.manifest['total']} tokens → {artifact.path}")


DEVICE = _option("device", str, "auto", "auto | cpu | cuda[:N]: where stage one trains and the LLM runs; "
                 "the LLM in bf16 where the device supports it.")
# finetune's own field; for encode a run-time setting: only --features llm loads the LLM there
QUANTIZATION = _option("quantization", str, "none", "--features llm: the LLM's weights as "
                       + FinetuneConfig.__dataclass_fields__["quantization"].metadata["help"])
LOG_DIR = _option("log_dir", Optional[Path], None, "Write the training curves as TensorBoard scalars, one folder "
                  "per run (<stage>-<key>); needs the tensorboard extra. A run-time setting: no key holds it.")


@stage_command("encode", EncodeConfig, extra=(DEVICE, QUANTIZATION, LOG_DIR))
def encode(cfg: EncodeConfig, store: Store, force: bool, quiet: bool, device, quantization: str, log_dir):
    """Stage one: multi-view GNN with dual-level residual VQ; writes codes.parquet."""
    from .pipeline import commands
    from .pipeline.placement import Placement

    artifact = commands.encode(cfg, store, force, quiet, Placement.resolve(device, quantization), log_dir)
    acc = artifact.manifest["label_head_accuracy"]
    if distributed.is_main():  # under torchrun, one summary
        typer.echo(f"encode: label head test accuracy {acc['test']:.4f} (val {acc['val']:.4f}) → {artifact.path}")


@stage_command("finetune", FinetuneConfig, extra=(DEVICE, LOG_DIR))
def finetune(cfg: FinetuneConfig, store: Store, force: bool, quiet: bool, device: str, log_dir: Optional[Path]):
    """Stage two: LoRA-finetune the LLM on graph-word prompts (runs missing upstream stages)."""
    from .api import DrE
    from .harness.status import summary_table

    artifact = DrE.from_config(cfg, store, device, quiet, log_dir).fit(force=force).artifact
    if distributed.is_main():  # under torchrun, one summary
        typer.echo(summary_table(store, artifact))


@stage_command("export", FinetuneConfig, extra=(
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                      default=typer.Argument(..., help="The bundle's folder (a new one).")),
    DEVICE,
), computes=False)
def export(cfg: FinetuneConfig, store: Store, quiet: bool, out: Path, device: str):
    """Save the fine-tuned model of these settings as a bundle (safetensors and JSON) that predict --model and
    DrE.load answer with on any store."""
    from .api import DrE

    typer.echo(f"export: {DrE.from_config(cfg, store, device, quiet).save(out)}")


MODEL = _option("model", Optional[Path], None, "A model bundle (dre-pipeline export) to answer with instead of the "
                "store's model of these settings: the bundle's settings, with --dataset, --data-dir, --split, --seed "
                "and --llm-path where given.")
BUNDLE_DATA_OPTIONS = ("dataset", "data_dir", "split", "seed")


def answering(cfg: FinetuneConfig, store: Store, device: str, quiet: bool, model: Optional[Path], given: set):
    """The ``DrE`` that answers: the store's model of ``cfg``, or the bundle ``model`` on the data options given."""
    from .api import DrE

    if model is None:
        return DrE.from_config(cfg, store, device, quiet)
    return DrE.load(model, cfg.llm_path, store, device, quiet,
                    **{name: getattr(cfg, name) for name in BUNDLE_DATA_OPTIONS if name in given})


def _node_ids(node_ids: Optional[str], node_file: Optional[Path]) -> list:
    text = node_ids or ""
    if node_file is not None:
        if not node_file.is_file():
            raise InputError(f"--node-file {node_file}: no such file")
        text += "," + node_file.read_text().replace("\n", ",")
    # integers where they read as integers; names (paper ids) stay names
    ids = [int(t) if t.lstrip("-").isdigit() else t for t in (t.strip() for t in text.split(",")) if t]
    if not ids:
        raise InputError("give --node-ids 1,2,3 or --node-file FILE (one id per line)")
    return ids


def _check_format(format: str, out: Optional[Path] = None, given: frozenset = frozenset()) -> None:
    if format not in ("text", "json"):
        raise InputError(f"--format must be text or json, got {format!r}")
    if out is not None and "format" in given:
        raise InputError("--out writes Parquet: give --out or --format, not both")


@stage_command("predict", FinetuneConfig, extra=(
    _option("node_ids", Optional[str], None, "Comma-separated node ids (integers or names, as the graph's table has them)."),
    _option("node_file", Optional[Path], None, "A file of node ids, one per line."),
    _option("new_nodes", Optional[Path], None, "New nodes to answer for, added to the graph without retraining: a "
            "table as nodes.csv (node_id, text, features where the graph has them, optionally label); with "
            "--new-edges. Without --node-ids, every new node is answered."),
    _option("new_edges", Optional[Path], None, "The new nodes' edges (src, dst), to the graph's nodes or each other."),
    _option("recode", bool, False, "With --new-nodes: the graph's own nodes also take the extended graph's codes "
            "(default: the codes the model was trained on)."),
    _option("format", str, "text", "text | json."),
    _option("out", Optional[Path], None, "Write the answers to this .parquet file as they come, a chunk of nodes "
            "at a time (never all held at once); without --node-ids, every node. The screen gets one line at the end."),
    MODEL,
    DEVICE,
), computes=False)
def predict(cfg: FinetuneConfig, store: Store, quiet: bool, node_ids: Optional[str], node_file: Optional[Path],
            new_nodes: Optional[Path], new_edges: Optional[Path], recode: bool, format: str, out: Optional[Path],
            model: Optional[Path], device: str, given: set):
    """Answer for some nodes with the saved adapter of the same settings, without retraining; --new-nodes answers
    for nodes that were not in the graph (inductive)."""
    _check_format(format, out, given)
    if out is not None:
        from .api import check_answers_path, write_answers

        check_answers_path(out)  # before the work, not after it
    if (new_nodes is None) != (new_edges is None):
        raise InputError("give --new-nodes and --new-edges together")
    ids = _node_ids(node_ids, node_file) if node_ids or node_file or (new_nodes is None and out is None) else None
    new = (new_nodes, new_edges) if new_nodes is not None else None
    chunks = answering(cfg, store, device, quiet, model, given).predict_chunks(ids, new, recode)
    if not distributed.is_main():  # under torchrun, one answer: the others score their shares
        for _ in chunks:
            pass
        return
    if out is not None:
        rows, correct, labelled = write_answers(chunks, out)
        accuracy = f", {correct} of {labelled} labelled nodes correct ({100 * correct / labelled:.2f} %)" if labelled else ""
        typer.echo(f"wrote {rows} answers to {out}{accuracy}")
        return
    if format == "json":
        typer.echo(json.dumps([row for rows in chunks for row in rows], indent=2))
        return
    for rows in chunks:
        for row in rows:
            mark = {True: "✓", False: "✗", None: " "}[row["correct"]]
            typer.echo(f"{row['node_id']!s:>6} {row['split']:<6} label={row['label'] or '?':<24} "
                       f"prediction={row['prediction']:<24} {mark} score={row['scores'][row['prediction']]:.3f}")


@stage_command("explain", FinetuneConfig, extra=(
    inspect.Parameter("node_id", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Argument(..., help="The node to explain (its id: an integer or a name).")),
    _option("format", str, "text", "text | json."),
    MODEL,
    DEVICE,
), computes=False)
def explain(cfg: FinetuneConfig, store: Store, quiet: bool, node_id: str, format: str, model: Optional[Path],
            device: str, given: set):
    """One node: its words per hop, its text, the prompt, the prediction with per-class scores, the true label."""
    from .harness.report import explanation_text

    _check_format(format)
    row = answering(cfg, store, device, quiet, model, given).explain(_node_ids(node_id, None)[0])
    typer.echo(json.dumps(row, indent=2) if format == "json" else explanation_text(row))


@stage_command("report", FinetuneConfig, extra=(
    _option("out", Optional[Path], None, "Report folder (default: <store>/report)."),
    _option("explain_nodes", int, 6, "Test nodes shown with their words and prompts (the paper's Table 4)."),
    DEVICE,
), computes=False)
def report(cfg: FinetuneConfig, store: Store, quiet: bool, out: Optional[Path], explain_nodes: int, device: str):
    """Write index.html and PNG figures about the fine-tuned model of these settings (opens with no server)."""
    from .harness.report import write_report

    index = write_report(cfg, store, out or store.root / "report", explain_nodes, device=device, quiet=quiet)
    typer.echo(f"report: {index}")


@stage_command("status", StoreConfig, computes=False, presets=False)
def status(cfg: StoreConfig, store: Store, quiet: bool):
    """The artifact store at a glance: keys, sizes, headline metrics, and which artifacts were built from an older
    version of this graph or LLM (stale) or from another (other)."""
    from .harness.status import inventory, status_text

    typer.echo(status_text(inventory(cfg, store), store.root))


@stage_command("clean", StoreConfig, extra=(
    _option("dry_run", bool, False, "Only list what would be removed."),
    _option("stage", Optional[str], None, "Only this stage: llm | codebook | encode | finetune."),
    _option("stale_only", bool, False, "Only artifacts that are stale for this graph and LLM (see status)."),
), computes=False, presets=False)
def clean(cfg: StoreConfig, store: Store, quiet: bool, dry_run: bool, stage: Optional[str], stale_only: bool):
    """Remove artifact folders and leftovers of interrupted runs (all, one stage's, or the stale ones);
    what a live run uses is kept. Exit code 1 when something could not be removed."""
    from .harness.status import clean as remove, human_size

    outcomes = remove(cfg, store, stage, stale_only, dry_run)
    verb = "would remove" if dry_run else "removed"
    for r in outcomes:
        if r.error:
            typer.echo(f"error: cannot remove {r.path}: {r.error}", err=True)
        else:
            typer.echo(f"kept {r.path} ({human_size(r.size)}): in use by a live run" if r.in_use
                       else f"{verb} {r.path} ({human_size(r.size)})")
    removed = [r for r in outcomes if not (r.in_use or r.error)]
    typer.echo(f"{verb} {len(removed)} folders and files, {human_size(sum(r.size for r in removed))}")
    if any(r.error for r in outcomes):
        raise typer.Exit(1)


@stage_command("plan", FinetuneConfig, extra=(
    # not DEVICE: a plan may be for a GPU this machine lacks
    _option("target_device", str, "auto", "auto | cpu | cuda[:N]: where the LLM stages will run (this machine need "
            "not have it).", "--device"),
    _option("device_memory", Optional[str], None, "The device's memory, e.g. 24GB or 80GB (default: the device's "
            "own, where this machine has it; a CPU's is the host's)."),
    _option("host_memory", Optional[str], None, "The host's memory, where stage one runs (default: this machine's)."),
    _option("nodes", Optional[int], None, "Instead of --dataset: the graph's node count (with --edges, --feature-dim, "
            "--classes)."),
    _option("edges", Optional[int], None, "Its edges as listed (each becomes two messages, one per direction)."),
    _option("feature_dim", Optional[int], None, "Its node feature width."),
    _option("classes", Optional[int], None, "Its class count."),
    _option("text_tokens", Optional[int], None, "Node text tokens of the longest prompt (default: its longest text "
            "in words x 1.4, up to --max-text-tokens, where the graph has text and --use-text is on, else 0)."),
    _option("prefix_tokens", Optional[int], None, "Tokens of the shared prefix (default: estimated from the class names)."),
    _option("format", str, "text", "text | json."),
), computes=False)
def plan(cfg: FinetuneConfig, store: Store, quiet: bool, target_device: str, device_memory: Optional[str],
         host_memory: Optional[str], nodes: Optional[int], edges: Optional[int],
         feature_dim: Optional[int], classes: Optional[int], text_tokens: Optional[int],
         prefix_tokens: Optional[int], format: str):
    """Each stage's expected peak memory and whether it fits, from the model's config and the graph's sizes
    (no weights are loaded)."""
    from dataclasses import asdict

    from .harness import memory_plan as mp, plan_inputs

    _check_format(format)
    where = plan_inputs.target(target_device, device_memory, host_memory, cfg.precision)
    graph, names = plan_inputs.graph_shape(cfg, store, nodes, edges, feature_dim, classes, text_tokens,
                                           prefix_tokens)
    model = plan_inputs.model_shape(*plan_inputs.read_config(cfg.llm_path))
    rows, graph, quantization = plan_inputs.planned(cfg, model, graph, where)
    if format == "json":
        typer.echo(json.dumps({"model": model.name, "graph": asdict(graph), "target": asdict(where),
                               "rows": [{**asdict(r), "total": r.total, "fits": r.fits} for r in rows]}, indent=2))
        return
    heading = (f"{model.name} on {names}: {graph.nodes:,} nodes, {graph.messages:,} messages, {graph.feature_dim} "
               f"features, {graph.classes} classes; prompt {graph.prefix_tokens} + {graph.prompt_tokens} tokens; "
               f"{where.device} ({mp.human(where.device_bytes)}, {where.dtype}"
               f", weights {quantization}), host {mp.human(where.host_bytes)}")
    typer.echo(mp.table(rows, heading))


@stage_command("bench", BenchConfig, computes=False)
def bench(cfg: BenchConfig, store: Store, quiet: bool):
    """Dr.E, its ablations and the GNN / soft-prompt baselines on the same splits; writes benchmarks/RESULTS.md."""
    from .harness.bench import run

    results = run(cfg, store, quiet=quiet, command="dre-pipeline " + " ".join(sys.argv[1:]))
    typer.echo(f"bench: {results} and {Path(cfg.out) / 'RESULTS.md'}")


def main() -> None:
    keep_freed_memory()
    with distributed.leaving_together():
        app()


if __name__ == "__main__":
    sys.exit(main())
