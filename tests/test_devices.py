"""Which device and dtype each piece of a run uses, without a GPU: the hardware is mocked per device
(compute capability, generator state, allocated memory) and the calls torch would make are recorded.

tests/test_cuda.py runs the same paths on a real GPU where there is one.
"""

import contextlib
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

import dre_pipeline
from dre_pipeline.hardware import native_bf16
from dre_pipeline.pipeline import distributed, llm, runtime
from dre_pipeline.pipeline.artifacts import Store, load_torch, save_torch
from dre_pipeline.harness.markdown import economy_markdown
from dre_pipeline.pipeline.config import FinetuneConfig
from dre_pipeline.pipeline.llm import quantization_config
from dre_pipeline.pipeline.placement import compute_dtype
from dre_pipeline.pipeline import commands
from dre_pipeline.pipeline.llm import resolve_llm
from dre_pipeline.pipeline.stages.finetune import finetune, predict
from dre_pipeline.pipeline.placement import Placement

CPU, META = torch.device("cpu"), torch.device("meta")


# --- 1. collectives under NCCL take CUDA tensors -------------------------------------------------

@pytest.fixture
def two_processes(monkeypatch):
    """A process group of 2 that is not there: its backend is chosen per test, its all_reduce recorded."""
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)

    def backend(name: str, serves: str, **patched):
        monkeypatch.setattr(dist, "get_backend", lambda group=None: name)
        for attribute, value in patched.items():
            monkeypatch.setattr(torch.cuda, attribute, value)

        def all_reduce(tensor, op=None, group=None, async_op=False):
            calls.append((tensor.device, tensor.dtype))
            if tensor.device.type != serves:  # what NCCL answers a CPU tensor
                raise RuntimeError(f"{name}: no backend type associated with device type {tensor.device.type}")
            tensor.mul_(2)  # the other process holds the same values

        monkeypatch.setattr(dist, "all_reduce", all_reduce)
        return calls

    return backend


def test_sums_over_nccl_are_on_this_processs_gpu(two_processes):
    calls = two_processes("nccl", serves="cuda", current_device=lambda: 1)  # setup() made cuda:1 current
    # FakeTensorMode: tensors on cuda:1 without a GPU; they hold no data, so the sum cannot come back
    with FakeTensorMode(), pytest.raises(DataDependentOutputException):
        distributed.total([0.5, 12])
    assert calls == [(torch.device("cuda", 1), torch.float64)]


def test_gradients_summed_over_nccl_stay_on_their_gpu(two_processes):
    calls = two_processes("nccl", serves="cuda", current_device=lambda: 1)
    with FakeTensorMode():
        params = [torch.nn.Parameter(torch.ones(3, device="cuda:1")) for _ in range(2)]
        params[0].grad = torch.ones(3, device="cuda:1")  # the other was not used: zeros are summed for it
        distributed.sum_gradients(params)
    assert calls == [(torch.device("cuda", 1), torch.float32)] * 2


def test_sums_over_gloo_stay_on_the_cpu(two_processes):
    calls = two_processes("gloo", serves="cpu")
    assert distributed.total([0.5, 12]) == [1.0, 24.0]
    assert calls == [(CPU, torch.float64)]


# --- 2. bf16 where the given GPU multiplies it natively -------------------------------------------

