"""The codebook, encode and finetune artifacts of two stores (one of each, as `make all` leaves them), file by
file: Parquet tables by content, torch and safetensors files tensor by tensor, JSON by value less times and
memory peaks (the keys that differ are named), anything else byte by byte.

    python benchmarks/compare_stores.py STORE_A STORE_B

Used for issue 27's check that the restructuring changed no result: `make all` on Cora seed 0 at the commit
before it and after it, each in a store of its own.
"""
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

a, b = Path(sys.argv[1]), Path(sys.argv[2])
TIMES = {"seconds", "wall_seconds", "created", "peak_memory_mb", "inference_nodes_per_second", "started", "finished"}

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMES and "second" not in k and "peak" not in k}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

def tensors_equal(x, y):
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(tensors_equal(x[k], y[k]) for k in x)
    if torch.is_tensor(x):
        return torch.equal(x, y)
    return x == y

for stage in ("codebook", "encode", "finetune"):
    da, db = (next(p for p in (s / stage).iterdir() if not p.name.startswith(".")) for s in (a, b))
    for fa in sorted(p for p in da.rglob("*") if p.is_file()):
        rel = fa.relative_to(da); fb = db / rel
        if not fb.exists():
            print(f"{stage}/{rel}: only in {a}"); continue
        if fa.suffix == ".parquet":
            same = pq.read_table(fa).equals(pq.read_table(fb))
        elif fa.suffix == ".pt":
            same = tensors_equal(torch.load(fa, weights_only=False), torch.load(fb, weights_only=False))
        elif fa.suffix == ".safetensors":
            same = tensors_equal(load_file(fa), load_file(fb))
        elif fa.suffix == ".json":
            ja, jb = strip(json.loads(fa.read_text())), strip(json.loads(fb.read_text()))
            same = ja == jb
            if not same and isinstance(ja, dict):
                diff = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k))
                print(f"  {stage}/{rel} differs in: {diff}")
        else:
            same = fa.read_bytes() == fb.read_bytes()
        print(f"{stage}/{rel}: {'same' if same else 'DIFFERENT'}")
    for fb in sorted(p for p in db.rglob("*") if p.is_file()):
        if not (da / fb.relative_to(db)).exists():
            print(f"{stage}/{fb.relative_to(db)}: only in {b}")
