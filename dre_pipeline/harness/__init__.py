"""Around the pipeline: the benchmark (``bench.py`` with its GNN ``baselines.py``, ``speed.py`` for
``--speed``, ``scale.py`` for ``--scale``), ``report.py`` (explain and report) and ``status.py``
(status and clean)."""
