"""A fine-tuned model in one folder, to keep and hand on, as safetensors and JSON only (``dre-pipeline export``,
``--model PATH``; :meth:`~dre_pipeline.api.DrE.save` / :meth:`~dre_pipeline.api.DrE.load`).

::

    manifest.json             format, the package version, the LLM's name and identity, each file's SHA-256
    settings.json             every setting of the run, its class names, the graph it trained on, its features
    codebook.json             the kept tokens (ids and words): the codebook is the LLM's own rows of them
    stage_one.safetensors     the stage-one GNN (encoder, label head, feature decoder)
    in_the_loop.safetensors   after --joint or --node-tokens soft: the GNN the LLM was trained with
    adapter/                  the LoRA adapter (PEFT's adapter_model.safetensors and adapter_config.json)

A bundle answers on any store: stage one's words are recomputed by its GNN from the graph given, which on the
graph it trained on are the words it read. Loading checks every file against the manifest and refuses a bundle
whose LLM is not the one given.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .artifacts import file_checksums, write_json
from .config import FinetuneConfig
from ..errors import InputError
from .llm import ResolvedLLM, load_embeddings
from ..model.codebook import Codebook
from .stages.finetune.predict import Trained

FORMAT = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Bundle:
    """A bundle as read from its folder (checked)."""

    path: Path
    cfg: FinetuneConfig  # the run's settings; llm_path as the run had it
    class_names: list
    llm: dict  # name, identity
    graph: dict  # the graph it trained on: name, fingerprint, nodes
    token_ids: list
    words: list


def save(path: Path, ws, trained: Trained, extra: dict) -> Path:
    """Write the bundle of the model ``trained`` on workspace ``ws`` to ``path`` (which must not exist), complete
    or not at all. ``extra``: what the run measured (accuracy), kept in ``settings.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise InputError(f"{path} exists: export into a new folder")
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        write_json(tmp / "settings.json", {"settings": asdict(ws.cfg), "class_names": ws.data.class_names,
                                           "graph": {"name": ws.data.name, "fingerprint": ws.data.fingerprint,
                                                     "nodes": ws.data.num_nodes}, **extra})
        write_json(tmp / "codebook.json", {"token_ids": [int(t) for t in ws.codebook.token_ids],
                                           "words": list(ws.codebook.words)})
        save_file({k: v.contiguous() for k, v in trained.stage_one.items()}, tmp / "stage_one.safetensors")
        if trained.in_the_loop is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in trained.in_the_loop.items()},
                      tmp / "in_the_loop.safetensors")
        shutil.copytree(trained.adapter, tmp / "adapter", ignore=shutil.ignore_patterns("*.md"))  # PEFT's model card
        write_json(tmp / MANIFEST, {"format": FORMAT, "dre_pipeline": __version__,
                                    "llm": {"name": ws.llm.name, "identity": ws.llm.identity},
                                    "files": file_checksums(tmp)})
        tmp.rename(path)
    except OSError as error:
        raise InputError(f"cannot write the bundle {path}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read(path: Path) -> Bundle:
    """The bundle in ``path``, every file checked against its manifest (one line where one differs)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        settings = json.loads((path / "settings.json").read_text())
        codebook = json.loads((path / "codebook.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a model bundle (dre-pipeline export writes one): {error}") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: bundle format {manifest.get('format')!r}, this version reads format {FORMAT}")
    files = file_checksums(path)
    if files != manifest["files"]:
        changed = sorted(set(files).symmetric_difference(manifest["files"])
                         | {n for n in set(files) & set(manifest["files"]) if files[n] != manifest["files"][n]})
        raise InputError(f"{path}: {', '.join(changed[:3])} not as the manifest lists (damaged or edited)")
    return Bundle(path, FinetuneConfig(**settings["settings"]), settings["class_names"], manifest["llm"],
                  settings["graph"], codebook["token_ids"], codebook["words"])


def for_llm(bundle: Bundle, llm: ResolvedLLM) -> Codebook:
    """The bundle's codebook, rebuilt from ``llm``'s embeddings; an LLM other than the bundle's is refused."""
    if llm.identity != bundle.llm["identity"]:
        raise InputError(f"the bundle {bundle.path} was trained on {bundle.llm['name']}, not on {llm.name}: "
                         "give its LLM with --llm-path")
    token_ids = np.asarray(bundle.token_ids, dtype=np.int64)
    return Codebook(load_embeddings(llm)[token_ids].contiguous(), token_ids, bundle.words)


def trained(bundle: Bundle) -> Trained:
    """The bundle's model as answers read it: stage one's words are recomputed from the graph given."""
    from safetensors.torch import load_file

    loop = bundle.path / "in_the_loop.safetensors"
    return Trained(bundle.path / "adapter", load_file(bundle.path / "stage_one.safetensors"),
                   load_file(loop) if loop.is_file() else None, codes=None)


def check_graph(bundle: Bundle, data) -> None:
    """Refuse a graph the bundle cannot answer on: other classes, or features of another width."""
    if list(data.class_names) != list(bundle.class_names):
        raise InputError(f"the bundle answers in the classes {', '.join(bundle.class_names)}; {data.name} has "
                         f"{', '.join(data.class_names)}")
    width = _feature_width(bundle)
    if data.x.size(1) != width:
        raise InputError(f"the bundle's GNN reads {width} features per node, {data.name}'s nodes have "
                         f"{data.x.size(1)} (--features as the bundle's: {bundle.cfg.features})")


def _feature_width(bundle: Bundle) -> int:
    """The node features the bundle's GNN reads, from its first layer's shape alone."""
    from safetensors import safe_open

    with safe_open(bundle.path / "stage_one.safetensors", "pt") as f:
        return f.get_slice("encoder.convs.0.lin_l.weight").get_shape()[1]

