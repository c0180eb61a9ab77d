"""Run-time helpers every stage shares: seeds, the allocator, progress bars, logging, early stopping, resumable
training."""

import ctypes
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError

log = logging.getLogger("dre_pipeline")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# glibc's malloc maps every block above its threshold (32 MB at most, by default) afresh from the kernel and unmaps
# it when freed, so each [N, d] temporary of a stage-one step (48 MB at 21k x 576) is faulted in page by page
# again: 21 ms for a product that takes 5 ms in a reused buffer (AMD EPYC). Blocks up to this size stay in the
# heap for reuse; the heap's free top is given back above twice it. 64 MB holds a step's temporaries and keeps
# whole-graph [N, d] blocks out of the heap: a step 0.80-0.83x as long as under glibc's default at 100k-1M nodes,
# at 1.06-1.20x its peak, where 256 MB took 1.27-1.40x (benchmarks/freed_blocks.py).
KEEP_FREED_BLOCKS_BYTES = 64 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def keep_freed_memory(block_bytes: int = KEEP_FREED_BLOCKS_BYTES) -> bool:
    """Keep freed blocks of up to ``block_bytes`` for reuse, for the whole process (the CLI's processes set it as
    they start); False where the C library is not glibc, which is then left as it is."""
    libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS, Windows: other allocators
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, block_bytes) and libc.mallopt(M_TRIM_THRESHOLD, 2 * block_bytes))


def checkpoint_seconds() -> float:
    """Least time between two checkpoints of a training run ($DRE_CHECKPOINT_SECONDS, default 60)."""
    text = os.environ.get("DRE_CHECKPOINT_SECONDS", "60")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:  # NaN too
        raise InputError(f"$DRE_CHECKPOINT_SECONDS must be a number of seconds, 0 or more, got {text!r}")
    return seconds


def check_environment() -> None:
    """The environment variables a run reads later, checked when the command starts."""
    checkpoint_seconds()
    for name in ("WORLD_SIZE", "LOCAL_RANK"):  # set by torchrun
        if not os.environ.get(name, "0").isdigit():
            raise InputError(f"${name} must be a whole number, got {os.environ[name]!r}")


def rng_state(device: torch.device) -> dict:
    """The generators a training step draws from: torch's CPU one and, on a GPU, that device's (LoRA dropout there
    draws from it); Python's too (PyG's negative sampling)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`; a checkpoint without a CUDA state (written on a CPU, or before it was kept) leaves
    the GPU's generator as seeded."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring ``device``'s peak allocation afresh (the host's peak, the process's resident size, cannot be)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def host_peak_mb() -> float:
    """The peak resident memory of this process so far, in MB."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_memory_mb(device: torch.device) -> dict:
    """Peak memory in MB: resident in this process (``cpu``) and, for a CUDA ``device``, allocated on that GPU
    (``cuda``) since the process started or :func:`reset_peak_memory`."""
    peak = {"cpu": host_peak_mb()}
    if device.type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def progress(iterable, *, quiet: bool, desc: str, total: int = None):
    """Iterate with progress shown: a tqdm bar on a terminal or in a notebook (tqdm.auto's widget), log lines
    elsewhere, nothing with ``--quiet``."""
    if quiet:
        return tqdm(iterable, disable=True)
    if sys.stderr.isatty() or in_notebook():
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False)
    return LoggedProgress(iterable, desc, total)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose stderr is no terminal, but shows tqdm.auto's widgets)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


