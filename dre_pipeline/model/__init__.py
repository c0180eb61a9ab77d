"""The method: Dr.E's stage one (graph → words) and the LLM predictor of stage two, without I/O.

``codebook.py`` is the frozen LLM's own word embeddings, refined to whole words (token-level
alignment); ``quantizer.py`` quantizes a view into K of them by residual VQ (Eq. 5-6) and
measures code usage (perplexity, Eq. 11); ``gnn.py`` is the multi-view GraphSAGE whose
quantized views are added back before the next hop (inter-layer residual, Eq. 7);
``losses.py`` the stage-one objective (feature, adjacency Eq. 10, label and commitment
losses); ``grounding.py`` the optional keyword targets on a graph with text (not in the
paper); ``sampling.py`` neighbour sampling for mini-batch stage one; ``prompts.py`` the
graph-word prompt, token by token; ``predictor.py`` the LLM as a classifier over class
names, whose shared prefix ``shared_prefix.py`` attends to in place; ``evaluation.py``
accuracy, macro-F1 and the confusion matrix. The stages that run them are in
:mod:`dre_pipeline.pipeline`.
"""
