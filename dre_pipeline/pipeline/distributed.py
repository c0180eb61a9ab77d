"""Data-parallel stages one and two under ``torchrun``: several processes, one model each.

``torchrun --nproc-per-node N -m dre_pipeline.cli finetune ...`` starts N copies of the
command. In stage two each takes every N-th prompt of each global batch, so a step sees the same
prompts as a single process would; the gradients of the trainable parameters are summed
over the processes (``all_reduce``, what ``DistributedDataParallel`` does in buckets)
before clipping and the optimiser step, and every process keeps the same weights.
Scoring is split the same way and gathered, so early stopping decides the same
everywhere. Stage one (``encode``, or upstream of ``finetune``) shares each mini-batch step's seeds the
same way, each process drawing its seeds' neighbours itself; a full-batch step is every process's, at
1/N weight. Only the first process logs, checkpoints and writes the artifact.

The process group uses NCCL on CUDA and gloo on CPU. NCCL serves CUDA tensors only, so
every tensor a collective here builds goes on :func:`collective_device`. Without ``torchrun``
(no ``WORLD_SIZE`` in the environment) everything here is a no-op: one process, rank 0.
"""

import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def setup(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes, once; return this process's device.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (whatever ``cuda[:N]`` asked) and the
    NCCL group is bound to it, so its collectives and barriers run there, not on ``cuda:0``.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) == 1 and not dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        if dist.get_rank():  # one voice in the log: the first process's
            logging.getLogger("dre_pipeline").setLevel(logging.WARNING)
    return device


def collective_device() -> torch.device:
    """Where the group's collectives take their tensors: NCCL's, this process's GPU (:func:`setup` made it the
    current one); gloo's, the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(items):
    """This process's share of ``items``: every ``world()``-th one, from its rank on."""
    return items[rank()::world()]


def sum_gradients(params: list) -> None:
    """Sum each parameter's gradient over the processes (each scaled its loss by its share of the batch)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def total(values: list) -> list:
    """Each of ``values`` summed over the processes, in one exchange."""
    if world() == 1:
        return values
    # float64: the token counts summed stay exact integers (to 2**53); NCCL reduces float64 as gloo does
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """Reassemble ``[count, ...]`` from each process's ``shard`` of the rows, in the original order."""
    if world() == 1:
        return rows
    parts = [None] * world()
    dist.all_gather_object(parts, rows.cpu())
    whole = torch.empty((count, *rows.shape[1:]), dtype=rows.dtype)
    for r, part in enumerate(parts):
        whole[r::world()] = part
    return whole


def agree(value):
    """The first process's ``value``, everywhere (a decision only it can make, e.g. a cache hit)."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


@contextmanager
def leaving_together():
    """Run a command; under torchrun, when it ends well (click's exit code 0), leave the process group together,
    once every process is done: a process whose peer exits while gloo still holds their connection can abort in
    gloo's teardown (SIGABRT, "terminate called without an active exception")."""
    try:
        yield
    except SystemExit as end:
        if not end.code and dist.is_initialized():
            barrier()
            dist.destroy_process_group()
        raise


def same_start(params: list) -> None:
    """Every process starts from the first one's values of ``params``."""
    if world() > 1:
        for p in params:
            dist.broadcast(p.data, src=0)
