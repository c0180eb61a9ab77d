"""``dre-pipeline plan``: its estimates against measured CPU peaks, its arithmetic on Llama-2-7B's
configuration at ogbn-arxiv's size, and its command line.

"Peak" (as :mod:`dre_pipeline.harness.memory_plan` defines it): the process's peak resident size (``VmHWM``)
less its resident size after importing what the stage imports, in a fresh process. The SmolLM2 runs
take minutes, so their peaks are recorded in ``benchmarks/results/memory_peaks.json`` (with the command
and the machine, by ``benchmarks/memory_peaks.py``); one stage-one run on a tiny model is measured live.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dre_pipeline.harness import memory_plan as mp, plan_inputs
from dre_pipeline.cli import app
from dre_pipeline.pipeline.config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
LLAMA_2_7B = ROOT / "benchmarks" / "llama-2-7b"
PEAKS = ROOT / "benchmarks" / "results" / "memory_peaks.json"
TOLERANCE = 0.25
ARXIV = mp.GraphShape(nodes=169_343, messages=2 * 1_166_243, feature_dim=128, classes=40,
                      prompt_tokens=plan_inputs.prompt_tokens(FinetuneConfig(), 0),
                      prefix_tokens=plan_inputs.prefix_tokens(40))


def _peaks_module():
    spec = importlib.util.spec_from_file_location("memory_peaks", ROOT / "benchmarks" / "memory_peaks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smollm2_config(tmp_path_factory) -> Path:
    """The embedded SmolLM2's config.json alone (read from its GGUF metadata once): what the plan needs of it."""
    config, _ = plan_inputs.read_config(None)
    folder = tmp_path_factory.mktemp("smollm2-config")
    config.save_pretrained(folder)
    return folder


