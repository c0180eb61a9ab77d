"""Sampling: the neighbour sampler of mini-batch stage one, trimmed steps, their seeds, whole-graph inference hop
by hop, and the class-stratified samples of stage two's budgets."""

from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import torch
from torch_geometric.utils import to_undirected

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import EncodeConfig
from dre_pipeline.data import load_dataset
from dre_pipeline.model import losses
from dre_pipeline.model.gnn import MultiViewSAGE, StageOneModel
from dre_pipeline.model.sampling import NeighborSampler, stratified_sample
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
    whole = torch.stack([model.encoder.quantizer.residual_norms(v.h, v.codes) for v in views])
    assert torch.allclose(norms, whole.mean(dim=(0, 1)), atol=1e-4)


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


def test_sampler_orders_nodes_and_edges_by_hop_with_their_counts():
    edge_index, n = random_graph(), 200
    seeds = torch.tensor([5, 17, 3])
    nodes, edges, num_nodes, num_edges = NeighborSampler(edge_index, n, [4, 3, 2], seed=0).sample_hops(seeds)
    assert len(num_nodes) == 4 and len(num_edges) == 3 and num_nodes[0] == 3
    assert sum(num_nodes) == len(nodes) and sum(num_edges) == edges.size(1)
    hop = torch.repeat_interleave(torch.arange(4), torch.tensor(num_nodes))  # each node's distance to the seeds
    edge_hop = torch.repeat_interleave(torch.arange(3), torch.tensor(num_edges))
    assert torch.equal(hop[edges[1]], edge_hop)  # hop l's edges end at the nodes first reached at hop l - 1
    assert torch.all(hop[edges[0]] <= edge_hop + 1)


def tiny_stage_one(num_features=8, num_classes=3, seed=0):
    torch.manual_seed(seed)
    codebook = torch.randn(50, 16)
    encoder = MultiViewSAGE(num_features, codebook, num_views=3, codes_per_view=2, dropout=0.0)
    return StageOneModel(encoder, num_features, num_classes)


def test_a_trimmed_step_gives_the_seeds_the_untrimmed_views_codes_label_loss_and_gradients():
    edge_index, n = random_graph(), 200
    g = torch.Generator().manual_seed(1)
    x, y, train = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g), torch.rand(n, generator=g) < 0.6
    seeds = torch.tensor([5, 17, 3, 120, 64])
    nodes, edges, *hops = NeighborSampler(edge_index, n, [4, 3, 2], seed=0).sample_hops(seeds)
    model = tiny_stage_one()
    results = []
    for trimmed in (False, True):
        model.zero_grad()
        views, logits, _, _ = model(x[nodes], edges, hops if trimmed else None)
        loss = losses.label_loss(logits[:5], y[nodes][:5], train[nodes][:5])
        loss.backward()
        results.append((views, loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (full, full_loss, full_grads), (cut, cut_loss, cut_grads) = results
    for t, (a, b) in enumerate(zip(full, cut)):
        assert b.z.size(0) == sum(hops[0][: 3 - t]) < a.z.size(0)  # layer t: the nodes within 2 - t hops
        assert torch.allclose(a.z[: b.z.size(0)], b.z, atol=1e-5)
        assert torch.equal(a.codes[: b.z.size(0)], b.codes)
    assert cut[-1].z.size(0) == 5 and cut_loss > 0
    assert torch.allclose(full_loss, cut_loss, atol=1e-6)
    assert len(full_grads) == len(cut_grads) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full_grads, cut_grads))


def test_layers_compute_fewer_nodes_hop_by_hop_on_a_larger_graph():
    edge_index, n = random_graph(n=5000, e=50000), 5000
    nodes, edges, *hops = NeighborSampler(edge_index, n, [15, 10, 5], seed=0).sample_hops(torch.arange(32))
    views = tiny_stage_one().encoder(torch.randn(len(nodes), 8), edges, hops)
    rows = [v.z.size(0) for v in views]
    assert rows[-1] == 32 and rows[0] < len(nodes) and rows == sorted(rows, reverse=True) and rows[1] < rows[0] / 2


