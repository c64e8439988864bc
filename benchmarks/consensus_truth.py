"""The consensus against the offline world's truth: plain majority vs lumped support.

Recomputes, from a built store's native label layers, the consensus with the mapping rules'
``also`` (what ``las build`` writes) and without it (a plain per-pixel majority, the rule
until 2026-12-08), and scores both, and each product's own LAS layer, against the world's
truth, class by class (recall, precision, IoU over the truth's classes; 0/255 count as no
prediction). Both rules come from the same native pixels, so the comparison is of the rule
alone. Writes
``benchmarks/results-consensus.json`` and prints a table.

Prerequisite: a dataset built from a world (``make demo`` -> out/demo/las, out/demo/world).

    .venv/bin/python benchmarks/consensus_truth.py
    .venv/bin/python benchmarks/consensus_truth.py --dataset /tmp/demo/las --world /tmp/demo/world
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from las_builder.catalog import LAS_IGNORE, load_mapping, load_taxonomy
from las_builder.consensus import consensus
from las_builder.model.truth import truth_items, truth_on_grid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RULES = ("majority", "lumped")


def confusions(dataset: Path, world: Path) -> tuple[dict[str, np.ndarray], int]:
    """``{rule or product: (K + 1, 256) counts of truth code x label}`` and the samples used."""
    root = zarr.open_group(str(dataset / "las.zarr"), mode="r")
    index = pd.read_parquet(dataset / "index.parquet")
    built = index[index["status"] == "ok"] if "status" in index else index
    products = sorted(root["labels"].group_keys())  # type: ignore[union-attr]
    mappings = {p: load_mapping(p) for p in products}
    items = truth_items(world)
    k = len(load_taxonomy())
    counts = {name: np.zeros((k + 1, 256), np.int64) for name in (*RULES, *products)}
    for row in built.itertuples():
        i = int(row.zarr_index)  # type: ignore[arg-type]
        layers, also = [], []
        for p, mapping in mappings.items():
            native = np.asarray(root[f"labels/{p}/native"][i])  # type: ignore[index]
            layers.append(mapping.map(native))
            also.append(mapping.also_masks(native))
        stack = np.stack(layers)
        lumped, _ = consensus(stack, also=also)
        stored = np.asarray(root["consensus"][i])  # type: ignore[index]
        if not np.array_equal(lumped, stored):
            sys.exit(f"sample {row.sample_id}: the store's consensus is not this rule's: rebuild")
        majority, _ = consensus(stack)
        truth = truth_on_grid(items, int(row.epsg), list(row.transform), stored.shape)  # type: ignore[arg-type]
        named = {"majority": majority, "lumped": lumped, **dict(zip(products, layers, strict=True))}
        for name, labels in named.items():
            np.add.at(counts[name], (truth.ravel(), labels.ravel()), 1)
    return counts, len(built)


def scores(counts: np.ndarray) -> dict[str, Any]:
    """Per truth class: pixels, recall, precision, IoU, and where its pixels went."""
    tax = load_taxonomy()
    k = len(tax)
    out: dict[str, Any] = {}
    for code in range(1, k + 1):
        n = int(counts[code].sum())
        if n == 0:
            continue
        tp = int(counts[code, code])
        predicted = int(counts[1:, code].sum())
        top = np.argsort(counts[code])[::-1][:3]
        out[tax.by_code(code).key] = {
            "pixels": n,
            "recall": tp / n,
            "precision": tp / predicted if predicted else None,
            "iou": tp / (n + predicted - tp),
            "went_to": {_name(int(t)): int(counts[code, t]) / n for t in top if counts[code, t]},
        }
    ious = [c["iou"] for c in out.values()]
    return {
        "classes": out,
        "miou": float(np.mean(ious)),
        "ignore_share": float(counts[1:, LAS_IGNORE].sum() / counts[1:].sum()),
    }


def _name(value: int) -> str:
    tax = load_taxonomy()
    return {0: "nodata", LAS_IGNORE: "ignore"}.get(value) or tax.by_code(value).key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "out" / "demo" / "las")
    parser.add_argument("--world", type=Path, default=ROOT / "out" / "demo" / "world")
    parser.add_argument("--out", type=Path, default=HERE / "results-consensus.json")
    args = parser.parse_args(argv)
    if not (args.dataset / "las.zarr").is_dir():
        sys.exit(f"{args.dataset}/las.zarr not found: run `make demo` first (or pass --dataset)")
    counts, samples = confusions(args.dataset, args.world)
    results: dict[str, Any] = {"dataset": str(args.dataset), "samples": samples}
    results.update({rule: scores(counts[rule]) for rule in RULES})
    results["products"] = {p: scores(c) for p, c in counts.items() if p not in RULES}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"consensus vs truth, {samples} samples (IoU; recall / precision in %)")
    print(f"{'class':24s} {'pixels':>8s}  {'majority':>20s}  {'lumped (las build)':>20s}")
    for key in results["lumped"]["classes"]:
        cells = []
        for rule in RULES:
            c = results[rule]["classes"][key]
            precision = "-" if c["precision"] is None else f"{100 * c['precision']:.0f}"
            cells.append(f"{c['iou']:.3f} ({100 * c['recall']:.0f} / {precision})")
        pixels = results["lumped"]["classes"][key]["pixels"]
        print(f"{key:24s} {pixels:8d}  {cells[0]:>20s}  {cells[1]:>20s}")
    print(
        f"{'mean IoU':24s} {'':8s}  {results['majority']['miou']:>20.3f}  "
        f"{results['lumped']['miou']:>20.3f}"
    )
    print(
        f"{'ignore share':24s} {'':8s}  {results['majority']['ignore_share']:>20.3f}  "
        f"{results['lumped']['ignore_share']:>20.3f}"
    )
    print(
        "each product's own LAS layer: "
        + ", ".join(
            f"{p} {r['miou']:.3f}"
            for p, r in sorted(results["products"].items(), key=lambda pr: -pr[1]["miou"])
        )
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
