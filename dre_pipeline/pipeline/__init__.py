"""Running the method: options (``config.py``), the artifact store (``artifacts.py``), the LLM's
resolution and loading (``llm.py``), torchrun data parallelism (``distributed.py``), logging, seeds
and checkpoints (``runtime.py``), and the stages that turn a config into an artifact (``stages/``:
``codebook``, ``encode`` and ``features`` of stage one; stage two in ``stages/finetune/``)."""
