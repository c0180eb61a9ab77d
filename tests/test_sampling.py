"""Mini-batch stage one: the neighbour sampler, and whole-graph inference hop by hop."""

from dataclasses import replace

import pyarrow.parquet as pq
import torch
from torch_geometric.utils import to_undirected

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.data import load_dataset
from dre_pipeline.model.sampling import NeighborSampler
from dre_pipeline.pipeline.stages import codebook as codebook_stage, encode
from dre_pipeline.pipeline import commands


def random_graph(n=200, e=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    return to_undirected(torch.randint(0, n, (2, e), generator=g), num_nodes=n)


def test_sampler_draws_real_edges_at_most_k_per_node_seeds_first():
    edge_index, n = random_graph(), 200
    real = set(map(tuple, edge_index.T.tolist()))
    in_degree = torch.bincount(edge_index[1], minlength=n)
    sampler = NeighborSampler(edge_index, n, [4, 3], seed=0)
    seeds = torch.tensor([5, 17, 3])
    nodes, edges = sampler.sample(seeds)
    assert torch.equal(nodes[:3], seeds) and len(set(nodes.tolist())) == len(nodes)
    assert all((int(nodes[s]), int(nodes[t])) in real for s, t in edges.T.tolist())
    assert len(set(map(tuple, edges.T.tolist()))) == edges.size(1)  # without replacement
    into_seeds = torch.bincount(edges[1][edges[1] < 3], minlength=3)
    assert torch.equal(into_seeds, in_degree[seeds].clamp(max=4))
    assert torch.all(sampler.local == -1)  # ready for the next batch
    again = NeighborSampler(edge_index, n, [4, 3], seed=0).sample(seeds)
    assert torch.equal(again[0], nodes) and torch.equal(again[1], edges)  # deterministic in its seed


def test_minus_one_takes_every_neighbour():
    edge_index, n = random_graph(), 200
    nodes, edges = NeighborSampler(edge_index, n, [-1], seed=0).sample(torch.tensor([7]))
    assert edges.size(1) == int((edge_index[1] == 7).sum())


def stage_one(tiny_llm, tmp_path, **settings):
    cfg = EncodeConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=6, patience=6, **settings)
    store = Store(tmp_path)
    return cfg, store, commands.encode(cfg, store, quiet=True)


def test_inference_hop_by_hop_in_chunks_matches_the_whole_graph_forward(tiny_llm, tmp_path):
    cfg, store, artifact = stage_one(tiny_llm, tmp_path)
    data = load_dataset("synthetic", None, tmp_path / "data")
    codebook = codebook_stage.load(store.find("codebook", artifact.manifest["codebook"]))
    model = encode.build_model(cfg, data, codebook)
    model.load_state_dict(torch.load(artifact.path / "gnn.pt", weights_only=True)["state_dict"])
    model.eval()
    with torch.no_grad():
        views, logits, _, _ = model(data.x, data.edge_index)
    codes, chunked_logits, norms = model.inference(data.x, data.edge_index, chunk=37)
    assert torch.equal(codes, torch.stack([v.codes for v in views], dim=1))
    assert torch.allclose(chunked_logits, logits, atol=1e-4)
    assert torch.allclose(norms, torch.stack([v.residual_norms for v in views]).mean(dim=(0, 1)), atol=1e-4)


def test_mini_batch_stage_one_trains_and_writes_codes(tiny_llm, tmp_path):
    cfg, store, whole = stage_one(tiny_llm, tmp_path)
    mini_cfg = replace(cfg, batch_nodes=64, num_neighbors="5,3", epochs=30, patience=30)  # 3 views: 5,3,3
    data = load_dataset("synthetic", None, tmp_path / "data")
    sizes = (data.num_nodes, data.edge_index.size(1), data.x.size(1), 64)
    assert encode.mini_batch_size(mini_cfg, *sizes) == 64 and encode.mini_batch_size(cfg, *sizes) == 0
    assert encode.mini_batch_size(replace(cfg, batch_nodes=300), *sizes) == 0  # one batch of all: full batch
    mini = commands.encode(mini_cfg, store, quiet=True)
    assert mini.key != whole.key
    table = pq.read_table(mini.path / "codes.parquet")
    assert table.num_rows == 300
    history = (mini.path / "metrics.json").read_text()
    assert '"label"' in history
    assert mini.manifest["label_head_accuracy"]["train"] > 0.5  # 6 classes: chance is 0.17
    again = commands.encode(mini_cfg, Store(tmp_path / "again"), quiet=True)
    assert pq.read_table(again.path / "codes.parquet").equals(table)  # same seed, same batches, same codes