@pytest.fixture
def gpus(monkeypatch):
    """cuda:0 a T4 (7.5: bf16 emulated), cuda:1 an A100 (8.0), cuda:1 the current device."""
    capability = {0: (7, 5), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    # what torch answers on a T4 with including_emulation left True, and for the current device only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return torch.device("cuda", 0), torch.device("cuda", 1)


def test_bf16_only_where_the_device_multiplies_it_natively(gpus):
    t4, a100 = gpus
    assert not native_bf16(t4) and native_bf16(a100)
    assert compute_dtype(t4) == torch.float32 and compute_dtype(a100) == torch.bfloat16
    assert quantization_config("4bit", t4).bnb_4bit_compute_dtype == torch.float32
    # --precision names the dtype whatever the device: bf16 on this CPU too, fp32 on the A100
    assert compute_dtype(CPU, "bf16") == torch.bfloat16 and compute_dtype(a100, "fp32") == torch.float32
    # auto on a CPU: bf16 where it multiplies bf16 natively, as on a GPU (every CPU class: test_quantizer.py)
    assert compute_dtype(CPU) == (torch.bfloat16 if native_bf16(CPU) else torch.float32)
    assert Placement.resolve("cpu", "none", "bf16").llm_dtype == torch.bfloat16


# --- 3. torch files load onto the run's device ----------------------------------------------------

@contextlib.contextmanager
def saved_on(location: str, *tensors: torch.Tensor):
    """Inside, ``torch.save`` tags the storages of ``tensors`` as saved on ``location`` (say ``cuda:1``), as a GPU
    run's file tags them; torch then loads them there unless told otherwise."""
    pointers = {t.untyped_storage().data_ptr() for t in tensors}
    registry = [(0, lambda storage: location if storage.data_ptr() in pointers else None, lambda storage, where: None),
                *torch.serialization._package_registry]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.serialization, "_package_registry", registry)
        yield


def test_tensors_saved_on_a_gpu_load_onto_the_runs_device_and_cpu_ones_stay(tmp_path):
    path, weight = tmp_path / "state.pt", torch.ones(2, 3)
    with saved_on("cuda:1", weight):
        save_torch({"weight": weight, "rng": torch.get_rng_state()}, path)  # a generator state is a CPU tensor
    with pytest.raises(RuntimeError, match="CUDA"):  # as torch itself would load it, on a machine without a GPU
        torch.load(path, weights_only=True)
    on_cpu = load_torch(path, CPU)
    assert on_cpu["weight"].device == CPU and torch.equal(on_cpu["weight"], torch.ones(2, 3))
    elsewhere = load_torch(path, META)  # the meta device stands in for another GPU
    assert elsewhere["weight"].device == META and elsewhere["rng"].device == CPU


def test_a_resumed_run_loads_its_checkpoint_onto_its_own_device(tmp_path):
    store, lora = Store(tmp_path), torch.ones(2)
    with saved_on("cuda:0", lora):  # what rank 0 of a torchrun on GPUs saved
        store.save_checkpoint("finetune", "k", {"trainable": {"lora_A": lora}, "rng": runtime.rng_state(CPU)})
    resumed = store.load_checkpoint("finetune", "k", META)  # rank 1's device, say
    assert resumed["trainable"]["lora_A"].device == META and resumed["rng"]["torch"].device == CPU
    runtime.set_rng_state(resumed["rng"], CPU)


def test_every_torch_load_in_the_package_goes_through_load_torch():
    """A bare ``torch.load`` puts tensors where they were saved: the one way in is :func:`load_torch`."""
    package = Path(dre_pipeline.__file__).parent
    found = {str(path.relative_to(package)): len(re.findall(r"torch\.load\(", path.read_text()))
             for path in package.rglob("*.py")}
    assert {name: count for name, count in found.items() if count} == {"pipeline/artifacts.py": 1}


def test_predict_on_a_cpu_reads_soft_tokens_a_gpu_run_saved(tmp_path, monkeypatch, tiny_llm):
    store = Store(tmp_path)
    cfg = FinetuneConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=5, patience=5, ft_epochs=1,
                         batch_size=16, lora_layers=1, node_tokens="soft")

    def as_on_a_gpu(state, path):
        with saved_on("cuda:0", *state.values()):
            save_torch(state, path)

    monkeypatch.setattr(finetune, "save_torch", as_on_a_gpu)  # the soft tokens' GNN and projector
    artifact = commands.finetune(cfg, store, quiet=True, device="cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(artifact.path / "graph_in_the_loop.pt", weights_only=True)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    saved = pq.read_table(artifact.path / "predictions.parquet").to_pydict()
    rows = commands.predict(cfg, store, saved["node_id"][:3], device="cpu", quiet=True)
    assert [r["prediction"] for r in rows] == saved["prediction_name"][:3]
    assert len(loads) >= 2 and all(kwargs.get("map_location") is not None for kwargs in loads)  # gnn.pt too


# --- 4. the GPU's generator is checkpointed with the CPU's -------------------------------------

def test_generator_states_carry_the_runs_gpu_and_restore_it(monkeypatch):
    cuda1, asked, restored = torch.device("cuda", 1), [], []
    gpu_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": asked.append(device) or gpu_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    state = runtime.rng_state(cuda1)
    assert asked == [cuda1] and torch.equal(state["cuda"], gpu_state)
    runtime.set_rng_state(state, cuda1)
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == cuda1
    assert "cuda" not in runtime.rng_state(CPU) and asked == [cuda1]  # a CPU run asks no GPU


def test_a_checkpoint_without_a_gpu_generator_leaves_it_as_seeded(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(device))
    written_before = {"torch": torch.get_rng_state(), "python": __import__("random").getstate()}  # no "cuda" key
    runtime.set_rng_state(written_before, torch.device("cuda", 0))
    assert restored == []


# --- 5. peak memory of the device the run used --------------------------------------------------

def test_peak_memory_is_read_from_the_runs_gpu(monkeypatch):
    allocated, reset = {0: 2**30, 1: 3 * 2**30}, []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: reset.append(device))
    cuda1 = torch.device("cuda", 1)
    peak = runtime.peak_memory_mb(cuda1)
    assert peak["cuda"] == 3072.0 and peak["cpu"] > 0
    assert "cuda" not in runtime.peak_memory_mb(CPU)
    runtime.reset_peak_memory(cuda1)
    runtime.reset_peak_memory(CPU)
    assert reset == [cuda1]


def test_economy_table_shows_each_rows_gpu_peak():
    def row(name, gpu_peak):
        return {"row": name, "label": name, "seed": 0, "val_accuracy": 0.8, "test_accuracy": 0.8,
                "seconds": {"finetune": 1.0}, "trained_prompts_per_second": 2.0, "trained_tokens_per_second": 9.0,
                "inference_nodes_per_second": 1.0, "peak_memory_mb": 900.0, "peak_gpu_memory_mb": gpu_peak}

    payload = {"results": [row("dre", 812.4), row("4bit", None)],
               "settings": {"dataset": "toy", "llm_path": None, "ft_epochs": 1}, "command": "c", "machine": "m",
               "date": "d"}
    lines = economy_markdown(payload)
    assert any(line.startswith("| row |") and line.endswith("| peak MB | peak GPU MB |") for line in lines)
    assert next(line for line in lines if line.startswith("| dre |")).endswith("| 900 | 812 |")
    assert next(line for line in lines if line.startswith("| 4bit |")).endswith("| 900 | – |")


# --- 6. a quantized base keeps the compute dtype, the same in training and in predict -------------

def unquantized_dtypes(model) -> dict:
    """The dtype of each base weight bitsandbytes left unquantized (embeddings, norms, LM head), by name."""
    return {name: p.dtype for name, p in model.named_parameters() if p.dtype != torch.int8 and "lora_" not in name}


def test_8bit_training_and_predict_keep_the_compute_dtype_and_score_alike(tmp_path, monkeypatch, tiny_llm):
    """bf16 asked for (``--precision bf16``, as auto picks on a GPU that multiplies it natively): the unquantized
    weights stay bf16 in the model finetune trains and in the one predict loads (PEFT's
    prepare_model_for_kbit_training cast them to fp32, for training only), and predict gives the scores finetune
    wrote for the same nodes (to bitsandbytes' CPU int8 kernels' precision: they differ by up to 1e-3 between the
    two in fp32 too)."""
    models = {}

    def recording(stage):
        real = stage.predictor_for

        def predictor_for(ws, model):
            models[stage.__name__] = model
            return real(ws, model)

        monkeypatch.setattr(stage, "predictor_for", predictor_for)

    recording(finetune)
    recording(predict)
    store = Store(tmp_path)
    cfg = FinetuneConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=5, patience=5, ft_epochs=1,
                         batch_size=16, lora_layers=1, quantization="8bit", precision="bf16")
    artifact = commands.finetune(cfg, store, quiet=True, device="cpu")
    saved = pq.read_table(artifact.path / "predictions.parquet").to_pydict()
    rows = commands.predict(cfg, store, saved["node_id"], device="cpu", quiet=True)  # the same nodes, batched alike
    trained, loaded = (unquantized_dtypes(models[stage.__name__]) for stage in (finetune, predict))
    assert trained and set(trained.values()) == {torch.bfloat16} and loaded == trained
    assert artifact.manifest["dtype"] == "bfloat16"  # how it ran, in its manifest
    names = artifact.manifest["class_names"]
    again = torch.tensor([[row["scores"][name] for name in names] for row in rows])
    assert torch.allclose(again, torch.tensor(saved["scores"]), atol=5e-3)


