"""``dre-pipeline status`` and ``clean``: the artifact store at a glance, and tidying it.

Each artifact is judged by what it was built from, against the graph and the LLM as the command's
options (dataset, features, split, seed, LLM) load them now; no training setting enters:

- *current*: built from them (an LLM of that identity; this graph, with these features, split and seed);
- *stale*: built from an older version of them (the same LLM's name, another identity; the same dataset's
  name, other contents or other data options), or from an artifact no longer in the store, or from a stale one;
- *other*: another dataset or LLM, not judged (``clean --stale-only`` leaves it).

Nothing is computed to tell: the LLM is identified without being de-quantized, the graph is loaded, and its
text features are looked up in the store. Where the options themselves cannot be resolved (a bad dataset), the
verdicts are unknown and ``clean --stale-only`` refuses to guess.

``clean`` removes only what no live process uses: it takes each key's use lock exclusively
(see :mod:`..pipeline.artifacts`) for as long as it removes what is under it, and keeps, and reports,
whatever a live run holds.
"""

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from ..pipeline.artifacts import Artifact, Store, damaged_files, remove_path
from ..pipeline.config import DataConfig, StoreConfig
from ..data import load_dataset, make_split
from ..errors import InputError
from ..pipeline.llm import embedded_gguf, gguf_identity, resolve_llm
from ..pipeline.stages import features as features_stage

STAGES = ("llm", "features", "codebook", "encode", "finetune")  # upstream first: a key depends on those before it
DATA_DEFAULTS = {f.name: f.default for f in fields(DataConfig)}  # what a manifest leaves out at its neutral value
# What interrupted writes and training runs leave behind: .tmp-<key>-<pid>, .old-<key>-<pid> (Store.writing),
# .ckpt-<key>.pt and .ckpt-<key>.pt.<pid>.tmp (Store.save_checkpoint).
LEFTOVER = re.compile(r"\.(?:tmp|old)-(?P<folder_key>.+)-\d+|\.ckpt-(?P<checkpoint_key>.+?)\.pt(?:\.\d+\.tmp)?")


@dataclass
class Current:
    """What the options load now; ``known`` False where they could not be resolved (``note`` says why)."""

    known: bool
    llm: tuple = ()  # (name, identity)
    dataset: Optional[str] = None  # the graph's name
    raw_fingerprint: Optional[str] = None  # the graph's own, as text features record it
    fingerprint: Optional[str] = None  # with its --features, where they are in the store
    data: dict = field(default_factory=dict)  # the data options an encode artifact records: split, features, seed
    note: Optional[str] = None


@dataclass
class Entry:
    artifact: Artifact
    size: int  # bytes
    state: str  # current | stale | other | ? (unknown: see Current.known)
    differs: dict = field(default_factory=dict)  # data option -> (the artifact's value, the current value)
    damage: list = field(default_factory=list)  # files that no longer match the manifest's checksums

    @property
    def headline(self) -> str:
        try:
            return headline(self.artifact)
        except (KeyError, TypeError, IndexError, ValueError):  # an unreadable or hand-edited manifest
            return "(the manifest lacks its headline)"


@dataclass
class Inventory:
    current: Current
    entries: list
    leftovers: list  # (path, size) of interrupted writes no live process owns
    others: list  # (path, size) of non-stage folders: processed datasets, reports


@dataclass
class Removal:
    """What ``clean`` did with one artifact or leftover."""

    path: Path
    size: int  # bytes
    in_use: bool = False  # a live run holds its key: kept
    error: Optional[str] = None  # why removing it failed: kept as well


def disk_size(path: Path) -> int:
    """Bytes of a file, or of the files in a folder; a symbolic link counts none (its target is not the store's)."""
    if path.is_symlink():
        return 0
    if not path.is_dir():
        return _file_size(path)
    return sum(_file_size(Path(root) / name) for root, _, names in os.walk(path) for name in names)


def _file_size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:  # a live run renamed or removed it while this counted
        return 0


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def headline(artifact: Artifact) -> str:
    m = artifact.manifest
    if artifact.stage == "llm":
        return f"de-quantized {m.get('name', '')}"
    if artifact.stage == "features":
        return f"{m['dataset']}: text of {m['shape'][0]} nodes as {m.get('kind', 'llm')} features ({m['shape'][1]} dims)"
    if artifact.stage == "codebook":
        return f"{m['kept']}/{m['total']} tokens kept"
    if artifact.stage == "encode":
        perplexity = "/".join(f"{p:.1f}" for p in m["perplexity"])
        return f"{m['dataset']}: label head test accuracy {m['label_head_accuracy']['test']:.4f}, perplexity {perplexity}"
    joint = " (joint)" if m.get("joint") else ""
    return f"{m['dataset']}: test accuracy {m['test_accuracy']:.4f}, macro-F1 {m['test_macro_f1']:.4f}{joint}"


