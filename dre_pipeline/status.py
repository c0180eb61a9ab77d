"""``dre-pipeline status`` and ``clean``: the artifact store at a glance, and tidying it.

An artifact is *stale* when the current settings resolve its stage to another key. The
current keys are found without computing anything: the LLM's identity, the codebook
through its cached-only lookup, the encode key from the codebook's key and the data's
fingerprint, the finetune key from the cached encode artifact. When the artifact a stage
needs upstream is not in the store, no artifact of that stage (or below) can be the one
the current settings would use, so all of them count as stale. When the settings
themselves cannot be resolved (a bad dataset, a GGUF not yet de-quantized here), the
verdict is unknown and ``clean --stale-only`` refuses to guess.
"""

import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from .artifacts import Artifact, Store, damaged_files, file_digest
from .config import FinetuneConfig
from .data import load_dataset
from .errors import InputError
from .llm import embedded_gguf, resolve_llm
from .stages import encode as encode_stage
from .stages import features as features_stage
from .stages import workspace

STAGES = ("llm", "features", "codebook", "encode", "finetune")  # upstream first: a key depends on those before it
LEFTOVER_PREFIXES = (".tmp-", ".old-", ".ckpt-")  # what interrupted writes and training runs leave behind


@dataclass
class Current:
    keys: dict  # stage -> the key the current settings resolve to (absent: not resolvable)
    known: bool  # False when the settings themselves could not be resolved
    note: Optional[str] = None  # why the chain of keys stops early


@dataclass
class Entry:
    artifact: Artifact
    size: int  # bytes
    stale: Optional[bool]  # None: unknown (see Current.known)
    differs: dict = field(default_factory=dict)  # setting -> (the artifact's value, the current value)
    damage: list = field(default_factory=list)  # files that no longer match the manifest's checksums

    @property
    def headline(self) -> str:
        return headline(self.artifact)


@dataclass
class Inventory:
    current: Current
    entries: list
    leftovers: list  # (path, size) of interrupted writes no live process owns
    others: list  # (path, size) of non-stage folders: processed datasets, reports


def folder_size(path: Path) -> int:
    return sum((Path(root) / name).stat().st_size for root, _, names in os.walk(path) for name in names)


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


def _dequantization_pending(cfg: FinetuneConfig, store: Store) -> bool:
    # resolve_llm would convert a GGUF not yet in the store (minutes, gigabytes for a large
    # model); a GGUF's identity is its file digest, so checking costs one read of the file.
    path = Path(cfg.llm_path).expanduser() if cfg.llm_path else embedded_gguf()
    return path.is_file() and path.suffix == ".gguf" and store.find("llm", file_digest(path)) is None


def current_keys(cfg: FinetuneConfig, store: Store) -> Current:
    """The key each stage would use under ``cfg``, found without training or converting anything."""
    try:
        if _dequantization_pending(cfg, store):
            return Current({}, False, "the LLM is not de-quantized in this store yet (any stage command does it once)")
        keys = {"llm": resolve_llm(cfg.llm_path, store).identity}
        data = load_dataset(cfg.dataset, cfg.data_dir, store.root / "data", seed=cfg.seed)
        features_stage.resolve_kind(cfg.features, data)
    except InputError as error:
        return Current({}, False, str(error))
    # From here an InputError can only be a cached-only miss: an upstream artifact is not built.
    try:
        data, text_features = features_stage.load(cfg.features, data, cfg.llm_path, store, cached_only=True)
        if text_features is not None:
            keys["features"] = text_features.key
        codebook = encode_stage.codebook_for(cfg, data, store, cached_only=True)
        keys["codebook"] = codebook.key
        keys["encode"] = encode_stage.encode_key(cfg, codebook, data)
        keys["finetune"] = workspace.prepare(cfg, store, quiet=True, cached_only=True).key
    except InputError as error:
        return Current(keys, True, str(error))
    return Current(keys, True)


def differing_settings(artifact: Artifact, cfg: FinetuneConfig) -> dict:
    now = asdict(cfg)
    return {name: (value, now[name]) for name, value in artifact.manifest.get("settings", {}).items()
            if name in now and value != now[name]}


def _writer_alive(folder: Path) -> bool:
    # Store.writing names its folder .tmp-<key>-<pid>: a live pid may still be writing it.
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


def inventory(cfg: Optional[FinetuneConfig], store: Store) -> Inventory:
    """Every artifact with its size and staleness; ``cfg=None`` skips staleness (unknown)."""
    current = current_keys(cfg, store) if cfg is not None else Current({}, False)
    entries, leftovers = [], []
    for stage in STAGES:
        for artifact in store.list(stage):
            stale = (artifact.key != current.keys.get(stage)) if current.known else None
            differs = differing_settings(artifact, cfg) if cfg is not None else {}
            entries.append(Entry(artifact, folder_size(artifact.path), stale, differs, damaged_files(artifact)))
        folder = store.root / stage
        if folder.is_dir():
            leftovers += [(p, folder_size(p)) for p in sorted(folder.iterdir())
                          if p.name.startswith(LEFTOVER_PREFIXES) and not _writer_alive(p)]
    others = ([(p, folder_size(p)) for p in sorted(store.root.iterdir()) if p.is_dir() and p.name not in STAGES]
              if store.root.is_dir() else [])
    return Inventory(current, entries, leftovers, others)


def status_text(inv: Inventory, root: Path) -> str:
    state = {True: "stale", False: "current", None: "?"}
    total = sum(e.size for e in inv.entries) + sum(s for _, s in inv.leftovers + inv.others)
    lines = [f"store {root} ({human_size(total)})"]
    if inv.current.note:
        lines.append(f"current settings: {inv.current.note}")
    if not inv.entries:
        lines.append("no artifacts")
    else:
        lines.append(f"{'stage':<9} {'key':<16} {'created':<19} {'size':>9} {'state':<7} headline")
    for e in inv.entries:
        a = e.artifact
        lines.append(f"{a.stage:<9} {a.key:<16} {a.manifest.get('created', ''):<19} {human_size(e.size):>9} "
                     f"{'damaged' if e.damage else state[e.stale]:<7} {e.headline}")
        if e.damage:
            lines.append(f"{'':<9} damaged: {'; '.join(e.damage)} (rebuilt on the next run that needs it)")
        if e.differs:
            changes = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in sorted(e.differs.items()))
            lines.append(f"{'':<9} settings that differ: {changes}")
    lines += [f"leftover {p.relative_to(root)} ({human_size(s)}): `dre-pipeline clean` removes it"
              for p, s in inv.leftovers]
    lines += [f"other    {p.name}/ ({human_size(s)})" for p, s in inv.others]
    return "\n".join(lines)


def clean(cfg: FinetuneConfig, store: Store, stage: Optional[str], stale_only: bool, dry_run: bool) -> list:
    """Remove artifact folders (of one stage, only stale ones if asked) and leftovers; return (path, size)."""
    if stage is not None and stage not in STAGES:
        raise InputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    inv = inventory(cfg if stale_only else None, store)
    if stale_only and not inv.current.known:
        raise InputError(f"--stale-only: cannot tell which artifacts are stale: {inv.current.note}")
    chosen = [(e.artifact.path, e.size) for e in inv.entries
              if (stage is None or e.artifact.stage == stage) and (not stale_only or e.stale)]
    chosen += [(p, s) for p, s in inv.leftovers if stage is None or p.parent.name == stage]
    if not dry_run:
        for path, _ in chosen:
            shutil.rmtree(path)
    return chosen
