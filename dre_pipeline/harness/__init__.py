"""Around the pipeline: the benchmark (``bench.py`` over ``rows.py`` and ``baselines.py``, its options in
``bench_config.py``, each measurement in a fresh process by ``runner.py``, RESULTS.md by ``markdown.py`` and the
sections of ``benchmarks/``'s scripts by ``script_sections.py``; ``speed.py`` for ``--speed``, ``scale.py`` for
``--scale``), ``memory_plan.py`` with ``plan_inputs.py`` (plan), ``report.py`` (explain and report) and
``status.py`` (status and clean)."""
