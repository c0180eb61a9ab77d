"""Measured peak memory of ``encode`` and ``finetune`` on the CPU, for ``dre-pipeline plan`` to be checked against.

Each run is a fresh Python process, its allocator set up as the CLI's
(:func:`dre_pipeline.pipeline.runtime.keep_freed_memory`): it imports everything the stage imports, notes its
resident size (the *baseline*: interpreter, torch, transformers, PEFT), runs the stage's CLI command with
``--force`` (the upstream stages already in the store), and reports ``VmHWM`` (the process's peak resident
size) less the baseline. That difference is what the plan estimates: the memory the stage's own
tensors and objects take above a loaded interpreter.

    python benchmarks/memory_peaks.py STORE [--out benchmarks/results/memory_peaks.json] [--only NAME]
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

# name -> the CLI command (after ``dre-pipeline``); kept short: the peak is reached in the first epoch
RUNS = {
    "codebook": ["codebook"],
    "encode-cora": ["encode", "--dataset", "cora", "--epochs", "6"],
    "encode-synthetic": ["encode", "--dataset", "synthetic", "--epochs", "6"],
    "finetune-synthetic": ["finetune", "--dataset", "synthetic", "--epochs", "6", "--ft-epochs", "1"],
    "finetune-synthetic-all-layers": ["finetune", "--dataset", "synthetic", "--epochs", "6", "--ft-epochs", "1",
                                      "--lora-layers", "0"],
    "finetune-cora": ["finetune", "--dataset", "cora", "--epochs", "6", "--ft-epochs", "1", "--distill-weight", "0"],
}

CHILD = """
import json, resource, sys
import dre_pipeline.cli, dre_pipeline.pipeline.stages.finetune.finetune, dre_pipeline.pipeline.stages.encode, dre_pipeline.pipeline.stages.finetune.predict
import peft, transformers, wordfreq, sklearn.feature_extraction.text
import zarr, pyarrow.dataset, torch.onnx, torch.profiler  # imported on the way: the store's arrays, the tables
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformers.models.llama.modeling_llama
dre_pipeline.pipeline.runtime.keep_freed_memory()  # as dre_pipeline.cli.main sets every CLI process up
def resident():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
baseline = resident()
try:
    dre_pipeline.cli.app(sys.argv[1:], standalone_mode=False)
finally:
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child of a large process (pytest amid
    # the full suite) would report its parent's peak; VmHWM belongs to this process's own address space.
    with open('/proc/self/status') as f:
        peak = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) * 1024
    print('MEMORY ' + json.dumps({'baseline_mb': baseline / 2**20, 'peak_mb': peak / 2**20}), flush=True)
"""


def measure(args: list, store: str) -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, *args, "--store", store, "--force", "--quiet"],
                          capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("MEMORY ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    memory = json.loads(line[len("MEMORY "):])
    import torch

    from dre_pipeline.model.quantizer import search_dtype
    from dre_pipeline.pipeline.placement import resolved_precision

    precision = resolved_precision(torch.device("cpu"))  # what auto ran in here
    search = "bf16" if search_dtype(torch.device("cpu")) == torch.bfloat16 else "fp32"  # stage one's code search
    return {"command": "dre-pipeline " + " ".join(args), "precision": precision, "search": search,
            "seconds": round(time.time() - started, 1),
            "baseline_mb": round(memory["baseline_mb"], 1), "peak_mb": round(memory["peak_mb"], 1),
            "stage_peak_mb": round(memory["peak_mb"] - memory["baseline_mb"], 1)}


def machine() -> str:
    import os

    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, CPU only; torch {torch.__version__}, "
            f"capability {torch.backends.cpu.get_cpu_capability()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--out", default="benchmarks/results/memory_peaks.json")
    parser.add_argument("--only", nargs="*", default=list(RUNS))
    options = parser.parse_args()
    out = Path(options.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    results["machine"] = machine()
    for name in options.only:
        results["runs"][name] = measure(RUNS[name], options.store)
        results["runs"][name]["date"] = time.strftime("%Y-%m-%d")
        print(name, results["runs"][name], flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
