"""Functional twins of ``NCAccumulator``: in-memory arrays and re-iterable streams."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping

import torch

from nclab.metrics.accumulator import NCAccumulator
from nclab.metrics.chunking import auto_chunk_rows, group_rows
from nclab.metrics.conventions import DEFAULT_CONVENTION, Convention
from nclab.metrics.result import NCResult
from nclab.metrics.validation import as_tensor, infer_num_classes

Batch = Mapping[str, Any]


def _nbytes(batch: Batch) -> int:
    total = 0
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif hasattr(v, "nbytes"):
            total += int(v.nbytes)
    return total


def _feed(acc: NCAccumulator, batch: Batch) -> None:
    unknown = set(batch) - {"features", "labels", "clean_labels", "logits"}
    if unknown:
        raise ValueError(f"unknown batch keys {sorted(unknown)}; expected features, labels, clean_labels, logits")
    if "features" not in batch or "labels" not in batch:
        raise ValueError("each batch needs 'features' and 'labels'")
    acc.update(batch["features"], batch["labels"], clean_labels=batch.get("clean_labels"), logits=batch.get("logits"))


def evaluate_stream(
    make_batches: Callable[[], Iterable[Batch]],
    *,
    num_classes: int,
    weight: Any = None,
    bias: Any = None,
    convention: str | Convention = DEFAULT_CONVENTION,
    per_sample: bool = False,
    within: Literal["full", "projected"] = "projected",
    cache_bytes: int = 256 * 2**20,
    chunk_rows: int | None = None,
) -> NCResult:
    """All metrics from a re-iterable stream of batches, in two passes.

    ``make_batches()`` returns an iterable of dicts with ``features`` (b×d),
    ``labels`` (b) and optionally ``clean_labels`` (b) and ``logits`` (b×C).
    Pass 1 keeps the batches while they fit in ``cache_bytes``; if the stream is
    larger, the cache is dropped and ``make_batches()`` is called again for pass 2
    (so peak memory is bounded by ``cache_bytes`` plus O(C·d) plus one chunk, whatever
    n is). The stream must yield the same samples both times (the order may differ
    unless ``per_sample`` is set). ``chunk_rows``: see ``NCAccumulator``.
    """
    acc = NCAccumulator(
        num_classes, convention=convention, weight=weight, bias=bias, within=within, per_sample=per_sample,
        chunk_rows=chunk_rows,
    )
    cache: list[Batch] | None = []
    used = 0
    for batch in make_batches():
        _feed(acc, batch)
        if cache is not None:
            used += _nbytes(batch)
            if used <= cache_bytes:
                cache.append(batch)
            else:
                cache = None
    acc.start_second_pass()
    for batch in cache if cache is not None else make_batches():
        _feed(acc, batch)
    return acc.compute()


def nc_metrics(
    features: Any,
    labels: Any,
    *,
    num_classes: int | None = None,
    weight: Any = None,
    bias: Any = None,
    logits: Any = None,
    clean_labels: Any = None,
    convention: str | Convention = DEFAULT_CONVENTION,
    per_sample: bool = False,
    within: Literal["full", "projected"] = "projected",
    batch_size: int | None = None,
    chunk_rows: int | None = None,
) -> NCResult:
    """All metrics for in-memory ``features`` (n×d) and ``labels`` (n); numpy or torch, any device.

    ``num_classes`` defaults to the rows of ``weight`` or the columns of ``logits`` when
    those are given, else to ``max(labels) + 1`` — refused for sparse labels (max label
    ≥ 10·n or above 100,000), which must pass ``num_classes``. The accumulator works in
    chunks of ``chunk_rows`` rows (default from the cache size and d) so intermediate
    arrays stay small; ``batch_size`` (default one group, ``chunking.group_rows``) is how many rows are handed to it
    at a time (slices are views, so this only matters for non-contiguous input).
    """
    y = as_tensor(labels, name="labels")
    if num_classes is None:
        if weight is not None:
            num_classes = int(as_tensor(weight, name="weight").shape[0])
        elif logits is not None:
            num_classes = int(as_tensor(logits, name="logits").shape[-1])
        else:
            num_classes = infer_num_classes(y)
    n = len(y)
    if len(features) != n:
        raise ValueError(f"features have {len(features)} rows but labels have {n} entries")
    if batch_size is None:
        shape = getattr(features, "shape", None)
        dim = int(shape[1]) if shape is not None and len(shape) == 2 else 1
        batch_size = group_rows(chunk_rows or auto_chunk_rows(dim))

    def batches():
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            b = {"features": features[sl], "labels": labels[sl]}
            if clean_labels is not None:
                b["clean_labels"] = clean_labels[sl]
            if logits is not None:
                b["logits"] = logits[sl]
            yield b

    return evaluate_stream(
        batches,
        num_classes=num_classes,
        weight=weight,
        bias=bias,
        convention=convention,
        per_sample=per_sample,
        within=within,
        cache_bytes=0,
        chunk_rows=chunk_rows,
    )
