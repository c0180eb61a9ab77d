"""End to end on the synthetic graph with a tiny random Llama: codebook → encode → finetune
(+ joint) → predict, through the same stage functions the CLI calls."""

import json
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dre_pipeline.pipeline.artifacts import Store
from dre_pipeline.pipeline.config import EncodeConfig, FinetuneConfig, subset
from dre_pipeline.errors import InputError
from dre_pipeline.pipeline.stages import codebook as codebook_stage, encode
from dre_pipeline.pipeline.stages.code_table import read_codes, write_codes
from dre_pipeline.pipeline.stages.finetune import finetune, node_tokens, predict, training, workspace
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.resolve import resolve
from dre_pipeline.pipeline.llm import resolve_llm

# fp32 on every CPU: these tests hold two code paths to each other's scores, which bf16's rounding would blur
SETTINGS = dict(dataset="synthetic", epochs=30, patience=30, ft_epochs=2, batch_size=8, joint=True, lora_layers=1,
                precision="fp32")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llm):
    store = Store(tmp_path_factory.mktemp("store"))
    cfg = FinetuneConfig(llm_path=str(tiny_llm), **SETTINGS)
    artifact = commands.finetune(cfg, store, quiet=True, device="cpu")
    return cfg, store, artifact


def test_codes_parquet(run):
    cfg, store, artifact = run
    enc = store.find("encode", artifact.manifest["encode"])
    table = pq.read_table(enc.path / "codes.parquet")
    assert table.num_rows == 300
    assert set(table.column("split").to_pylist()) == {"train", "val", "test"}
    for t in range(1, cfg.num_views + 1):
        codes, words = table[f"view{t}_codes"].to_pylist(), table[f"view{t}_words"].to_pylist()
        assert all(len(c) == cfg.codes_per_view for c in codes)
        assert all(w.isalpha() for row in words for w in row)
    metrics = json.loads((enc.path / "metrics.json").read_text())
    assert len(metrics["perplexity"]) == cfg.num_views and all(p >= 1 for p in metrics["perplexity"])
    levels = metrics["residual_norm_by_level"]
    assert all(b <= a for a, b in zip(levels, levels[1:]))


def test_codes_are_written_one_row_group_at_a_time(run, tmp_path):
    cfg, store, artifact = run
    ws = commands.workspace(cfg, store, quiet=True)
    whole = pq.read_table(ws.encode.path / "codes.parquet")
    codes = read_codes(ws.encode.path / "codes.parquet", cfg.num_views)
    write_codes(tmp_path / "codes.parquet", ws.data, ws.split, [codes[:, t] for t in range(cfg.num_views)],
                       ws.codebook, rows_per_group=64)
    assert pq.ParquetFile(tmp_path / "codes.parquet").metadata.num_row_groups == 5  # 300 nodes
    assert pq.read_table(tmp_path / "codes.parquet").equals(whole)


def test_predictions_are_always_class_names(run):
    cfg, store, artifact = run
    names = artifact.manifest["class_names"]
    table = pq.read_table(artifact.path / "predictions.parquet").to_pydict()
    assert set(table["prediction_name"]) <= set(names)
    assert set(table["split"]) == {"val", "test"}
    assert all(len(s) == len(names) for s in table["scores"])
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    for part in ("val", "test"):
        report, confusion = metrics["final"][part], np.array(metrics["final"][part]["confusion"])
        assert confusion.shape == (len(names), len(names))
        assert confusion.sum() == table["split"].count(part)  # one entry per scored node
        assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert 0 <= report["macro_f1"] <= 1
    assert all(h["seconds"] > 0 for h in metrics["finetune"]["history"])


def test_joint_pass_moves_the_gnn_or_keeps_the_plain_model(run):
    cfg, store, artifact = run
    joint = json.loads((artifact.path / "metrics.json").read_text())["joint"]
    assert joint["gnn_grad_norm_mean"] > 0  # the LLM's loss reaches the GNN
    enc = store.find("encode", artifact.manifest["encode"])
    before = torch.load(enc.path / "gnn.pt")["state_dict"]
    after = torch.load(artifact.path / "graph_in_the_loop.pt")
    convs = [k for k in before if k.startswith("encoder.convs")]
    moved = any(not torch.equal(before[k], after[f"stage_one.{k}"]) for k in convs)
    beaten = any(h["val_accuracy"] > joint["val_accuracy_at_start"] for h in joint["history"])
    assert convs and joint["kept_start"] == (not beaten) == (not moved) == (joint["gnn_weight_change"] == 0)


def test_predict_refuses_node_ids_the_graph_does_not_have(run):

    cfg, store, artifact = run
    with pytest.raises(InputError, match="unknown node ids \\[123456\\]"):
        commands.predict(cfg, store, [0, 123456], device="cpu", quiet=True)


def test_predict_agrees_with_saved_predictions(run):
    cfg, store, artifact = run
    saved = pq.read_table(artifact.path / "predictions.parquet").to_pydict()
    ids = saved["node_id"][:5]
    rows = commands.predict(cfg, store, ids, device="cpu", quiet=True)
    assert [r["node_id"] for r in rows] == ids
    assert [r["prediction"] for r in rows] == saved["prediction_name"][:5]
    assert all(len(r["words"]) == cfg.num_views for r in rows)


def test_predict_in_chunks_answers_as_all_at_once(run):
    cfg, store, artifact = run
    ws = commands.workspace(cfg, store, quiet=True, cached_only=True)
    trained = predict.from_store(ws)
    whole = predict.run(ws, trained, None)
    chunks = list(predict.chunks(ws, trained, None, size=128))
    assert [len(c) for c in chunks] == [128, 128, 44]  # 300 nodes
    rows = [row for chunk in chunks for row in chunk]
    assert [r["node_id"] for r in rows] == [r["node_id"] for r in whole] == list(range(300))
    for a, b in zip(rows, whole):
        assert a["prediction"] == b["prediction"] and a["words"] == b["words"] and a["prompt"] == b["prompt"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)  # each chunk pads its own batches


def test_rerun_is_a_cache_hit(run):
    cfg, store, artifact = run
    started = time.time()
    again = commands.finetune(cfg, store, quiet=True, device="cpu")
    assert again.cached and again.key == artifact.key
    assert again.manifest["peak_memory_mb"]["cpu"] > 0  # the training run's peak, reported on a cache hit too
    assert commands.encode(subset(cfg, EncodeConfig), store, quiet=True).cached
    assert time.time() - started < 30


def test_soft_prompt_baseline_trains_projector_and_predicts(run, tiny_llm):
    cfg, store, _ = run
    soft = FinetuneConfig(llm_path=str(tiny_llm), **{**SETTINGS, "joint": False}, node_tokens="soft")
    artifact = commands.finetune(soft, store, quiet=True, device="cpu")
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    assert metrics["finetune"]["gnn_grad_norm_mean"] > 0  # the loss reaches projector and GNN
    state = torch.load(artifact.path / "graph_in_the_loop.pt")
    assert "projector.weight" in state
    saved = pq.read_table(artifact.path / "predictions.parquet").to_pydict()
    rows = commands.predict(soft, store, saved["node_id"][:3], device="cpu", quiet=True)
    assert [r["prediction"] for r in rows] == saved["prediction_name"][:3]


def test_summary_table_names_every_stage(run):
    from dre_pipeline.harness.status import summary_table

    cfg, store, artifact = run
    table = summary_table(store, artifact)
    assert all(stage in table for stage in ("codebook", "encode", "finetune", "joint"))


@pytest.mark.parametrize("schedule, expected", [
    ("cosine", [0.0, 0.5, 1.0, 0.5, 0.0]),  # warmup over 2 of 8 steps, then half a cosine
    ("linear", [0.0, 0.5, 1.0, 0.5, 0.0]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0]),
])
def test_learning_rate_schedule_at_chosen_steps(schedule, expected):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    cfg = FinetuneConfig(dataset="synthetic", lr_schedule=schedule, warmup_ratio=0.25)
    scheduler = training.lr_scheduler(optimizer, cfg, total_steps=8)
    seen = []
    for step in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [round(seen[s], 6) for s in (0, 1, 2, 5, 8)] == expected


def test_code_samples_vary_training_prompts_but_never_evaluation(run):
    cfg, store, artifact = run
    ws = commands.workspace(replace(cfg, joint=False, code_samples=3), store, quiet=True)
    codes = read_codes(ws.encode.path / "codes.parquet", cfg.num_views)
    samples = node_tokens.sampled_codes(ws, 3, seed=0)
    assert len(samples) == 3 and all(s.shape == codes.shape for s in samples)
    assert any((s != codes).any() for s in samples)  # dropout changes some codes
    words = node_tokens.StoredWords(ws, codes, samples, seed=0)
    nodes = np.arange(40)
    words.eval()
    evaluation = [words.tokens(nodes)[0] for _ in range(3)]
    assert evaluation[0] == evaluation[1] == evaluation[2] == node_tokens.StoredWords(ws, codes).tokens(nodes)[0]
    words.train()
    training = [words.tokens(nodes)[0] for _ in range(3)]
    assert training[0] != training[1] or training[1] != training[2]


def test_pseudo_labels_train_the_unlabelled_nodes_toward_the_head_and_leave_validation_unseen(run):
    cfg, store, artifact = run
    ws = commands.workspace(replace(cfg, joint=False, distill_weight=0.5), store, quiet=True)
    train = ws.split == 0
    labels, weights = training.training_targets(ws, None)
    assert torch.equal(labels, ws.data.y) and torch.equal(weights, torch.from_numpy(train.astype(np.float32)))
    head = workspace.head_distribution(ws)
    assert head.shape == (ws.data.num_nodes, ws.data.num_classes) and torch.allclose(head.sum(1), torch.ones(len(head)))
    targets, weights = training.training_targets(ws, head)
    assert torch.equal(targets[train].argmax(1), ws.data.y[train]) and torch.all(targets[train].max(1).values == 1)
    val = ws.split == 1
    unlabelled = ~train & ~val
    assert torch.equal(targets[unlabelled], head[unlabelled])  # the head's distribution, not the label
    assert torch.all(weights[train] == 1) and torch.all(weights[unlabelled] == 0.5) and torch.all(weights[val] == 0)
    artifact = commands.finetune(replace(cfg, joint=False, distill_weight=0.5, ft_epochs=1), store, quiet=True,
                            device="cpu")
    steps = json.loads((artifact.path / "metrics.json").read_text())["finetune"]["steps"]
    assert steps == -(-int((~val).sum()) // cfg.batch_size)


def test_joint_pass_carries_the_stage_one_loss_at_its_weight(run):
    cfg, store, artifact = run
    ws = commands.workspace(cfg, store, quiet=True)
    predictor = type("Predictor", (), {"embed": torch.nn.Embedding(1, 16), "device": torch.device("cpu")})()
    module = node_tokens.graph_in_the_loop(ws, predictor, soft=False)
    train_nodes = np.flatnonzero(ws.split == 0)[:8]
    module.train()
    module.tokens(train_nodes)
    loss = module.stage_one_loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()  # reaches the decoders stage one trained, not only the encoder
    assert module.stage_one.label_head.weight.grad.abs().sum() > 0
    assert module.stage_one.feature_decoder.weight.grad.abs().sum() > 0
    module.eval()
    module.tokens(train_nodes)
    assert module.stage_one_loss is None  # evaluation computes none
    ws_off = commands.workspace(replace(cfg, joint_stage_one_weight=0.0), store, quiet=True)
    off = node_tokens.graph_in_the_loop(ws_off, predictor, soft=False).train()
    off.tokens(train_nodes)
    assert off.stage_one_loss is None


def test_text_goes_in_the_prompt_by_default_where_the_graph_has_text(run, tmp_path):
    import pyarrow as pa

    from dre_pipeline.data import load_dataset

    cfg, store, artifact = run
    plain = replace(cfg, joint=False)
    ws = commands.workspace(plain, store, quiet=True)  # the synthetic graph has text
    assert "own text" in ws.template.instruction and all(len(ids) for ids in ws.text_ids)
    codes = read_codes(ws.encode.path / "codes.parquet", cfg.num_views)
    suffix = ws.tokenizer.decode(workspace.suffixes_for(ws, codes[:1], [0])[0][0])
    assert suffix.index("3-hop") < suffix.index("Its own text:")  # graph words first, then the text
    assert "Its own text: " + ws.data.text[0].split()[0] in suffix  # its first word, as a word
    off = commands.workspace(replace(plain, use_text=False), store, quiet=True)
    assert not any(off.text_ids) and off.key != ws.key
    short = commands.workspace(replace(plain, max_text_tokens=3), store, quiet=True)  # text cut to its first tokens
    assert [ids[:3] for ids in ws.text_ids] == short.text_ids and short.key != ws.key
    assert max(map(len, ws.text_ids)) > 3

    graph = load_dataset("synthetic", None, tmp_path)  # the same graph without its text
    folder = tmp_path / "no-text"
    folder.mkdir()
    pq.write_table(pa.table({"node_id": graph.node_ids, "label": graph.y.numpy(),
                             "features": list(graph.x.numpy())}), folder / "nodes.parquet")
    src, dst = graph.edge_index.numpy()
    pq.write_table(pa.table({"src": src, "dst": dst}), folder / "edges.parquet")
    quick = replace(plain, dataset=str(folder), epochs=2, patience=2)
    keys = {commands.workspace(replace(quick, use_text=u, max_text_tokens=m), store, quiet=True).key
            for u, m in ((True, 64), (False, 64), (True, 8))}
    assert len(keys) == 1  # text settings do not split the cache of a graph without text


def test_llm_text_features_are_computed_once_and_feed_stage_one(run):
    from dre_pipeline.pipeline.stages import features

    cfg, store, artifact = run
    data = resolve(cfg, store).data
    first = features.run("llm", data, resolve_llm(cfg.llm_path, store), store, quiet=True)
    again = features.run("llm", data, resolve_llm(cfg.llm_path, store), store, quiet=True)
    assert not first.cached and again.cached and again.path == first.path
    llm_cfg = replace(subset(cfg, EncodeConfig), features="llm", epochs=2, patience=2)
    with_features = resolve(llm_cfg, store).data
    hidden = json.loads((first.path / "manifest.json").read_text())["shape"][1]
    assert with_features.x.shape == (data.num_nodes, hidden) and torch.isfinite(with_features.x).all()
    # standardised per dimension: the hidden states' shared direction would give every node the same words
    assert with_features.x.mean(0).abs().max() < 1e-4 and torch.allclose(with_features.x.std(0), torch.ones(hidden))
    assert with_features.fingerprint != data.fingerprint
    assert commands.encode(llm_cfg, store, quiet=True).manifest["fingerprint"] == with_features.fingerprint


@pytest.mark.parametrize("kind, width", [("bow", None), ("sbert", 384)])
def test_text_features_are_cached_under_their_own_keys(run, kind, width):
    from dre_pipeline.pipeline.stages import features

    cfg, store, _ = run
    data = resolve(cfg, store).data
    first = features.run(kind, data, resolve_llm(cfg.llm_path, store), store, quiet=True)
    again = features.run(kind, data, resolve_llm(cfg.llm_path, store), store, quiet=True)
    assert not first.cached and again.cached and again.path == first.path
    assert first.key != features.run("llm", data, resolve_llm(cfg.llm_path, store), store, quiet=True).key
    with_features = resolve(replace(subset(cfg, EncodeConfig), features=kind), store).data
    x = with_features.x
    if kind == "bow":  # 0/1 over the graph's words, stop words out
        assert set(x.unique().tolist()) <= {0.0, 1.0} and x.sum(1).min() > 0
    else:  # sentence embeddings, unit length; texts of one topic lie closer than texts of two
        assert x.shape == (data.num_nodes, width) and torch.allclose(x.norm(dim=1), torch.ones(data.num_nodes))
        same = data.y[:, None] == data.y[None, :]
        similarity = x @ x.T
        assert similarity[same].mean() > similarity[~same].mean() + 0.1
    assert with_features.fingerprint not in (data.fingerprint, first.key)


def test_auto_features_keep_a_graphs_own_and_embed_a_graph_of_text_alone(tmp_path):
    from dre_pipeline.data import load_dataset
    from dre_pipeline.pipeline.stages import features

    data = load_dataset("synthetic", None, tmp_path)
    assert features.resolve_kind("auto", data) == "raw"
    text_only = replace(data, x=data.x[:, :0])
    assert features.resolve_kind("auto", text_only) == features.TEXT_DEFAULT
    with pytest.raises(InputError, match="no feature vectors, only text"):
        features.resolve_kind("raw", text_only)
    with pytest.raises(InputError, match="has none: use --features raw"):
        features.resolve_kind("sbert", replace(data, text=None))


def test_text_codebook_narrows_the_codes_to_the_graphs_own_words(run, monkeypatch):
    from dre_pipeline.data import text_vocabulary

    cfg, store, artifact = run
    narrowed_cfg = replace(subset(cfg, EncodeConfig), text_codebook=True, epochs=2, patience=2)
    plan = resolve(narrowed_cfg, store)
    vocabulary = text_vocabulary(plan.data.text)
    narrowed = commands.encode(narrowed_cfg, store, quiet=True)
    book = codebook_stage.load(store.find("codebook", narrowed.manifest["codebook"]))
    full_key = store.find("encode", artifact.manifest["encode"]).manifest["codebook"]
    full = codebook_stage.load(store.find("codebook", full_key))
    assert 0 < len(book) < len(full) and {w.lower() for w in book.words} <= vocabulary
    table = pq.read_table(narrowed.path / "codes.parquet")
    assert {w.lower() for t in range(1, cfg.num_views + 1) for row in table[f"view{t}_words"].to_pylist()
            for w in row} <= vocabulary
    # a graph without text keeps the whole codebook: the option has nothing to narrow to
    from dre_pipeline.pipeline import resolve as resolve_module

    real = resolve_module.load_dataset
    monkeypatch.setattr(resolve_module, "load_dataset", lambda *args, **kwargs: replace(real(*args, **kwargs), text=None))
    assert resolve(narrowed_cfg, store).keys["codebook"] == full_key


def test_keyword_loss_makes_the_codes_the_words_of_their_hops(run):
    from dre_pipeline.data import text_vocabulary

    cfg, store, artifact = run
    plain_cfg = replace(subset(cfg, EncodeConfig), text_codebook=True, epochs=2, patience=2)
    data = resolve(plain_cfg, store).data
    own_words = [text_vocabulary([text]) for text in data.text]

    def share_in_own_text(enc) -> float:  # of the first view's words (1 hop: the node's text weighs most)
        rows = pq.read_table(enc.path / "codes.parquet")["view1_words"].to_pylist()
        return np.mean([word.lower() in own_words[i] for i, row in enumerate(rows) for word in row])

    keyword_cfg = replace(plain_cfg, keyword_weight=1.0, keyword_epochs=30)
    grounded, plain = commands.encode(keyword_cfg, store, quiet=True), commands.encode(plain_cfg, store, quiet=True)
    assert grounded.key != plain.key
    assert share_in_own_text(grounded) > 2 * share_in_own_text(plain)
    metrics = json.loads((grounded.path / "metrics.json").read_text())
    assert all("keyword" in step for step in metrics["history"])


def test_text_only_prompts_hold_no_graph_words(run):
    cfg, store, artifact = run
    ws = commands.workspace(replace(cfg, joint=False, node_tokens="none"), store, quiet=True)
    assert ws.template.view_ids == [] and "hop" not in ws.template.instruction
    codes = read_codes(ws.encode.path / "codes.parquet", cfg.num_views)
    suffix = ws.tokenizer.decode(workspace.suffixes_for(ws, codes[:1], [0])[0][0])
    assert suffix.startswith("Its own text:") and "hop" not in suffix
    with pytest.raises(Exception, match="needs --use-text"):
        replace(cfg, joint=False, node_tokens="none", use_text=False)


def test_codes_built_on_another_llms_vocabulary_are_refused(run, tmp_path):
    import shutil


    cfg, store, artifact = run
    copy = Store(tmp_path / "store")
    shutil.copytree(store.root, copy.root)
    book = copy.root / "codebook" / store.find("encode", artifact.manifest["encode"]).manifest["codebook"]
    manifest = json.loads((book / "manifest.json").read_text())
    manifest["llm"].update(identity="another", name="another-llm")
    (book / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="built on another-llm's vocabulary"):
        commands.workspace(replace(cfg, joint=False), copy, quiet=True)


def test_same_seed_same_codes_and_predictions(run, tmp_path):
    cfg, _, _ = run
    plain = replace(cfg, joint=False, ft_epochs=1)
    outputs = []
    for attempt in ("first", "second"):  # two stores: nothing cached is shared
        artifact = commands.finetune(plain, Store(tmp_path / attempt), quiet=True, device="cpu")
        encoded = Store(tmp_path / attempt).find("encode", artifact.manifest["encode"])
        outputs.append((pq.read_table(encoded.path / "codes.parquet"),
                        pq.read_table(artifact.path / "predictions.parquet")))
    (codes_a, pred_a), (codes_b, pred_b) = outputs
    assert codes_a.equals(codes_b)
    assert pred_a.drop(["scores"]).equals(pred_b.drop(["scores"]))
    np.testing.assert_array_equal(np.stack(pred_a["scores"].to_numpy(zero_copy_only=False)),
                                  np.stack(pred_b["scores"].to_numpy(zero_copy_only=False)))


def test_isolated_nodes_get_codes_like_any_other(run, tmp_path):
    """An isolated node's codes are what the trained GNN gives its own features with no neighbour at all:
    no message reaches it from another node's row or chunk, and no uninitialised code is left in its place."""
    import pyarrow as pa

    from dre_pipeline.data import load_dataset

    cfg, store, artifact = run
    graph = load_dataset("synthetic", None, tmp_path)
    extra = 5  # nodes with no edge at all, each with the features of a connected node
    folder = tmp_path / "isolated"
    folder.mkdir()
    features = np.concatenate([graph.x.numpy(), graph.x.numpy()[:extra]])
    pq.write_table(pa.table({"node_id": np.arange(graph.num_nodes + extra),
                             "label": np.concatenate([graph.y.numpy(), graph.y.numpy()[:extra]]),
                             "features": list(features)}), folder / "nodes.parquet")
    src, dst = graph.edge_index.numpy()
    pq.write_table(pa.table({"src": src, "dst": dst}), folder / "edges.parquet")
    isolated_cfg = replace(cfg, dataset=str(folder), epochs=2, patience=2)
    encoded = commands.encode(subset(isolated_cfg, EncodeConfig), store, quiet=True)
    codes = read_codes(encoded.path / "codes.parquet", cfg.num_views)
    assert codes.shape[0] == graph.num_nodes + extra

    ws = commands.workspace(isolated_cfg, store, quiet=True)
    alone, _, _ = workspace.stage_one_model(ws).inference(ws.data.x[-extra:], torch.empty(2, 0, dtype=torch.long))
    np.testing.assert_array_equal(codes[-extra:], alone.numpy())
    assert (codes[-extra:] < len(ws.codebook.token_ids)).all()


def test_predict_never_reads_a_damaged_adapter(run, tmp_path):
    import shutil


    cfg, store, artifact = run
    copy = Store(tmp_path / "store")
    shutil.copytree(store.root, copy.root)
    adapter = next((copy.root / "finetune" / artifact.key / "adapter").glob("*.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-64])  # truncated
    with pytest.raises(InputError, match="run `dre-pipeline finetune` first"):
        commands.predict(cfg, copy, [0], device="cpu", quiet=True)


def test_8bit_fine_tuning_runs_on_cpu_and_predict_reloads_it(run):
    cfg, store, _ = run
    quantized = replace(cfg, joint=False, ft_epochs=1, quantization="8bit")
    artifact = commands.finetune(quantized, store, quiet=True, device="cpu")
    assert artifact.manifest["settings"]["quantization"] == "8bit"
    saved = pq.read_table(artifact.path / "predictions.parquet").to_pylist()
    row = commands.predict(quantized, store, [3], device="cpu", quiet=True)[0]
    assert row["prediction"] in artifact.manifest["class_names"]
    assert row["prediction"] == next(r["prediction_name"] for r in saved if r["node_id"] == 3)


def test_4bit_fine_tuning_on_cpu_keeps_the_model_it_checkpoints(tmp_path, monkeypatch):
    """A checkpoint after every epoch, then restore-best: the scores finetune wrote are the ones the saved adapter
    gives on a freshly loaded model (a checkpoint through model.state_dict() changed bitsandbytes' CPU 4-bit
    weights in place, and the model trained on after it was no longer the one predict loads)."""
    from dre_pipeline.pipeline.llm import build_tiny_llama

    monkeypatch.setenv("DRE_CHECKPOINT_SECONDS", "0")
    llm = build_tiny_llama(tmp_path / "tiny-64", width=64)
    store = Store(tmp_path / "store")
    cfg = FinetuneConfig(llm_path=str(llm), **{**SETTINGS, "joint": False, "ft_epochs": 3}, quantization="4bit")
    artifact = commands.finetune(cfg, store, quiet=True, device="cpu")
    history = json.loads((artifact.path / "metrics.json").read_text())["finetune"]["history"]
    assert artifact.manifest["val_accuracy"] == max(h["val_accuracy"] for h in history)  # the best evaluation's model
    saved = {r["node_id"]: r["scores"] for r in pq.read_table(artifact.path / "predictions.parquet").to_pylist()}
    nodes = sorted(saved)[:8]
    answers = commands.predict(cfg, store, nodes, device="cpu", quiet=True)
    names = artifact.manifest["class_names"]
    again = torch.tensor([[row["scores"][name] for name in names] for row in answers])
    assert torch.allclose(again, torch.tensor([saved[n] for n in nodes]), atol=1e-3)


def test_finetune_on_two_processes_matches_one(tiny_llm, tmp_path):
    """torchrun, 2 CPU processes on gloo, each half of every batch: the same losses and scores as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = ["finetune", "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--epochs", "10", "--patience", "10",
            "--ft-epochs", "2", "--batch-size", "8", "--lora-layers", "1", "--lora-dropout", "0", "--llm-lr", "1e-2",
            "--precision", "fp32", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    one = subprocess.run([sys.executable, "-m", "dre_pipeline.cli", *args, "--store", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    two = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "dre_pipeline.cli", *args,
                          "--store", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert two.stdout.count("artifact:") == 1  # one summary, from the first process
    runs = [Store(tmp_path / name).list("finetune")[0] for name in ("one", "two")]
    assert runs[0].key == runs[1].key
    histories = [json.loads((a.path / "metrics.json").read_text())["finetune"]["history"] for a in runs]
    for a, b in zip(*histories):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["val_accuracy"] == b["val_accuracy"]
    scores = [torch.tensor(pq.read_table(a.path / "predictions.parquet")["scores"].to_pylist()) for a in runs]
    assert torch.allclose(scores[0], scores[1], atol=1e-4)  # sums over 2 processes: float reordering only

    predict_args = [a for a in args if a != "--quiet"][1:] + ["--node-ids", "0,1,2,3,4", "--format", "json"]
    answered = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "dre_pipeline.cli", "predict",
                               *predict_args, "--store", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert answered.returncode == 0, answered.stderr[-2000:]
    rows = json.loads(answered.stdout)  # one answer, from the first process
    saved = {r["node_id"]: r for r in pq.read_table(runs[1].path / "predictions.parquet").to_pylist()}
    assert [r["node_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["prediction"] == saved[r["node_id"]]["prediction_name"] for r in rows if r["node_id"] in saved)



def test_stage_one_on_two_processes_matches_one(tiny_llm, tmp_path):
    """torchrun, 2 CPU processes on gloo. Full batch: each process the whole step at half weight, the gradients
    summed: the same codes, byte for byte. Mini-batch: each process half of every step's seeds, sampled with its
    own generator: the same key and seeds per step, another draw of their neighbours; the label head within
    0.05 of one process's on every split (measured: val equal, test 0.883 against 0.900)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = ["encode", "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    # byte equality holds at any length; the mini-batch tolerance is measured at 30 epochs
    modes = {"full": ["--epochs", "3"], "mini": ["--epochs", "30", "--patience", "30", "--batch-nodes", "32"]}
    jobs = [(mode, processes) for mode in modes for processes in (1, 2)]
    runs = {(mode, processes): subprocess.Popen(  # all at once, each on a port of its own: each is mostly its imports
        [str(torchrun), "--nproc-per-node", str(processes), "--master-port", str(29611 + i), "-m", "dre_pipeline.cli",
         *args, *modes[mode], "--store", str(tmp_path / f"{mode}{processes}")], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, (mode, processes) in enumerate(jobs)}
    found = {}
    for (mode, processes), run in runs.items():
        stdout, stderr = run.communicate()
        assert run.returncode == 0, stderr[-2000:]
        assert stdout.count("label head test accuracy") == 1  # one summary, from the first process
        found[mode, processes], = Store(tmp_path / f"{mode}{processes}").list("encode")
    for mode in ("full", "mini"):
        one, two = found[mode, 1], found[mode, 2]
        assert one.key == two.key
        if mode == "full":
            assert (one.path / "codes.parquet").read_bytes() == (two.path / "codes.parquet").read_bytes()
        for part in ("train", "val", "test"):
            assert abs(one.manifest["label_head_accuracy"][part] - two.manifest["label_head_accuracy"][part]) <= 0.05


# --- stage one's memory, bounded ------------------------------------------------------------------

@pytest.mark.parametrize("nodes, edges, features, width, batched", [
    (2_708, 10_556, 1_433, 576, False),  # Cora
    (2_995, 16_316, 2_879, 576, False),  # Cora-ML
    (19_717, 88_648, 500, 576, False),  # PubMed
    (200_000, 2_000_000, 128, 576, False),  # where the 200,000-node threshold was set, at SmolLM2's width
    (300_000, 3_000_000, 128, 576, True),  # bench --scale's 300k graph, batched before too
    (169_343, 2_315_598, 128, 576, False),  # ogbn-arxiv at 576: full batch, as before
    (169_343, 2_315_598, 128, 4_096, True),  # ogbn-arxiv at a 7B model's 4,096: 121 GB a full-batch step
])
def test_full_or_mini_batch_is_chosen_by_a_steps_memory(nodes, edges, features, width, batched):
    cfg = EncodeConfig()
    assert encode.mini_batch_size(cfg, nodes, edges, features, width) == (256 if batched else 0)
    assert encode.mini_batch_size(replace(cfg, batch_nodes=512), nodes, edges, features, width) == 512


def random_pairs_graph(num_nodes=60, num_edges=500, width=16, seed=0):
    from torch_geometric.utils import to_undirected

    generator = torch.Generator().manual_seed(seed)
    edge_index = to_undirected(torch.randint(num_nodes, (2, num_edges), generator=generator), num_nodes=num_nodes)
    return torch.randn(num_nodes, width, generator=generator, requires_grad=True), edge_index


def adjacency_value_and_gradient(z, edge_index, chunk):
    from dre_pipeline.model import losses
    from dre_pipeline.pipeline.runtime import seed_everything

    seed_everything(1)  # the same sampled negatives for both (PyG draws them with Python's and torch's generators)
    loss = losses.adjacency_loss(z, edge_index, z.size(0), chunk)
    (gradient,) = torch.autograd.grad(loss, z)
    return loss.detach(), gradient


def test_adjacency_loss_in_chunks_has_the_unchunked_value_and_gradient():
    z, edge_index = random_pairs_graph()
    whole = adjacency_value_and_gradient(z, edge_index, chunk=edge_index.size(1))
    chunked = adjacency_value_and_gradient(z, edge_index, chunk=37)
    assert torch.allclose(chunked[0], whole[0], atol=1e-6, rtol=0)
    assert torch.allclose(chunked[1], whole[1], atol=1e-6, rtol=0)


def test_adjacency_loss_never_holds_more_than_a_chunk_of_pair_rows():
    """Every [rows, d] tensor any op makes, forward and backward, recorded: none is [E, d], only [N, d] and a chunk's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    z, edge_index = random_pairs_graph()
    (n, d), e, chunk = z.shape, edge_index.size(1), 32

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() == 2 and t.size(1) == d:  # rows of z, not [2, E] indices
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    for size, bound in ((e, e * d), (chunk, max(n, chunk) * d)):
        Largest.numel = 0
        with Largest():
            adjacency_value_and_gradient(z, edge_index, chunk=size)
        assert Largest.numel == bound if size == e else Largest.numel <= bound < e * d


def test_joint_pass_codes_of_the_whole_graph_in_node_chunks_are_the_whole_graphs(tiny_llm, tmp_path):
    from types import SimpleNamespace

    cfg, store = EncodeConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=4, patience=4), Store(tmp_path)
    artifact = commands.encode(cfg, store, quiet=True)
    data = resolve(cfg, store).data
    codebook = codebook_stage.load(store.find("codebook", artifact.manifest["codebook"]))
    ws = SimpleNamespace(cfg=cfg, data=data, encode=artifact, codebook=codebook)  # what the GNN in the loop reads
    loop = node_tokens.GraphInTheLoop(ws, workspace.stage_one_model(ws), codebook.vectors, soft=False)
    loop.encoder.eval()
    with torch.no_grad():
        whole = torch.stack([v.codes for v in loop.encoder(data.x, data.edge_index)], dim=1).numpy()
    assert np.array_equal(loop.all_codes(chunk=41), whole) and np.array_equal(loop.all_codes(), whole)


def test_finetune_trains_the_prompt_budget_per_epoch(run):
    cfg, store, artifact = run
    budget, epochs = 12, 2
    assert budget < int((commands.workspace(cfg, store, quiet=True).split == 0).sum())
    artifact = commands.finetune(replace(cfg, joint=False, ft_epochs=epochs, ft_patience=epochs,
                                         ft_prompts_per_epoch=budget), store, quiet=True, device="cpu")
    steps = json.loads((artifact.path / "metrics.json").read_text())["finetune"]["steps"]
    assert steps == epochs * -(-budget // cfg.batch_size)


def test_finetune_scores_a_stratified_validation_sample_and_every_test_node(run):
    cfg, store, _ = run
    sampled = replace(cfg, joint=False, ft_epochs=1, ft_val_nodes=20)
    ws = commands.workspace(sampled, store, quiet=True)
    val, test = (np.flatnonzero(ws.split == part) for part in (1, 2))
    assert len(val) > 20 and set(ws.scored_nodes("val")) < set(val)
    assert np.array_equal(ws.scored_nodes("test"), test)
    shares = np.bincount(ws.data.y.numpy()[ws.scored_nodes("val")], minlength=ws.data.num_classes) / 20
    assert np.abs(shares - np.bincount(ws.data.y.numpy()[val], minlength=ws.data.num_classes) / len(val)).max() < 0.06
    artifact = commands.finetune(sampled, store, quiet=True, device="cpu")
    table = pq.read_table(artifact.path / "predictions.parquet").to_pandas()
    assert sorted(table[table.split == "val"].node_id) == sorted(ws.data.node_ids[ws.scored_nodes("val")])
    assert sorted(table[table.split == "test"].node_id) == sorted(ws.data.node_ids[test])
    metrics = json.loads((artifact.path / "metrics.json").read_text())
    assert np.sum(metrics["final"]["val"]["confusion"]) == 20
    everything = commands.workspace(replace(sampled, ft_val_nodes=0), store, quiet=True)
    assert np.array_equal(everything.scored_nodes("val"), val) and everything.key != ws.key
