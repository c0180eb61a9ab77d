"""Training curves as TensorBoard scalars (``--log-dir``), one folder per run: ``<log-dir>/<stage>-<key>``.

A run-time setting: it enters no key, and a cache hit writes nothing (only a stage that trains opens a log).
A resumed run appends to its folder (TensorBoard reads a second event file there as the same run).
"""

from pathlib import Path
from typing import Optional

from ..errors import InputError

INSTALL = "pip install 'dre-pipeline[tensorboard]'"


def require(log_dir: Path) -> None:
    """Refuse ``--log-dir`` before any work where TensorBoard is not installed or the folder cannot be one."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise InputError(f"--log-dir writes TensorBoard scalars, and tensorboard is not installed: {INSTALL}") from None
    if log_dir.exists() and not log_dir.is_dir():
        raise InputError(f"--log-dir {log_dir} is a file, not a folder")


class ScalarLog:
    """The scalars of one training run under ``<log_dir>/<run>``; a no-op without a log dir or where ``writes``
    is False (under ``torchrun``, every process but the first)."""

    def __init__(self, log_dir: Optional[Path], run: str, writes: bool = True):
        self.writer, self.last_step = None, None  # last_step: of stage two's last evaluation
        if log_dir is not None and writes:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(log_dir) / run))

    def add(self, phase: str, scalars: dict, step: int) -> None:
        """Each of ``scalars`` as ``<phase>/<name>`` at ``step``."""
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(f"{phase}/{name}", value, step)

    def stage_one(self, entry: dict) -> None:
        """A stage-one evaluation (the history's entry) at its epoch: the losses averaged since the last one, the
        label head's accuracy per split and each view's code perplexity."""
        losses = {name if name == "loss" else f"{name}_loss": value for name, value in entry.items()
                  if name not in ("epoch", "accuracy", "perplexity")}
        accuracy = {f"{split}_accuracy": value for split, value in entry["accuracy"].items()}
        perplexity = {f"view{t}_perplexity": value for t, value in enumerate(entry["perplexity"], start=1)}
        self.add("encode", {**losses, **accuracy, **perplexity}, entry["epoch"])
        self.flush()

    def stage_two(self, phase: str, entry: dict, epoch_losses: list) -> None:
        """A stage-two evaluation (the history's entry) at its step: the loss of each step since the last one
        (``epoch_losses``: its epoch's, one per step up to the entry's), the mean training loss of the epoch so far,
        and validation's accuracy and macro-F1."""
        step = entry["step"]
        # every epoch ends evaluated, so the steps since the last evaluation are all in this epoch
        new = step - self.last_step if self.last_step is not None else len(epoch_losses)
        for done, loss in enumerate(epoch_losses[len(epoch_losses) - new:], start=step - new + 1):
            self.add(phase, {"loss": loss}, done)
        self.add(phase, {name: entry[name] for name in ("train_loss", "val_accuracy", "val_macro_f1")}, step)
        self.last_step = step
        self.flush()

    def flush(self) -> None:
        """Write what is queued: an interrupted run keeps every evaluation up to its last checkpoint, and more."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