class LoggedProgress:
    """Progress where stderr is not a terminal (nohup, CI, notebooks): a log line every ``every`` seconds.

    Each line gives the count (of the total where known), rate, elapsed time, ETA and the
    latest :meth:`set_postfix` values, so a long run is never silent.
    """

    def __init__(self, iterable, desc: str, total: int = None, every: float = 30.0):
        self.iterable, self.desc, self.every, self.postfix = iterable, desc, every, {}
        self.total = total if total is not None else getattr(iterable, "__len__", lambda: None)()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def __iter__(self):
        started = last = time.monotonic()
        for done, item in enumerate(self.iterable, start=1):
            yield item
            now = time.monotonic()
            if now - last >= self.every:
                last = now
                log.info(self.line(done, now - started))

    def line(self, done: int, elapsed: float) -> str:
        rate = done / max(elapsed, 1e-9)
        parts = [f"{self.desc}: {done}" + (f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else ""),
                 f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it", f"elapsed {duration(elapsed)}"]
        if self.total:
            parts.append(f"ETA {duration((self.total - done) / rate)}")
        parts += [f"{name} {value}" for name, value in self.postfix.items()]
        return ", ".join(parts)


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr, force=True
    )
    # transformers and PEFT speak at INFO/WARNING about things users need not act on.
    # bitsandbytes (imported by PEFT) says on every CPU import that optional kernels are absent.
    for noisy in ("transformers", "peft", "httpx", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # PEFT calls a transformers method that transformers has renamed; nothing for a user to do.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    from transformers.utils import logging as hf_logging

    if quiet or not sys.stderr.isatty():
        hf_logging.disable_progress_bar()


def snapshot(state: dict) -> dict:
    """Detached copies of a state dict's tensors: what early stopping restores."""
    return {name: value.detach().clone() for name, value in state.items()}


class EarlyStopping:
    """Keep a snapshot of the best evaluation so far; say when patience has run out.

    Args:
        patience (int): evaluations without improvement before stopping.
        snapshot: returns a copy of whatever must be restored (a state dict).
    """

    def __init__(self, patience: int, snapshot):
        self.patience, self.snapshot = patience, snapshot
        self.best, self.best_state, self.stale = float("-inf"), None, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "best_state": self.best_state, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_state, self.stale = state["best"], state["best_state"], state["stale"]

    def update(self, score: float) -> None:
        if score > self.best:
            self.best, self.best_state, self.stale = score, self.snapshot(), 0
        else:
            self.stale += 1

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience


class TrainingState:
    """What a training loop needs to resume a killed run and end as an uninterrupted one would.

    Each part is saved under its name: an object with ``state_dict`` / ``load_state_dict`` (a model,
    optimizer, scheduler, :class:`EarlyStopping`), a torch generator, a numpy one (its state as JSON
    text, the form stage two's checkpoints have always held), or None (a part this run lacks). With
    them go the generators a step draws from (:func:`rng_state`, the device's too), the training time
    so far, and the loop's own counters (:meth:`save`'s keywords, what :meth:`resume` returns).

    Args:
        store (Store): keeps the checkpoint under (``stage``, ``key``); None: no checkpoints.
        device: the run's device: the checkpoint loads onto it and its generator is saved.
        saves (bool): whether this process writes the checkpoint; under ``torchrun`` only the
            first does, and every process resumes from it.
    """

    def __init__(self, store, stage: str, key: str, device: torch.device, saves: bool = True, **parts):
        self.store, self.stage, self.key, self.device, self.saves, self.parts = store, stage, key, device, saves, parts
        self.seconds_before, self.started = 0.0, time.time()
        self.last_saved = self.started

    @property
    def seconds(self) -> float:
        """Training time so far, over this run and every run it resumes."""
        return self.seconds_before + time.time() - self.started

    def resume(self) -> Optional[dict]:
        """Restore every part from the checkpoint a killed run left: that run's counters, or None (there is none)."""
        state = self.store and self.store.load_checkpoint(self.stage, self.key, self.device)
        if not state:
            return None
        for name, part in self.parts.items():
            if isinstance(part, torch.Generator):
                part.set_state(state[name])
            elif isinstance(part, np.random.Generator):
                part.bit_generator.state = json.loads(state[name])
            elif part is not None:
                part.load_state_dict(state[name])
        set_rng_state(state.pop("rng"), self.device)
        self.seconds_before = state.pop("seconds")
        return {name: value for name, value in state.items() if name not in self.parts}

    def save(self, **counters) -> None:
        """Checkpoint the parts and ``counters``, at most every :func:`checkpoint_seconds`."""
        if not (self.store and self.saves) or time.time() - self.last_saved < checkpoint_seconds():
            return
        parts = {name: part.get_state() if isinstance(part, torch.Generator)
                 else json.dumps(part.bit_generator.state) if isinstance(part, np.random.Generator)
                 else part.state_dict() if part is not None else None for name, part in self.parts.items()}
        self.store.save_checkpoint(self.stage, self.key, {
            **parts, **counters, "rng": rng_state(self.device), "seconds": self.seconds})
        self.last_saved = time.time()