def test_a_quantized_base_with_lora_keeps_the_compute_dtype(tmp_path, tiny_llm):
    tiny = llm.resolve_llm(str(tiny_llm), Store(tmp_path))
    model = llm.attach_lora(llm.load_model(tiny, CPU, "8bit", "bf16"), FinetuneConfig(lora_layers=1),
                            ["q_proj", "v_proj"])
    assert set(unquantized_dtypes(model).values()) == {torch.bfloat16}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name, _ in model.named_parameters() if "lora_" in name}  # the base is frozen, LoRA trains


# --- 7. --features llm embeds on the command's device ---------------------------------------------

@pytest.mark.parametrize("command", ["encode", "finetune"])
def test_llm_text_features_run_on_the_commands_device(tmp_path, monkeypatch, tiny_llm, command):
    from typer.testing import CliRunner

    from dre_pipeline.cli import app
    from dre_pipeline.pipeline.stages import features

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked = []

    class Loaded(Exception):
        """Where the load would begin: there is no GPU here to load onto."""

    def load_model(llm, device, quantization="none", precision="auto"):
        asked.append(device)
        raise Loaded

    monkeypatch.setattr(features, "load_model", load_model)
    result = CliRunner().invoke(app, [command, "--dataset", "synthetic", "--features", "llm", "--llm-path", str(tiny_llm),
                                      "--device", "cuda:1", "--store", str(tmp_path), "--quiet"])
    assert isinstance(result.exception, Loaded), result.output
    assert asked == [torch.device("cuda", 1)]


# --- 8. stage one trains on the command's device --------------------------------------------------

class Stopped(Exception):
    """Where a stage would begin its work on a GPU this machine lacks."""


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("command", ["encode", "finetune"])
def test_stage_one_is_placed_on_the_commands_device(tmp_path, monkeypatch, tiny_llm, two_gpus, command):
    from typer.testing import CliRunner

    from dre_pipeline.cli import app
    from dre_pipeline.pipeline.stages import encode

    placed = []

    def run(plan, force=False):
        placed.append(plan.placement)
        raise Stopped

    monkeypatch.setattr(encode, "run", run)
    result = CliRunner().invoke(app, [command, "--dataset", "synthetic", "--llm-path", str(tiny_llm), "--device",
                                      "cuda:1", "--quantization", "8bit", "--store", str(tmp_path), "--quiet"])
    assert isinstance(result.exception, Stopped), result.output
    assert [(p.device, p.quantization) for p in placed] == [(torch.device("cuda", 1), "8bit")]


def test_stage_one_puts_model_graph_and_batches_on_its_device(tmp_path, monkeypatch, tiny_llm):
    from dre_pipeline.pipeline.config import EncodeConfig
    from dre_pipeline.pipeline.placement import Placement
    from dre_pipeline.pipeline.stages import encode

    placement, seen = Placement.resolve("cpu"), []
    real_step, real_on_device = encode.train_step, encode.on_device

    def train_step(model, optimizer, data, train_mask, nodes, edges, num_seeds, cfg, keyword_targets=None,
                   hops=None, weight=1.0):
        tensors = [next(model.parameters()), data.x, data.edge_index, data.y, train_mask, edges,
                   *([] if isinstance(nodes, slice) else [nodes]), *(keyword_targets or [])]
        seen.append({t.device for t in tensors})
        return real_step(model, optimizer, data, train_mask, nodes, edges, num_seeds, cfg, keyword_targets, hops,
                         weight)

    asked = []
    monkeypatch.setattr(encode, "train_step", train_step)
    monkeypatch.setattr(encode, "on_device", lambda data, device: asked.append(device) or real_on_device(data, device))
    for batch_nodes in (0, 64):  # full batch, then sampled mini-batches
        cfg = EncodeConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=2, patience=2, batch_nodes=batch_nodes,
                           keyword_weight=0.5, keyword_epochs=1)
        artifact = commands.encode(cfg, Store(tmp_path), quiet=True, placement=placement)
        assert all(t.device == CPU for t in load_torch(artifact.path / "gnn.pt", META)["state_dict"].values())
    assert asked == [placement.device] * 2 and seen and all(s == {placement.device} for s in seen)


