"""Run-time helpers every stage shares: seeds, progress bars, logging."""

import logging
import random
import sys
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger("dre_pipeline")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable=None, *, quiet: bool, **kwargs):
    """A tqdm bar with rate and ETA; silent with ``--quiet`` or when stderr is not a terminal."""
    return tqdm(iterable, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, leave=False, **kwargs)


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


class EarlyStopping:
    """Keep a snapshot of the best evaluation so far; say when patience has run out.

    Args:
        patience (int): evaluations without improvement before stopping.
        snapshot: returns a copy of whatever must be restored (a state dict).
    """

    def __init__(self, patience: int, snapshot):
        self.patience, self.snapshot = patience, snapshot
        self.best, self.best_state, self.stale = float("-inf"), None, 0

    def update(self, score: float) -> None:
        if score > self.best:
            self.best, self.best_state, self.stale = score, self.snapshot(), 0
        else:
            self.stale += 1

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience
