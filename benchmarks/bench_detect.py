"""Mislabel detection on injected noise: nclab's scores vs cleanlab, same data, same noise, same run.

Settings: {digits (10 classes, 1,347 training images), Fashion-MNIST (classes 0-3,
500 training images each; skipped when the data are absent)} × {symmetric,
pairflip} × rates {0.1, 0.2, 0.4}, exact counts, seed 0. Model: the trainer's MLP
(2 blocks, width 256, 64-d features), SGD lr 0.05, momentum 0.9, wd 5e-4, CE,
batch 64, 20 epochs, CPU.

- nclab: ONE training run (eval-mode logit margins recorded after each epoch), then
  features (centroid ratio), knn, dynamics (AUM), fit_epoch, combined; flagged sets
  of ``nclab.detect.find_label_issues``: AUM < 0 (dynamics), nearest other centroid
  (features), and its confident learning on cleanlab's out-of-fold probabilities.
- cleanlab: ``get_label_quality_scores`` (self-confidence) for the ranking and
  ``find_label_issues`` for the flagged set, on 5-fold out-of-fold probabilities
  from (a) the same MLP trained 5 times, (b) a logistic regression on the pixels.

Columns: AUROC, precision at the true noise count (P@k), average precision, the
training/fitting time the method needs (fit_s; shared by all nclab scores) and
the scoring time. All at 1 torch thread. Usage: python benchmarks/bench_detect.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nclab.detect.evaluate import Setting, cleanlab_available, evaluate_setting
from nclab.store.files import to_json


def _fashion_available() -> bool:
    from nclab.data import load_dataset

    try:
        load_dataset("fashion-mnist", classes=2, per_class=2)
    except Exception:  # not found / unreadable: skip the dataset, say so
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one rate (0.2), 8 epochs, 3 folds")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)  # every method at 1 thread (torch and BLAS), so fit times compare
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    rates = (0.2,) if args.quick else (0.1, 0.2, 0.4)
    epochs, folds = (8, 3) if args.quick else (20, 5)
    datasets = [("digits", None, None)]
    if _fashion_available():
        datasets.append(("fashion-mnist", 4, 500))
    else:
        print("fashion-mnist: not found (apt install dataset-fashion-mnist) — skipped")
    if not cleanlab_available():
        print("cleanlab: not installed (pip install 'nclab[cleanlab]') — nclab rows only")
    t_all = time.perf_counter()
    results = []
    head = f"{'method':34s} {'AUROC':>6s} {'P@k':>6s} {'AP':>6s} {'fit_s':>6s} {'score_s':>7s}  flagged (prec/rec)"
    for name, classes, per_class in datasets:
        for kind in ("symmetric", "pairflip"):
            for rate in rates:
                s = Setting(dataset=name, classes=classes, per_class=per_class, kind=kind, rate=rate, seed=0,
                            epochs=epochs)
                out = evaluate_setting(s, folds=folds)
                results.append(out)
                print(f"\n== {name} (C={classes or 10}), {kind} {rate}: n={out['n']}, realized noise "
                      f"{out['realized_noise_rate']:.3f}, clean test acc of the nclab model {out['clean_test_acc']:.3f}")
                print(head)
                for r in out["rows"]:
                    extra = ""
                    if "flagged" in r:
                        fp = "-" if r["flagged_precision"] is None else f"{r['flagged_precision']:.2f}"
                        fr = "-" if r["flagged_recall"] is None else f"{r['flagged_recall']:.2f}"
                        extra = f"  {r['flagged']} ({fp}/{fr})"
                    print(f"{r['method']:34s} {r['auroc']:6.3f} {r['precision_at_k']:6.3f} {r['average_precision']:6.3f} "
                          f"{r['fit_s']:6.1f} {r['score_s']:7.2f}{extra}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    # compact summary: AUROC / P@k of the best nclab score and each cleanlab variant per setting
    print("\nsummary (AUROC / P@k)")
    for out in results:
        s = out["setting"]
        cells = {r["method"]: f"{r['auroc']:.3f}/{r['precision_at_k']:.3f}" for r in out["rows"]}
        print(f"{s.dataset:14s} {s.kind:9s} {s.rate:.1f}  " + "  ".join(f"{m}={v}" for m, v in cells.items()))
    if args.json:
        args.json.write_text(to_json([{**o, "setting": o["setting"].__dict__} for o in results], indent=1))


if __name__ == "__main__":
    main()
