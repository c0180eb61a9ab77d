"""A generated graph with real-word text: small, offline, deterministic in its seed."""

from __future__ import annotations

import numpy as np
import torch

from .graph import GraphData, _graph

# Synthetic graph: real words so that a language model has something meaningful to read.
_SYNTHETIC_CLASSES = {
    "astronomy": [
        "star", "planet", "galaxy", "comet", "orbit",
        "telescope", "nebula", "moon", "asteroid", "eclipse",
    ],
    "botany": [
        "leaf", "root", "flower", "seed", "petal",
        "stem", "pollen", "fern", "moss", "orchid",
    ],
    "chemistry": [
        "molecule", "acid", "atom", "reaction", "catalyst",
        "electron", "solvent", "crystal", "bond", "polymer",
    ],
    "geology": [
        "rock", "mineral", "fossil", "volcano", "granite",
        "sediment", "quartz", "erosion", "magma", "basalt",
    ],
    "music": [
        "melody", "rhythm", "chord", "violin", "harmony",
        "tempo", "piano", "guitar", "symphony", "chorus",
    ],
}
_SYNTHETIC_FILLER = [
    "the", "a", "study", "new", "analysis", "results",
    "method", "report", "notes", "observation", "of", "with",
]
_SYNTHETIC_NODES_PER_CLASS = 60
_SYNTHETIC_DIM = 64
_SYNTHETIC_P_INTRA = 0.05
_SYNTHETIC_P_INTER = 0.004
_SYNTHETIC_WORDS_PER_NODE = 8
_SYNTHETIC_TOPIC_SHARE = 0.7
_SYNTHETIC_NOISE = 2.0


NAMES = ("synthetic",)


def load(name: str, data_dir, cache_dir, seed: int = 0) -> GraphData:
    """A small homophilous graph with real-word text: fast, offline, deterministic in ``seed`` (it reads no
    files: ``data_dir`` and ``cache_dir`` are the sources' common signature)."""
    rng = np.random.default_rng(seed)
    class_names = list(_SYNTHETIC_CLASSES)
    num_classes = len(class_names)
    labels = rng.permutation(np.repeat(np.arange(num_classes), _SYNTHETIC_NODES_PER_CLASS))
    num_nodes = labels.size

    means = rng.normal(0.0, 1.0, size=(num_classes, _SYNTHETIC_DIM))
    x = means[labels] + rng.normal(0.0, _SYNTHETIC_NOISE, size=(num_nodes, _SYNTHETIC_DIM))

    same_class = labels[:, None] == labels[None, :]
    prob = np.where(same_class, _SYNTHETIC_P_INTRA, _SYNTHETIC_P_INTER)
    src, dst = np.nonzero(np.triu(rng.random((num_nodes, num_nodes)) < prob, k=1))

    text = []
    for label in labels:
        topic = _SYNTHETIC_CLASSES[class_names[label]]
        words = [
            rng.choice(topic if rng.random() < _SYNTHETIC_TOPIC_SHARE else _SYNTHETIC_FILLER)
            for _ in range(_SYNTHETIC_WORDS_PER_NODE)
        ]
        text.append(" ".join(str(w) for w in words))

    return _graph(
        name="synthetic",
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(np.stack([src, dst])),
        y=torch.from_numpy(labels),
        class_names=class_names,
        text=text,
        node_ids=np.arange(num_nodes),
        public_split=None,
    )