def test_epoch_seeds_take_every_training_node_once_and_the_documented_share_from_the_rest():
    train = torch.zeros(100, dtype=torch.bool)
    train[torch.randperm(100, generator=torch.Generator().manual_seed(0))[:60]] = True
    steps = list(encode.epoch_seeds(train, 20, 0.25, torch.Generator().manual_seed(0)))
    assert len(steps) == 4  # 60 training nodes, 15 a step
    labelled = torch.cat([s[:15] for s in steps])
    assert torch.equal(labelled.sort().values, train.nonzero().view(-1))  # each training node once
    for step in steps:
        assert len(step) == 20 == len(set(step.tolist()))  # no seed twice: the sampler's positions stay one per node
        assert train[step[:15]].all() and not train[step[15:]].any()  # 5 of 20 from outside the training set
    only_train = list(encode.epoch_seeds(train, 20, 0.0, torch.Generator().manual_seed(0)))
    assert len(only_train) == 3 and all(train[s].all() for s in only_train)


def test_a_full_batch_step_is_the_untrimmed_whole_graph_step(tiny_llm, tmp_path):
    """Full batch has no per-hop counts: every layer on every node, losses over the whole graph, as before."""
    import copy

    from dre_pipeline.pipeline.runtime import seed_everything

    data = load_dataset("synthetic", None, tmp_path / "data")
    cfg = EncodeConfig(llm_path=str(tiny_llm), dataset="synthetic")
    train = torch.arange(data.num_nodes) % 3 == 0
    (nodes, edges, num_seeds, hops, weight), = encode.training_batches(data, None, 0, train, cfg.reconstruction_seeds,
                                                                        None)
    assert hops is None and num_seeds == data.num_nodes and weight == 1
    model = tiny_stage_one(num_features=data.x.size(1), num_classes=data.num_classes)
    before = copy.deepcopy(model)
    stepped = []
    for m, step in ((model, "train_step"), (before, "as before")):
        optimizer = torch.optim.AdamW(m.parameters(), lr=1e-2)
        seed_everything(3)  # the same negative samples (PyG draws them with Python's random)
        if step == "train_step":
            encode.train_step(m, optimizer, data, train, nodes, edges, num_seeds, cfg)
        else:
            loss, _ = losses.stage_one_loss(*m(data.x, data.edge_index), data.x, data.edge_index, data.y, train, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        stepped.append(list(m.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*stepped))


def test_a_process_whose_share_of_a_step_is_empty_takes_a_seed_at_weight_zero(monkeypatch):
    """Under torchrun a last step may hold fewer seeds than processes: every process must still step (the
    gradients are summed over all of them), so an empty share takes one seed that weighs nothing."""
    from dre_pipeline.pipeline import distributed

    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    data = type("Graph", (), {"x": torch.zeros(4, 2), "num_nodes": 4})()
    sampler = NeighborSampler(edge_index, 4, [2, 2], seed=0)
    train = torch.tensor([True, False, False, False])
    (nodes, _, num_seeds, _, weight), = encode.training_batches(data, sampler, 4, train, 0.0, torch.Generator())
    assert num_seeds == 1 and nodes[0] == 0 and weight == 0


def test_a_stratified_sample_keeps_each_class_share_and_is_drawn_anew_or_is_every_node_shuffled():
    nodes = np.arange(100, 400)
    classes = np.zeros(400, dtype=int)
    classes[100:160], classes[160:250] = 1, 2  # shares 60 / 90 / 150 of 300
    generator = np.random.default_rng(0)
    first, second = (stratified_sample(nodes, classes, 50, generator) for _ in range(2))
    for sample in (first, second):
        assert len(sample) == len(set(sample)) == 50 and set(sample) <= set(nodes)
        assert np.bincount(classes[sample], minlength=3).tolist() == [25, 10, 15]  # 50 x 150/300, 60/300, 90/300
    assert set(first) != set(second)  # drawn anew each epoch
    everything = stratified_sample(nodes, classes, len(nodes), generator)
    assert sorted(everything) == nodes.tolist() and (everything != nodes).any()  # all of them, shuffled
