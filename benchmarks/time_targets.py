"""Wall time of `make all` and `make test` per CPU class, from a fresh clone with its venv installed.

    .venv/bin/python benchmarks/time_targets.py            # every CPU class of dre_pipeline.harness.speed
    .venv/bin/python benchmarks/time_targets.py avx2       # one class

Clones HEAD into a temporary folder, runs `make install` there (not timed), then per CPU
class empties the clone's artifact store and times `make all`, then `make test`. Writes
benchmarks/results/targets.json and rebuilds benchmarks/RESULTS.md.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dre_pipeline.harness.bench import write_results
from dre_pipeline.harness.speed import CPU_CLASSES, cpu_name

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"make all": 1200, "make test": 600}  # seconds, the targets on a 2-core AVX2-only CPU
PROBE = ("import json, torch; from dre_pipeline.hardware import native_bf16; print(json.dumps("
         "{'capability': torch.backends.cpu.get_cpu_capability(), 'native_bf16': native_bf16(torch.device('cpu'))}))")


def main(classes: list) -> None:
    data = REPO.parent / "shared" / "datasets"
    runs = []
    with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
        clone = Path(tmp) / "dre-pipeline"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["make", "install"], cwd=clone, check=True, stdout=subprocess.DEVNULL)
        for cpu_class in classes:
            env = {**os.environ, **CPU_CLASSES[cpu_class], "DRE_DATA_DIR": str(data / "planetoid"),
                   "DRE_TEST_DATA": str(data), "PYTHONUNBUFFERED": "1"}
            probe = json.loads(subprocess.run([str(clone / ".venv/bin/python"), "-c", PROBE], env=env, check=True,
                                              capture_output=True, text=True).stdout)
            for target, limit in LIMITS.items():
                subprocess.run(f"rm -rf {clone}/artifacts/*/", shell=True, check=True)
                print(f"{cpu_class}: {target} ...", file=sys.stderr, flush=True)
                started = time.monotonic()
                with open(REPO / "benchmarks" / "results" / f"{cpu_class}-{target.replace(' ', '-')}.log", "w") as log:
                    code = subprocess.run(target.split(), cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                seconds = time.monotonic() - started
                print(f"{cpu_class}: {target} {seconds:.0f}s, exit code {code}", file=sys.stderr, flush=True)
                runs.append({"cpu_class": cpu_class, "cpu": cpu_name(), **probe, "target": target,
                             "seconds": seconds, "limit_seconds": limit, "exit_code": code})
    note = ("avx2 = PyTorch and oneDNN held to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2) "
            "on the CPU named, which is how an AVX2-only CPU runs; make all starts from an empty artifact store")
    write_results(REPO / "benchmarks", "targets", {
        "command": "python benchmarks/time_targets.py " + " ".join(classes), "date": time.strftime("%Y-%m-%d"),
        "note": note, "runs": runs})


if __name__ == "__main__":
    main(sys.argv[1:] or list(CPU_CLASSES))
