"""``dre-pipeline bench --speed``: stage one's code search and encode, before and after, per CPU class.

A speed-up measured on one CPU must not become a slow-down on another, so every number
here is measured once per CPU class, each in a fresh process (PyTorch and oneDNN read their
instruction-set limits when they load):

- ``native``: this machine as it is;
- ``avx2``: PyTorch's kernels held to AVX2 (``ATEN_CPU_CAPABILITY=avx2``) and oneDNN's too
  (``ONEDNN_MAX_CPU_ISA=AVX2``), which is what an AVX2-only CPU runs (bf16 products emulated).

Search: a plain fp32 matrix multiply ``[N, d] @ [d, M]`` (the machine's limit), the search
as it was (one product per level, whole graph at once, fp32: ``benchmarks/old_search.py``, loaded from
the checkout, since the package no longer holds it) and as it is (level 1 multiplies,
later levels subtract Gram rows, in cache-sized chunks; fp32 and, where native, bf16). Search
speed is given as the FLOP/s of the direct search it replaces: ``2 N d M K / seconds``.

Encode: the stage on the benchmark dataset, as it was (direct search, evaluation every epoch)
and as it is (defaults), each in a temporary store so neither is a cache hit.
"""

import importlib.util
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from .runner import in_fresh_process

OLD_SEARCH = Path(__file__).resolve().parents[2] / "benchmarks" / "old_search.py"
CPU_CLASSES = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def timed(fn, repeat_seconds: float) -> float:
    """Mean seconds of ``fn()`` over at least 3 calls and ``repeat_seconds``, after one warm-up."""
    fn()
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < repeat_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - started) / calls