def llm_now(llm_path: Optional[str], store: Store) -> tuple:
    """(name, identity) of the LLM ``--llm-path`` names, without de-quantizing a GGUF (minutes, gigabytes):
    a GGUF's identity is its file digest."""
    path = Path(llm_path).expanduser() if llm_path else embedded_gguf()
    if path.is_file() and path.suffix == ".gguf":
        return path.name, gguf_identity(path)
    llm = resolve_llm(llm_path, store)
    return llm.name, llm.identity


def current_inputs(cfg: StoreConfig, store: Store) -> Current:
    """The LLM and the graph as ``cfg`` loads them now, found without training or converting anything: the graph
    is loaded once, and its text features are looked up in the store, not computed."""
    try:
        name, identity = llm_now(cfg.llm_path, store)
        data = load_dataset(cfg.dataset, cfg.data_dir, store.root / "data", seed=cfg.seed)
        make_split(data, cfg.split, cfg.seed)
        features_stage.resolve_kind(cfg.features, data)
        llm = resolve_llm(cfg.llm_path, store) if cfg.features == "llm" else None
    except InputError as error:
        return Current(False, note=str(error))
    current = Current(True, (name, identity), data.name, data.fingerprint, None,
                      {"split": cfg.split, "features": cfg.features, "seed": cfg.seed})
    try:
        current.fingerprint = features_stage.load(cfg.features, data, llm, store, cached_only=True)[0].fingerprint
    except InputError as error:  # its text features are not in the store: stage one's data cannot be compared
        current.note = str(error)
    return current


def judge(artifact: Artifact, current: Current, states: dict) -> tuple:
    """(state, differing data options) of ``artifact``; ``states``: (stage, key) -> state of those judged before it
    (upstream first, :data:`STAGES`)."""
    if not current.known:
        return "?", {}
    try:
        return _judge(artifact, current, states)
    except (AttributeError, TypeError):  # a hand-edited manifest: shown as damaged, judged as nothing
        return "?", {}


def _judge(artifact: Artifact, current: Current, states: dict) -> tuple:
    m, (llm_name, llm_identity) = artifact.manifest, current.llm

    def by_llm(name, identity) -> str:
        return "current" if identity == llm_identity else "stale" if name == llm_name else "other"

    def upstream(stage: str, key) -> str:
        return states.get((stage, key), "stale")  # gone from the store: nothing can be rebuilt from it

    if artifact.stage == "llm":
        return by_llm(m.get("name"), artifact.key), {}
    if artifact.stage == "codebook":
        return by_llm(m.get("llm", {}).get("name"), m.get("llm", {}).get("identity")), {}
    if artifact.stage == "features":
        if m.get("dataset") != current.dataset:
            return "other", {}
        return ("current" if m.get("fingerprint") == current.raw_fingerprint else "stale"), {}
    if artifact.stage == "encode":
        state = upstream("codebook", m.get("codebook"))
        if state == "stale" or m.get("dataset") != current.dataset:
            return state, {}
        recorded = m.get("settings", {})
        differs = {k: (recorded.get(k, DATA_DEFAULTS[k]), v) for k, v in current.data.items()
                   if recorded.get(k, DATA_DEFAULTS[k]) != v}
        changed = current.fingerprint is not None and m.get("fingerprint") != current.fingerprint and not differs
        if changed:
            differs = {"graph": (m.get("fingerprint"), current.fingerprint)}
        return ("stale" if differs else state), differs
    state = upstream("encode", m.get("encode"))  # finetune: stage one's verdict, and the LLM it tuned
    llm = m.get("llm", {})
    return (by_llm(llm.get("name"), llm.get("identity")) if state == "current" else state), {}


def _writer_alive(folder: Path) -> bool:
    # Store.writing names its folder .tmp-<key>-<pid>: a live pid may still be writing it (a run
    # started before this version took the use lock is protected by its pid alone).
    pid = folder.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def inventory(cfg: Optional[StoreConfig], store: Store) -> Inventory:
    """Every artifact with its size and state; ``cfg=None`` judges none (unknown)."""
    current = current_inputs(cfg, store) if cfg is not None else Current(False)
    entries, leftovers, states = [], [], {}
    for stage in STAGES:
        for artifact in store.list(stage):
            state, differs = judge(artifact, current, states)
            states[stage, artifact.key] = state
            entries.append(Entry(artifact, disk_size(artifact.path), state, differs, damaged_files(artifact)))
        folder = store.root / stage
        if folder.is_dir():
            leftovers += [(p, disk_size(p)) for p in sorted(folder.iterdir()) if _left_over(store, p)]
    others = ([(p, disk_size(p)) for p in sorted(store.root.iterdir()) if p.is_dir() and p.name not in STAGES]
              if store.root.is_dir() else [])
    return Inventory(current, entries, leftovers, others)


