"""One measurement, one fresh process: how every bench mode runs its rows, CPU classes and graph sizes."""

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def in_fresh_process(fn, *args, env: dict = None):
    """``fn(*args)``'s result, computed in a new Python process under this one's environment plus ``env``.

    Spawned, not forked: nothing of this process is carried over, so the child's peak memory is its own and
    PyTorch and oneDNN read ``env`` (instruction-set limits) as they load. An exception in ``fn`` is raised here.
    """
    saved = dict(os.environ)
    os.environ.update(env or {})  # a spawned child inherits the environment as it is at its start
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(fn, *args).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)
