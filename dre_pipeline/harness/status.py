"""``dre-pipeline status`` and ``clean``: the artifact store at a glance, and tidying it.

An artifact is *stale* when the current settings resolve its stage to another key. The
current keys are found without computing anything: the LLM's identity, the codebook
through its cached-only lookup, the encode key from the codebook's key and the data's
fingerprint, the finetune key from the cached encode artifact. When the artifact a stage
needs upstream is not in the store, no artifact of that stage (or below) can be the one
the current settings would use, so all of them count as stale. When the settings
themselves cannot be resolved (a bad dataset, a GGUF not yet de-quantized here), the
verdict is unknown and ``clean --stale-only`` refuses to guess.

``clean`` removes only what no live process uses: it takes each key's use lock exclusively
(see :mod:`.artifacts`) for as long as it removes what is under it, and keeps, and reports,
whatever a live run holds.
"""

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from ..pipeline.artifacts import Artifact, Store, damaged_files, remove_path
from ..pipeline.config import FinetuneConfig
from ..data import load_dataset, make_split
from ..errors import InputError
from ..pipeline.llm import embedded_gguf, gguf_identity, resolve_llm
from ..pipeline.stages import encode as encode_stage
from ..pipeline.stages import features as features_stage
from ..pipeline.stages.finetune import workspace
from ..pipeline.placement import Placement

STAGES = ("llm", "features", "codebook", "encode", "finetune")  # upstream first: a key depends on those before it
# What interrupted writes and training runs leave behind: .tmp-<key>-<pid>, .old-<key>-<pid> (Store.writing),
# .ckpt-<key>.pt and .ckpt-<key>.pt.<pid>.tmp (Store.save_checkpoint).
LEFTOVER = re.compile(r"\.(?:tmp|old)-(?P<folder_key>.+)-\d+|\.ckpt-(?P<checkpoint_key>.+?)\.pt(?:\.\d+\.tmp)?")


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


def _dequantization_pending(cfg: FinetuneConfig, store: Store) -> bool:
    # resolve_llm would convert a GGUF not yet in the store (minutes, gigabytes for a large
    # model); a GGUF's identity is its file digest, so checking costs one read of the file.
    path = Path(cfg.llm_path).expanduser() if cfg.llm_path else embedded_gguf()
    if not (path.is_file() and path.suffix == ".gguf"):
        return False
    found = store.find("llm", gguf_identity(path))
    return found is None or found.manifest_problem is not None


def current_keys(cfg: FinetuneConfig, store: Store) -> Current:
    """The key each stage would use under ``cfg``, found without training or converting anything."""
    try:
        if _dequantization_pending(cfg, store):
            return Current({}, False, "the LLM is not de-quantized in this store yet (any stage command does it once)")
        llm = resolve_llm(cfg.llm_path, store)
        keys = {"llm": llm.identity}
        data = load_dataset(cfg.dataset, cfg.data_dir, store.root / "data", seed=cfg.seed)
        features_stage.resolve_kind(cfg.features, data)
    except InputError as error:
        return Current({}, False, str(error))
    # From here an InputError can only be a cached-only miss: an upstream artifact is not built.
    try:
        placement = Placement.resolve("auto", cfg.quantization)
        data, text_features = features_stage.load(cfg.features, data, cfg.llm_path, store, cached_only=True,
                                                  placement=placement)
        if text_features is not None:
            keys["features"] = text_features.key
        codebook = encode_stage.codebook_for(cfg, data, store, cached_only=True)
        keys["codebook"] = codebook.key
        keys["encode"] = encode_stage.encode_key(cfg, codebook, data)
        graph = (data, make_split(data, cfg.split, cfg.seed))
        keys["finetune"] = workspace.prepare(cfg, store, quiet=True, cached_only=True, placement=placement, graph=graph,
                                             llm=llm).key
    except InputError as error:
        return Current(keys, True, str(error))
    return Current(keys, True)


def differing_settings(artifact: Artifact, cfg: FinetuneConfig) -> dict:
    now = asdict(cfg)
    return {name: (value, now[name]) for name, value in artifact.manifest.get("settings", {}).items()
            if name in now and value != now[name]}


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


def inventory(cfg: Optional[FinetuneConfig], store: Store) -> Inventory:
    """Every artifact with its size and staleness; ``cfg=None`` skips staleness (unknown)."""
    current = current_keys(cfg, store) if cfg is not None else Current({}, False)
    entries, leftovers = [], []
    for stage in STAGES:
        for artifact in store.list(stage):
            stale = (artifact.key != current.keys.get(stage)) if current.known else None
            differs = differing_settings(artifact, cfg) if cfg is not None else {}
            entries.append(Entry(artifact, disk_size(artifact.path), stale, differs, damaged_files(artifact)))
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
    """Remove artifact folders (of one stage, only stale ones if asked) and leftovers that no live run uses.

    One :class:`Removal` per candidate, removed or kept; a failure to remove one is reported and the rest go on.
    """
    if stage is not None and stage not in STAGES:
        raise InputError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    inv = inventory(cfg if stale_only else None, store)
    if stale_only and not inv.current.known:
        raise InputError(f"--stale-only: cannot tell which artifacts are stale: {inv.current.note}")
    chosen = [(e.artifact.stage, e.artifact.key, e.artifact.path, e.size) for e in inv.entries
              if (stage is None or e.artifact.stage == stage) and (not stale_only or e.stale)]
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