def leftover_key(path: Path) -> Optional[str]:
    """The key whose interrupted write or training run left ``path``, or None for anything else."""
    match = LEFTOVER.fullmatch(path.name)
    return match and (match["folder_key"] or match["checkpoint_key"])


def _left_over(store: Store, path: Path) -> bool:
    """Whether ``path`` is what an interrupted write or training run left, and no live process owns it."""
    key = leftover_key(path)
    return key is not None and not _writer_alive(path) and not store.in_use(path.parent.name, key)


def status_text(inv: Inventory, root: Path) -> str:
    total = sum(e.size for e in inv.entries) + sum(s for _, s in inv.leftovers + inv.others)
    lines = [f"store {root} ({human_size(total)})"]
    if inv.current.note:
        lines.append(f"these options: {inv.current.note}")
    if not inv.entries:
        lines.append("no artifacts")
    else:
        lines.append(f"{'stage':<9} {'key':<16} {'created':<19} {'size':>9} {'state':<7} headline")
    for e in inv.entries:
        a = e.artifact
        lines.append(f"{a.stage:<9} {a.key:<16} {a.manifest.get('created', ''):<19} {human_size(e.size):>9} "
                     f"{'damaged' if e.damage else e.state:<7} {e.headline}")
        if e.damage:
            lines.append(f"{'':<9} damaged: {'; '.join(e.damage)} (rebuilt on the next run that needs it)")
        if e.differs:
            changes = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in sorted(e.differs.items()))
            lines.append(f"{'':<9} built from other data: {changes}")
    lines += [f"leftover {p.relative_to(root)} ({human_size(s)}): `dre-pipeline clean` removes it"
              for p, s in inv.leftovers]
    lines += [f"other    {p.name}/ ({human_size(s)})" for p, s in inv.others]
    return "\n".join(lines)


def clean(cfg: StoreConfig, store: Store, stage: Optional[str], stale_only: bool, dry_run: bool) -> list:
    """Remove artifact folders (of one stage, only stale ones if asked) and leftovers that no live run uses.

    One :class:`Removal` per candidate, removed or kept; a failure to remove one is reported and the rest go on.
    """
    if stage is not None and stage not in STAGES:
        raise InputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    inv = inventory(cfg if stale_only else None, store)
    if stale_only and not inv.current.known:
        raise InputError(f"--stale-only: cannot tell which artifacts are stale: {inv.current.note}")
    chosen = [(e.artifact.stage, e.artifact.key, e.artifact.path, e.size) for e in inv.entries
              if (stage is None or e.artifact.stage == stage) and (not stale_only or e.state == "stale")]
    chosen += [(p.parent.name, leftover_key(p), p, s) for p, s in inv.leftovers
               if stage is None or p.parent.name == stage]
    store.close()  # this clean reads none of what it looked up to tell stale from current
    return [_remove_unused(store, *candidate, dry_run) for candidate in chosen]


def _remove_unused(store: Store, stage: str, key: str, path: Path, size: int, dry_run: bool) -> Removal:
    if dry_run:
        return Removal(path, size, in_use=store.in_use(stage, key))
    with store.unused(stage, key) as free:  # held until the removal is done: no run can start to use it
        if not free:
            return Removal(path, size, in_use=True)
        try:
            remove_path(path)
        except OSError as error:
            return Removal(path, size, error=error.strerror or str(error))
    return Removal(path, size)


def summary_table(store: Store, finetune) -> str:
    """Stage by stage: what it produced, its headline number and its wall time."""

    def upstream(stage, artifact, result) -> tuple:  # one removed by hand since: the finetune result still stands
        if artifact is None:
            return stage, "no longer in the store", None
        return stage, result(artifact.manifest), artifact.manifest["seconds"]

    encode = store.find("encode", finetune.manifest["encode"])
    codebook = store.find("codebook", encode.manifest["codebook"]) if encode else None
    metrics = json.loads((finetune.path / "metrics.json").read_text())
    rows = [
        upstream("codebook", codebook, lambda m: f"{m['kept']}/{m['total']} tokens kept"),
        upstream("encode", encode, lambda m: f"label head test accuracy {m['label_head_accuracy']['test']:.4f}"),
        ("finetune", f"Dr.E test accuracy {metrics['finetune']['test']['accuracy']:.4f} "
                     f"(macro-F1 {metrics['finetune']['test']['macro_f1']:.4f})", finetune.manifest["seconds"]),
    ]
    if "joint" in metrics:
        rows.append(("joint", f"Dr.E test accuracy {metrics['joint']['test']['accuracy']:.4f} "
                              f"(macro-F1 {metrics['joint']['test']['macro_f1']:.4f})", metrics["joint"]["train_seconds"]))
    lines = [f"{'stage':<10} {'result':<52} {'seconds':>8}"]
    lines += [f"{stage:<10} {result:<52} {'' if seconds is None else f'{seconds:.1f}':>8}"
              for stage, result, seconds in rows]
    return "\n".join(lines + [f"artifact: {finetune.path}"])