def plan_rows(args: list, store: Path, data_dir: Path) -> dict:
    result = CliRunner().invoke(app, ["plan", *args, "--device", "cpu", "--format", "json", "--store", str(store),
                                      "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return {row["stage"]: row for row in json.loads(result.output)["rows"]}


def stage_of(command: str) -> str:
    return command.split()[1]


@pytest.mark.parametrize("name", sorted(json.loads(PEAKS.read_text())["runs"]))
def test_estimate_within_25_percent_of_the_recorded_peak(name, smollm2_config, tmp_path, datasets_root, monkeypatch):
    """Each recorded SmolLM2 run on this repo's CPU machine, against the plan for the same options and the
    search dtype it ran with: the plan's is this CPU's, and the search's tables and buffers follow it."""
    import torch

    from dre_pipeline.model import quantizer

    run = json.loads(PEAKS.read_text())["runs"][name]
    searched = {"bf16": torch.bfloat16, "fp32": torch.float32}[run["search"]]
    monkeypatch.setattr(quantizer, "search_dtype", lambda device: searched)
    # the stage two of a run recorded without its precision ran in fp32, auto's choice on every CPU then
    args = [*run["command"].split()[2:], "--precision", run.get("precision", "fp32")]
    row = plan_rows([*args, "--llm-path", str(smollm2_config)], tmp_path, datasets_root)[stage_of(run["command"])]
    measured = run["stage_peak_mb"] * 2**20
    assert abs(row["total"] - measured) <= TOLERANCE * measured, (name, row["total"] / 2**20, run["stage_peak_mb"])


def test_live_stage_one_peak_on_a_tiny_model(tiny_llm, tmp_path, datasets_root):
    """Measured now: the codebook and stage one on the synthetic graph with a 2-layer Llama (seconds)."""
    peaks = _peaks_module()
    store = str(tmp_path / "store")
    for stage, options in (("codebook", []), ("encode", ["--dataset", "synthetic", "--epochs", "2"])):
        args = ["--llm-path", str(tiny_llm), *options]
        row = plan_rows(args, tmp_path / "plan-store", datasets_root)[stage]
        # measured in a child of this (large) pytest process: hence VmHWM, which execve resets, not ru_maxrss
        measured = peaks.measure([stage, *args], store)["stage_peak_mb"] * 2**20
        assert abs(row["total"] - measured) <= TOLERANCE * measured, (stage, row["total"] / 2**20, measured / 2**20)


@pytest.fixture(scope="module")
def llama_7b() -> mp.ModelShape:
    config, name = plan_inputs.read_config(str(LLAMA_2_7B))
    return plan_inputs.model_shape(config, name)


def cuda(memory_gb: int, dtype: str = "bf16") -> mp.Target:
    return mp.Target("cuda", mp.DTYPE_BYTES[dtype], memory_gb * mp.GiB, 128 * mp.GiB, 2, dtype)


def rows_of(model, cfg, target, seeds=0) -> dict:
    return {(r.stage, r.place): r for r in mp.plan(model, ARXIV, cfg, target, seeds)}


def test_llama_2_7b_counts_its_own_parameters(llama_7b):
    """6.74 B parameters: 32 layers of 4 x 4096^2 attention and 3 x 4096 x 11008 MLP (6.48 B, quantizable), an
    embedding and an LM head of 32000 x 4096 each (0.26 B), and the norms."""
    assert llama_7b.linear_params == 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert llama_7b.other_params == 2 * 32000 * 4096 + 65 * 4096
    assert (llama_7b.hidden, llama_7b.layers, llama_7b.kv_dim, llama_7b.vocab) == (4096, 32, 4096, 32000)


def test_k_bit_weights_shrink_by_about_2x_and_4x(llama_7b):
    """bf16 13.5 GB; LLM.int8 1 byte per linear weight, nf4 0.5 + 4/64 (absmax per 64-block); embeddings and the
    LM head (0.52 GB in bf16) stay in the compute dtype, so 4-bit comes to 3.2x, not 4x."""
    bf16 = mp.weights(llama_7b, "none", 2)
    assert bf16 == pytest.approx(13.48e9, rel=0.01)
    assert 1.8 < bf16 / mp.weights(llama_7b, "8bit", 2) < 2.0
    assert 3.0 < bf16 / mp.weights(llama_7b, "4bit", 2) < 4.0


def test_stage_two_of_arxiv_sized_llama_2_7b_on_80_and_24_gb(llama_7b):
    """Default options in bf16: 12.6 GiB of weights + the 4 GiB frozen-layer cache + under 1 GiB of activations
    (8 rows of ~40 tokens through 8 trained layers; scoring 32 rows) + 1 GiB of CUDA context: about 18 GiB,
    which fits both cards. In fp32 (what a pre-Ampere card computes in) the weights alone are 25 GiB: 80 GB fits,
    24 GB does not; in 8 bits it fits again."""
    cfg = FinetuneConfig()
    big, small = rows_of(llama_7b, cfg, cuda(80)), rows_of(llama_7b, cfg, cuda(24))
    assert big["finetune", "cuda"].fits and small["finetune", "cuda"].fits
    assert 16 * mp.GiB < big["finetune", "cuda"].total < 21 * mp.GiB
    assert rows_of(llama_7b, cfg, cuda(80, "fp32"))["finetune", "cuda"].fits
    assert not rows_of(llama_7b, cfg, cuda(24, "fp32"))["finetune", "cuda"].fits
    eight = FinetuneConfig(quantization="8bit")
    assert rows_of(llama_7b, eight, cuda(24, "fp32"))["finetune", "cuda"].fits


def test_training_every_layer_costs_activations_not_a_cache(llama_7b):
    """--lora-layers 0 (the paper's): no frozen layers, so no frozen-layer cache, and every layer saves activations."""
    top, every = FinetuneConfig(), FinetuneConfig(lora_layers=0)
    a, b = rows_of(llama_7b, top, cuda(80))["finetune", "cuda"], rows_of(llama_7b, every, cuda(80))["finetune", "cuda"]
    assert "frozen-layer cache" not in b.parts and a.parts["frozen-layer cache"] == 4 * mp.GiB
    assert b.parts["LoRA + AdamW"] == 4 * a.parts["LoRA + AdamW"]


def test_stage_one_at_llama_width_fits_no_80gb_card_on_arxiv(llama_7b):
    """Full batch on 169k nodes at d = 4096: a dozen [N, d] fp32 tensors per view (2.6 GiB each) and one hop's
    [E, d] messages (36 GiB); the adjacency loss adds one bounded chunk (losses.pair_chunk), not its [E, d] rows.
    256 seeds a step with 15, 10, 5 neighbours draw ~127k distinct nodes: still over 80 GB."""
    cfg = FinetuneConfig()
    full = rows_of(llama_7b, cfg, cuda(80))["encode", "cuda"]
    batched = rows_of(llama_7b, cfg, cuda(80), seeds=256)["encode", "cuda"]
    assert not full.fits and full.total > 100 * mp.GiB
    assert not batched.fits and batched.total < full.total


def test_cli_prints_a_table_for_given_sizes(tmp_path):
    result = CliRunner().invoke(app, ["plan", "--llm-path", str(LLAMA_2_7B), "--nodes", "169343", "--edges", "1166243",
                                      "--feature-dim", "128", "--classes", "40", "--device", "cuda",
                                      "--device-memory", "24GB", "--store", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("llama-2-7b on given sizes: 169,343 nodes, 2,332,486 messages")
    assert any(line.startswith("finetune   cuda") and "24.0 GiB  yes" in line for line in lines)
    assert any(line.startswith("encode     cuda") and " NO " in line for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--nodes", "100"], "--edges, --feature-dim, --classes missing"),
    (["--device-memory", "lots"], "expected a memory size"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--precision", "int3"], "--precision must be one of"),
    (["--nodes", "0", "--edges", "1", "--feature-dim", "1", "--classes", "2"], "--nodes must be at least 1"),
    (["--llm-path", "/nonexistent"], "expected a folder with config.json"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    defaults = [] if "--llm-path" in args else ["--llm-path", str(LLAMA_2_7B)]
    sizes = [] if "--nodes" in args else ["--nodes", "10", "--edges", "20", "--feature-dim", "4", "--classes", "2"]
    result = CliRunner().invoke(app, ["plan", *defaults, *sizes, "--device-memory", "24GB", *args, "--store", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
