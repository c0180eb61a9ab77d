"""How large a freed block the allocator keeps for reuse: stage one's speed against its peak memory, side by side.

``bench --scale``'s measurement of one graph size (:func:`dre_pipeline.harness.scale.measure_size`: a few
mini-batch training steps, then every node encoded, then the search timed against a plain product), each in a
fresh process whose glibc keeps freed blocks up to the given size (``default``: glibc's own settings, which map
every block above 32 MB afresh and unmap it when freed; a number: megabytes, as
:func:`dre_pipeline.pipeline.runtime.keep_freed_memory` sets them). Per size, the settings take turns.

    PYTHONPATH=. python benchmarks/freed_blocks.py --sizes 100000,1000000 --thresholds default,64,128,256

The codes and losses are the same under every setting; only time and resident memory differ.
"""

import argparse
import json
import tempfile


def measure(threshold: str, num_nodes: int, store_root: str) -> dict:
    """In a fresh process: ``bench --scale``'s row for ``num_nodes`` with freed blocks kept up to ``threshold``."""
    from dre_pipeline.harness.scale import measure_size
    from dre_pipeline.pipeline.runtime import keep_freed_memory

    if threshold != "default":
        assert keep_freed_memory(int(threshold) << 20), "glibc only"
    return {"threshold": threshold, **measure_size(num_nodes, {}, store_root, 3, True)}


def run(sizes: list, thresholds: list, store_root: str) -> list:
    from trimmed_step import in_glibc_default_process

    rows = []
    for num_nodes in sizes:
        for threshold in thresholds:
            found = in_glibc_default_process(measure, threshold, num_nodes, store_root)
            print(json.dumps(found), flush=True)
            rows.append(found)
    return rows


def main() -> None:
    from trimmed_step import save_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="graph sizes, comma-separated")
    parser.add_argument("--thresholds", default="default,64,128,256", help="'default' or megabytes, comma-separated")
    parser.add_argument("--store", default=None, help="a store holding the de-quantized SmolLM2 (default: a fresh one)")
    args = parser.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="freed-blocks-")
    save_rows("freed_blocks", run([int(s) for s in args.sizes.split(",")], args.thresholds.split(","), store),
              f"PYTHONPATH=. python benchmarks/freed_blocks.py --sizes {args.sizes} --thresholds {args.thresholds}")


if __name__ == "__main__":
    main()
