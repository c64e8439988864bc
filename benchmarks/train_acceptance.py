"""LandSegmenter acceptance on the offline world (not a timed test).

Trains the tiny config on the demo dataset within a CPU budget (default 20 minutes, training
plus evaluation), then scores against the world's 2 m truth (mapped to LAS by
catalog/world/truth_to_las.yaml):

* the model, with and without the class-wise confidence-guided fusion (the ablation);
* every weak-label product of the dataset (the labels themselves), and the best of them.

The headline comparison is on the held-out split (samples never trained on); the whole dataset
is reported too. Results go to benchmarks/results-train.json and the table into
docs/landsegmenter.md (between the ``acceptance`` markers).

Prerequisite: the demo dataset and world (``make demo`` -> out/demo/las, out/demo/world).

    .venv/bin/python benchmarks/train_acceptance.py
    .venv/bin/python benchmarks/train_acceptance.py --budget-min 10 --set optim.steps=400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- acceptance:begin -->", "<!-- acceptance:end -->"
EVAL_RESERVE_MIN = 2.5  # minutes kept for evaluation inside the budget


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "train-tiny.yaml"))
    p.add_argument("--dataset", default=str(ROOT / "out" / "demo" / "las"))
    p.add_argument("--world", default=str(ROOT / "out" / "demo" / "world"))
    p.add_argument("--out", default=str(ROOT / "out" / "train" / "acceptance"))
    p.add_argument("--budget-min", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results-train.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "landsegmenter.md"))
    p.add_argument("--no-docs", action="store_true", help="do not touch the docs table")
    return p.parse_args()


def _row(name: str, rep: dict, classes: list[str]) -> str:
    cells = [
        f"{rep['per_class_iou'][c]:.2f}" if c in rep["per_class_iou"] else "–" for c in classes
    ]
    return (
        f"| {name} | **{rep['miou']:.3f}** | {rep['pixel_accuracy']:.3f} | "
        + " | ".join(cells)
        + " |"
    )


def _table(results: dict) -> str:
    val, every = results["eval"]["val"], results["eval"]["all"]
    classes = [
        c
        for c in val["classes"]
        if any(
            c in r["per_class_iou"]
            for r in [val["truth"]["model"], *val["truth"]["labels"].values()]
        )
    ]
    short = [
        c.replace("_", " ")
        .replace("bare sparse vegetation", "bare")
        .replace("herbaceous wetland", "wetland")
        for c in classes
    ]
    head = "| vs truth (held-out split) | mIoU | pixel acc. | " + " | ".join(short) + " |"
    sep = "|---|---|---|" + "---|" * len(classes)
    t = val["truth"]
    lines = [
        head,
        sep,
        _row("LandSegmenter (tiny)", t["model"], classes),
        _row("LandSegmenter + fusion", t["model_fused"], classes),
    ]
    for p, rep in sorted(t["labels"].items(), key=lambda kv: -kv[1]["miou"]):
        lines.append(_row(f"weak label: {p}", rep, classes))
    ta = every["truth"]
    tr = results["train"]
    summary = [
        "",
        "| ablation (mIoU vs truth) | held-out split | all samples |",
        "|---|---|---|",
        f"| without fusion | {t['model']['miou']:.3f} | {ta['model']['miou']:.3f} |",
        f"| with fusion | {t['model_fused']['miou']:.3f} | {ta['model_fused']['miou']:.3f} |",
        f"| best weak label ({t['best_label_product']} / {ta['best_label_product']}) | "
        f"{t['best_label_miou']:.3f} | {ta['best_label_miou']:.3f} |",
        "",
        f"Run: {results['date']}, {tr['steps']} steps in {tr['minutes']:.1f} min of training "
        f"(+{results['eval_minutes'] * 60:.0f} s evaluation) on {results['machine']}; "
        f"{val['samples']} held-out / {every['samples']} samples; inputs "
        f"{'+'.join(val['inputs'])}. Target (model ≥ best weak label on the held-out split): "
        f"**{'met' if results['target_met'] else 'not met'}**.",
    ]
    return "\n".join(lines + summary)


def _update_docs(path: Path, table: str) -> None:
    text = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    args = _args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset, world = Path(args.dataset), Path(args.world)
    if not (dataset / "index.parquet").is_file() or not (world / "world.json").is_file():
        print(f"need {dataset} and {world}: run `make demo` first", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from las_builder.model.config import load_train_config
    from las_builder.model.evaluate import evaluate
    from las_builder.model.train import train

    train_budget = max(1.0, args.budget_min - EVAL_RESERVE_MIN)
    sets = [f"dataset={dataset}", f"out_dir={args.out}", f"max_minutes={train_budget}", *args.sets]
    cfg = load_train_config(args.config, sets)
    started = time.monotonic()
    cpu0 = time.process_time()
    load = os.getloadavg()
    summary = train(cfg, progress=sys.stderr.isatty())
    train_min = (time.monotonic() - started) / 60
    t_eval = time.monotonic()
    # every weak-label product of the store, not only the ones trained on: the baseline is
    # the best single product, whichever it is
    from las_builder.model.data import open_store

    root = open_store(dataset)
    trained = [p.split(":")[0] for p in cfg.products]
    products = list(dict.fromkeys([*trained, *sorted(root["labels"].group_keys())]))
    evals = {
        split: evaluate(
            args.out,
            dataset,
            products=products,
            truth=world,
            split=split,
            out=Path(args.out) / f"metrics-{split}.json",
        )  # fmt: skip
        for split in ("val", "all")
    }
    eval_min = (time.monotonic() - t_eval) / 60
    val = evals["val"]["truth"]
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads",
        "load_average_at_start": [round(v, 2) for v in load],
        "config": cfg.model_dump(),
        "budget_min": args.budget_min,
        "train": {
            "steps": summary["step"],
            "minutes": train_min,
            "stopped_early": summary.get("stopped_early"),
            "last_loss": summary["last_loss"],
        },
        "eval_minutes": eval_min,
        "total_minutes": train_min + eval_min,
        "cpu_minutes": (time.process_time() - cpu0) / 60,
        "eval": evals,
        "headline": {
            "split": "val",
            "model_miou": val["model"]["miou"],
            "model_fused_miou": val["model_fused"]["miou"],
            "best_label_product": val["best_label_product"],
            "best_label_miou": val["best_label_miou"],
            "all_samples": {
                "model_miou": evals["all"]["truth"]["model"]["miou"],
                "model_fused_miou": evals["all"]["truth"]["model_fused"]["miou"],
                "best_label_miou": evals["all"]["truth"]["best_label_miou"],
            },
        },
        "target_met": max(val["model"]["miou"], val["model_fused"]["miou"])
        >= val["best_label_miou"],
        "within_budget": train_min + eval_min <= args.budget_min,
    }
    Path(args.results).write_text(json.dumps(results, indent=1))
    table = _table(results)
    if not args.no_docs:
        _update_docs(Path(args.docs), table)
    print(table)
    print(f"\nresults: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
