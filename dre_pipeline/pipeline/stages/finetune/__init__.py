"""Stage two: ``finetune.py`` (the command), ``training.py`` (its loop and class scoring),
``node_tokens.py`` (what fills a node's slots), ``workspace.py`` (what stage two reads, resolved
from the config) and ``predict.py`` (answers from a finetuned model)."""