def test_stage_one_on_another_device_finds_the_artifact_a_cpu_run_wrote(tmp_path, tiny_llm, two_gpus):
    """The key holds no device: a GPU run (here one that would fail at its first CUDA tensor) is a cache hit."""
    from dre_pipeline.pipeline.config import EncodeConfig
    from dre_pipeline.pipeline.placement import Placement
    from dre_pipeline.pipeline.stages import encode

    cfg, store = EncodeConfig(llm_path=str(tiny_llm), dataset="synthetic", epochs=2, patience=2), Store(tmp_path)
    on_cpu = commands.encode(cfg, store, quiet=True, placement=Placement.resolve("cpu"))
    on_gpu = commands.encode(cfg, store, quiet=True, placement=Placement.resolve("cuda:1"))
    assert on_gpu.cached and on_gpu.key == on_cpu.key


# --- 9. --features llm under --quantization ---------------------------------------------------------

def test_quantized_llm_features_load_the_quantized_model_under_a_key_of_their_own(tmp_path, monkeypatch, tiny_llm):
    from dre_pipeline.data import load_dataset
    from dre_pipeline.pipeline.placement import Placement
    from dre_pipeline.pipeline.stages import features

    loaded, real_load = [], features.load_model
    monkeypatch.setattr(features, "load_model",
                        lambda llm, device, quantization="none", precision="auto":
                        loaded.append(quantization) or real_load(llm, device, quantization, precision))
    store, data = Store(tmp_path), load_dataset("synthetic", None, tmp_path / "data")
    plain = features.run("llm", data, resolve_llm(str(tiny_llm), store), store, quiet=True)
    quantized = features.run("llm", data, resolve_llm(str(tiny_llm), store), store, quiet=True, placement=Placement.resolve("cpu", "8bit"))
    again = features.run("llm", data, resolve_llm(str(tiny_llm), store), store, quiet=True, placement=Placement.resolve("cpu", "8bit"))
    assert loaded == ["none", "8bit"] and again.cached and again.key == quantized.key != plain.key
    assert quantized.manifest["quantization"] == "8bit" and "quantization" not in plain.manifest
    # how it ran, outside the key: this CPU's compute dtype (bf16 where it multiplies bf16 natively)
    assert quantized.manifest["dtype"] == plain.manifest["dtype"] == str(compute_dtype(CPU)).removeprefix("torch.")
    # auto quantizes on CUDA only: on the CPU it is the unquantized model, and its cache
    assert features.run("llm", data, resolve_llm(str(tiny_llm), store), store, placement=Placement.resolve("cpu", "auto")).key == plain.key


def test_4bit_llm_features_the_cpu_cannot_run_stop_with_exit_code_2(tmp_path, tiny_llm):
    """The tiny Llama is 32 wide: bitsandbytes' CPU nf4 kernels need multiples of 64 (finetune refuses it alike)."""
    from typer.testing import CliRunner

    from dre_pipeline.cli import app

    result = CliRunner().invoke(app, ["encode", "--dataset", "synthetic", "--features", "llm", "--llm-path",
                                      str(tiny_llm), "--device", "cpu", "--quantization", "4bit", "--store",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "multiples of 64" in result.output
    bad = CliRunner().invoke(app, ["encode", "--dataset", "synthetic", "--quantization", "3bit", "--store",
                                   str(tmp_path), "--quiet"])
    assert bad.exit_code == 2 and "--quantization must be one of" in bad.output
