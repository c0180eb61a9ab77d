"""One measurement, one fresh process: how every bench mode runs its rows, CPU classes and graph sizes."""

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from ..pipeline.runtime import keep_freed_memory


def in_fresh_process(fn, *args, env: dict = None):
    """``fn(*args)``'s result, computed in a new Python process under this one's environment plus ``env``.

    Spawned, not forked: nothing of this process is carried over, so the child's peak memory is its own and
    PyTorch and oneDNN read ``env`` (instruction-set limits) as they load. The child's allocator is set up as the
    CLI's processes are (:func:`~..pipeline.runtime.keep_freed_memory`). An exception in ``fn`` is raised here.
    """
    saved = dict(os.environ)
    os.environ.update(env or {})  # a spawned child inherits the environment as it is at its start
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_as_the_cli_runs, fn, *args).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _as_the_cli_runs(fn, *args):
    keep_freed_memory()
    return fn(*args)