def old_search():
    """``benchmarks/old_search.py``, the search as it was: a checkout's, not the package's, which no longer has it."""
    if not OLD_SEARCH.is_file():
        from ..errors import InputError

        raise InputError(f"bench --speed measures against the search as it was, {OLD_SEARCH}: run it from a checkout")
    spec = importlib.util.spec_from_file_location("old_search", OLD_SEARCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_class(cpu_class: str, settings: dict, store_root: str, repeat_seconds: float, quiet: bool) -> dict:
    """In a fresh process whose environment holds the class's limits: search and encode timings."""
    import torch

    from ..pipeline.artifacts import Store
    from ..pipeline import commands
    from ..pipeline.config import EncodeConfig
    from ..pipeline.resolve import resolve
    from ..model.quantizer import ResidualVQ
    from ..hardware import native_bf16
    from ..pipeline.runtime import log, setup_logging
    from ..pipeline.stages import codebook as codebook_stage

    setup_logging(quiet)
    search_as_before = old_search().search_as_before
    cpu = torch.device("cpu")
    result = {"cpu_class": cpu_class, "cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
              "native_bf16": native_bf16(cpu), "threads": torch.get_num_threads()}
    cfg, store = EncodeConfig(**settings), Store(Path(store_root))
    plan = resolve(cfg, store)
    codebook = codebook_stage.load(codebook_stage.run(cfg, plan.llm, store))
    num_nodes = plan.data.num_nodes
    (m, d), k = codebook.vectors.shape, cfg.codes_per_view
    h = torch.randn(num_nodes, d, generator=torch.Generator().manual_seed(0))
    unit_t, _ = ResidualVQ(codebook.vectors, k).search_tables(cpu, torch.float32)  # level 1's right-hand side
    matmul = timed(lambda: h @ unit_t, repeat_seconds)
    result["matmul"] = {"shape": f"[{num_nodes}, {d}] @ [{d}, {m}]", "seconds": matmul,
                        "gflops": 2 * num_nodes * d * m / matmul / 1e9}

    def search(name: str, dtype) -> dict:
        log.info("bench --speed %s: search %s", cpu_class, name)
        vq = ResidualVQ(codebook.vectors, k)
        seconds = timed(lambda: vq.search(h, dtype), repeat_seconds)
        gflops = 2 * num_nodes * d * m * k / seconds / 1e9  # the direct search's FLOPs: one product per level
        return {"name": name, "seconds": seconds, "gflops_equivalent": gflops,
                "of_matmul": gflops / result["matmul"]["gflops"]}

    with search_as_before():
        result["search"] = [search("direct, one product per level, fp32 (before)", torch.float32)]
    for dtype in [torch.float32] + ([torch.bfloat16] if result["native_bf16"] else []):
        result["search"].append(search(f"incremental, chunked, {str(dtype).split('.')[-1]}", dtype))

    result["encode"] = []
    for name, before in (("before: direct fp32 search, evaluation every epoch", True), ("after: defaults", False)):
        with tempfile.TemporaryDirectory(dir=store_root) as tmp, search_as_before() if before else nullcontext():
            log.info("bench --speed %s: encode %s", cpu_class, name)
            scratch = Store(Path(tmp))
            for shared in ("llm", "codebook", "data"):  # reuse what is not being measured
                if (store.root / shared).exists():
                    (scratch.root / shared).symlink_to((store.root / shared).resolve())
            artifact = commands.encode(EncodeConfig(**settings, **({"eval_epochs": 1} if before else {})), scratch,
                                       quiet=quiet)
            metrics = json.loads((artifact.path / "metrics.json").read_text())
        result["encode"].append({"name": name, "seconds": metrics["train_seconds"], "epochs": metrics["epochs_run"],
                                 "label_head_accuracy": metrics["label_head_accuracy"]})
    return result


def run(settings: dict, store_root: Path, repeat_seconds: float = 3.0, quiet: bool = False) -> list:
    """Measure every CPU class, one fresh process each, one after the other (they share the cores)."""
    from ..pipeline.runtime import log

    old_search()  # a checkout without it is refused before any class's process starts
    results = []
    for cpu_class in CPU_CLASSES:
        log.info("bench --speed: CPU class %s", cpu_class)
        results.append(in_fresh_process(measure_class, cpu_class, settings, str(store_root), repeat_seconds, quiet,
                                        env=CPU_CLASSES[cpu_class]))
    return results


def markdown(payload: dict) -> list:
    """The speed section of RESULTS.md."""
    lines = ["## Stage one's speed per CPU class", "",
             f"- command: `{payload['command']}`", f"- date: {payload['date']}",
             f"- dataset: {payload['settings']['dataset']} (the search runs on random views, one per node)",
             "", "Search: equivalent GFLOP/s = FLOPs of the direct search (one product per level) / seconds; "
             "'of matmul' compares it with a plain fp32 product of one level's shape on the same CPU class, "
             "in the same process.", ""]
    for result in payload["results"]:
        lines += [f"### {result['cpu_class']}: {result['cpu']}, capability `{result['capability']}`, "
                  f"native bf16: {'yes' if result['native_bf16'] else 'no'}, {result['threads']} threads", "",
                  "| search | seconds per view | equivalent GFLOP/s | of matmul |", "|---|---:|---:|---:|",
                  f"| plain fp32 matmul {result['matmul']['shape']} (one level) | {result['matmul']['seconds']:.3f} | "
                  f"{result['matmul']['gflops']:.1f} | 1.00 |"]
        lines += [f"| {s['name']} | {s['seconds']:.3f} | {s['gflops_equivalent']:.1f} | {s['of_matmul']:.2f} |"
                  for s in result["search"]]
        lines += ["", "| encode | seconds | epochs | label head val % | label head test % |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {e['name']} | {e['seconds']:.0f} | {e['epochs']} | {100 * e['label_head_accuracy']['val']:.2f} | "
                  f"{100 * e['label_head_accuracy']['test']:.2f} |" for e in result["encode"]]
        before, after = result["encode"][0]["seconds"], result["encode"][-1]["seconds"]
        lines += ["", f"Encode speed-up: **{before / after:.2f}x**.", ""]
    return lines
