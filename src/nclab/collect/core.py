"""Stream any ``torch.nn.Module`` over data and measure neural collapse.

``collect`` captures the *input* of the final linear layer (the penultimate
features) and the logits batch by batch and feeds them to
:func:`nclab.metrics.evaluate_stream`; ``collect_layers`` measures NC1 and the
frame errors at several named layers from the same forward passes.

Data may be

* a ``DataLoader`` (or any re-iterable of batches) yielding ``(x, y)`` or
  ``(x, y, y_clean)``;
* a ``torch.utils.data.Dataset`` (wrapped in a sequential ``DataLoader``);
* tensors/arrays ``(x, y)`` or ``(x, y, y_clean)`` (batched here);
* a loader of dict batches (Hugging Face style): ``input_key`` names the model
  input, ``label_key`` (default ``"labels"``) the labels and ``clean_label_key``
  (default ``"clean_labels"``, optional) the true labels.

The metrics need two passes (class means first, then distances to them). The
first pass keeps the small per-batch records (features and logits, not the
inputs) while they fit in ``cache_bytes``; beyond that the second pass iterates
the data again and runs the model again. A shuffled ``DataLoader`` is fine:
every metric is a sum over samples, so the order of the second pass does not
matter — except per-sample outputs (``per_sample=True``) and a separate
``clean_labels`` array, which must line up with the data and therefore need a
loader without a random sampler.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nclab.metrics import DEFAULT_CONVENTION, NCAccumulator, NCResult, evaluate_stream
from nclab.models.heads import find_final_linear, logits_of

__all__ = ["collect", "collect_layers", "default_layers", "features_of", "find_final_linear", "layer_summary", "LAYER_KEYS"]

LAYER_KEYS: tuple[str, ...] = (
    "feature_dim",
    "nc1",
    "nc1_trace_ratio",
    "cdnv",
    "nc2_etf_error_means",
    "nc2_orthogonal_error_means",
    "nc2_equinorm_means",
)
"""The per-layer metric keys ``layer_summary`` reports (a subset of ``METRIC_KEYS``)."""


# ----------------------------------------------------------------------------- data
@dataclass
class _Source:
    """A re-iterable source of ``(x, y, y_clean | None)`` batches and what is known about its order."""

    make: Callable[[], Iterator[tuple[Any, Any, Any]]]
    ordered: bool  # True when every iteration visits the samples in the same order


def _is_tensorlike(a: Any) -> bool:
    return isinstance(a, (Tensor, np.ndarray))


@dataclass(frozen=True)
class _Keys:
    input: str | None = None
    label: str = "labels"
    clean: str = "clean_labels"


def _from_dict(batch: dict, keys: _Keys, k: int) -> tuple[Any, Any, Any]:
    names = ", ".join(map(repr, batch))
    if keys.input is None:
        raise TypeError(f"batch {k} is a dict (keys {names}); name the model input with input_key=... "
                        f"(and the labels with label_key=..., default {keys.label!r})")
    for role, key in (("input_key", keys.input), ("label_key", keys.label)):
        if key not in batch:
            raise KeyError(f"batch {k} has no {role} {key!r}; its keys are {names}")
    return batch[keys.input], batch[keys.label], batch.get(keys.clean)


def _as_source(data: Any, *, batch_size: int, keys: _Keys = _Keys()) -> _Source:
    from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(_is_tensorlike(a) for a in data):
        arrays = [torch.as_tensor(a) for a in data]
        n = arrays[0].shape[0]
        for name, a in zip(("y", "y_clean"), arrays[1:]):
            if a.shape[:1] != (n,):
                raise ValueError(f"{name} has shape {tuple(a.shape)} but x has {n} rows; they must line up")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")

        def make() -> Iterator:
            for i in range(0, n, batch_size):
                parts = [a[i : i + batch_size] for a in arrays]
                yield parts[0], parts[1], parts[2] if len(parts) == 3 else None

        return _Source(make, ordered=True)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, (Tensor, np.ndarray)):
        raise TypeError("data is a single array; pass (x, y) or (x, y, y_clean), or a DataLoader")
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be a DataLoader, a Dataset, or tensors (x, y[, y_clean]); got {type(data).__name__}") from None
    if it is data:
        raise TypeError(
            "data is a one-shot iterator (e.g. a generator); the metrics need two passes — "
            "pass a DataLoader, a list of batches, or tensors (x, y[, y_clean])"
        )
    ordered = not (isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler))

    def make_loader() -> Iterator:
        for k, batch in enumerate(data):
            if isinstance(batch, dict):
                yield _from_dict(batch, keys, k)
                continue
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                got = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
                raise TypeError(f"batch {k}: expected (x, y) or (x, y, y_clean); got {got}")
            yield batch[0], batch[1], batch[2] if len(batch) == 3 else None

    return _Source(make_loader, ordered=ordered)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _flat(t: Any, name: str) -> Tensor:
    if isinstance(t, (tuple, list)) and t and isinstance(t[0], Tensor):
        t = t[0]
    if not isinstance(t, Tensor):
        raise TypeError(f"layer {name!r} produced {type(t).__name__}, not a tensor")
    return t.detach().reshape(t.shape[0], -1)


# ----------------------------------------------------------------------------- hooks
class _Taps:
    """Forward hooks that record, per forward call, the classifier's input and named layers' outputs.

    The classifier is resolved on the first batch (the logits' width is needed);
    until then every ``nn.Linear`` input is recorded, then those hooks go.
    """

    def __init__(self, model: nn.Module, *, final: bool, layer: str | None, layers: Sequence[str]):
        self.model = model
        self.layer = layer
        self.final_name: str | None = None
        self.final_module: nn.Linear | None = None
        self.handles: list[Any] = []
        self._probe: list[Any] = []
        self.inputs: dict[str, Tensor] = {}  # linear name -> last input (first batch only, for resolution)
        self.outputs: dict[str, Tensor] = {}
        self.final_input: Tensor | None = None
        self.final_output: Tensor | None = None
        self.final = final
        modules = dict(model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            names = [n for n in modules if n]
            raise ValueError(f"model has no module(s) {missing}; modules: {', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
        for name in layers:
            self.handles.append(modules[name].register_forward_hook(self._out_hook(name)))
        if final:
            if layer is not None:
                self._set_final(*find_final_linear(model, -1, layer=layer))
            else:
                for name, m in modules.items():
                    if isinstance(m, nn.Linear):
                        self._probe.append(m.register_forward_hook(self._probe_hook(name)))

    def _out_hook(self, name: str):
        def hook(module, args, output):
            self.outputs[name] = _flat(output, name)
        return hook

    def _probe_hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name] = (args[0].detach(), output.detach())
        return hook

    def _final_hook(self, module, args, output):
        self.final_input, self.final_output = args[0].detach(), output.detach()

    def _set_final(self, name: str, module: nn.Linear) -> None:
        self.final_name, self.final_module = name, module
        self.handles.append(module.register_forward_hook(self._final_hook))

    def resolve(self, logits: Tensor) -> None:
        """After the first forward: pick the classifier from the recorded linear calls."""
        if not self.final or self.final_module is not None:
            return
        try:
            name, module = find_final_linear(self.model, logits.shape[1], layer=None)
            if name not in self.inputs:
                raise ValueError(f"the classifier candidate {name!r} was not called in forward(); name it with layer=...")
            self.final_input, self.final_output = self.inputs[name]
        finally:
            for h in self._probe:
                h.remove()
            self._probe, self.inputs = [], {}
        self._set_final(name, module)
        if self.final_output.shape != logits.shape or not torch.allclose(self.final_output, logits, rtol=1e-4, atol=1e-5):
            warnings.warn(
                f"the output of {name!r} differs from the model's logits (a post-processing step?); "
                "features are its input, logits are the model's output",
                RuntimeWarning,
                stacklevel=4,
            )

    def remove(self) -> None:
        for h in self.handles + self._probe:
            h.remove()
        self.handles, self._probe = [], []


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Restore every submodule's own flag: a user may keep e.g. some layers in train mode.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def _to_labels(a: Any, device: torch.device, name: str) -> Tensor:
    t = torch.as_tensor(a)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids; got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64).reshape(-1)


class _Runner:
    """One forward per batch; yields the records the accumulators want."""

    def __init__(self, model, source: _Source, taps: _Taps, device, clean_labels):
        self.model, self.source, self.taps, self.device = model, source, taps, device
        self.clean = None if clean_labels is None else torch.as_tensor(clean_labels).reshape(-1)
        self.num_logits: int | None = None
        self.passes = 0

    @torch.no_grad()
    def batches(self) -> Iterator[dict[str, Any]]:
        self.passes += 1
        offset = 0
        for x, y, yc in self.source.make():
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
            x = x.to(self.device)
            z = logits_of(self.model(x))
            self.taps.resolve(z)
            if self.num_logits is None:
                self.num_logits = z.shape[1]
            y = _to_labels(y, self.device, "labels")
            if y.shape[0] != z.shape[0]:
                raise ValueError(f"a batch has {z.shape[0]} inputs but {y.shape[0]} labels")
            if self.clean is not None:
                if yc is not None:
                    raise ValueError("clean labels were given both in the batches and as clean_labels=")
                if offset + y.shape[0] > self.clean.shape[0]:
                    raise ValueError(f"clean_labels has {self.clean.shape[0]} entries but the data has more samples")
                yc = self.clean[offset : offset + y.shape[0]]
            offset += y.shape[0]
            rec: dict[str, Any] = {"labels": y, "logits": z.detach()}
            if yc is not None:
                rec["clean_labels"] = _to_labels(yc, self.device, "clean labels")
            if self.taps.final:
                rec["features"] = self.taps.final_input.reshape(z.shape[0], -1)
            for name in list(self.taps.outputs):
                rec["layer:" + name] = self.taps.outputs.pop(name)
            yield rec
        if self.clean is not None and offset != self.clean.shape[0]:
            raise ValueError(f"clean_labels has {self.clean.shape[0]} entries but the data has {offset} samples")


# ----------------------------------------------------------------------------- public
def collect(
    model: nn.Module,
    data: Any,
    *,
    layer: str | None = None,
    layers: Sequence[str] | None = None,
    num_classes: int | None = None,
    clean_labels: Any = None,
    convention: str = DEFAULT_CONVENTION,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    per_sample: bool = False,
    cache_bytes: int = 256 * 2**20,
    full_scatter_max_dim: int = 1024,
    input_key: str | None = None,
    label_key: str = "labels",
    clean_label_key: str = "clean_labels",
) -> NCResult:
    """Neural-collapse metrics of any classifier ``model`` on ``data``, streamed.

    The model runs in eval mode under ``torch.no_grad`` (each submodule's
    train/eval flag is restored afterwards, also on error). Per batch the input
    ``h`` of the final linear layer — ``layer`` by name, or else the last
    ``nn.Linear`` in module order whose ``out_features`` equals the number of
    logits — and the model's logits ``z`` are fed with the labels to
    :func:`nclab.metrics.evaluate_stream`, together with the layer's ``weight``
    and ``bias`` (NC2 on weights, NC3, NC4). Only per-class sums and the
    pass-1 cache (≤ ``cache_bytes`` of features and logits) are held.

    Parameters
    ----------
    model : ``nn.Module`` whose forward returns logits (b×C), a tuple starting
        with them, or a dict with ``"logits"``.
    data : ``DataLoader`` / ``Dataset`` / re-iterable of ``(x, y[, y_clean])``
        batches, or tensors ``(x, y[, y_clean])``.
    layers : optional module names; their outputs (flattened) are measured too
        and returned in ``result.info["layers"]`` (see :func:`collect_layers`).
    num_classes : C for the metrics (default: the number of logits).
    clean_labels : true labels aligned with ``data``'s order (alternative to a
        third batch element); enables memorization/dilation.
    device : where the model runs and the metrics accumulate (default: the
        model's parameter device); inputs are moved there batch by batch.
    per_sample : keep per-sample scores (input order) in ``result.per_sample``.
    input_key, label_key, clean_label_key : for dict batches (e.g. Hugging Face
        ``{"pixel_values": ..., "labels": ...}``): the model is called on
        ``batch[input_key]``; labels are ``batch[label_key]``, clean labels
        ``batch[clean_label_key]`` when present.

    Returns an :class:`~nclab.metrics.NCResult`; ``info["layer"]`` names the
    classifier layer used.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = list(layers or [])
    source = _as_source(data, batch_size=batch_size, keys=_Keys(input_key, label_key, clean_label_key))
    if (per_sample or clean_labels is not None) and not source.ordered:
        what = "per_sample=True" if per_sample else "clean_labels="
        raise ValueError(
            f"{what} needs the samples in a fixed order, but the DataLoader shuffles (RandomSampler); "
            "use shuffle=False (or pass clean labels as the third batch element)"
        )
    dev = torch.device(device) if device is not None else _model_device(model)
    with _eval_mode(model), _on_device(model, dev):
        taps = _Taps(model, final=True, layer=layer, layers=layers)
        try:
            runner = _Runner(model, source, taps, dev, clean_labels)
            _peek(runner)  # one batch forward: resolves the classifier and the number of logits
            layer_accs = _LayerAccs(num_classes, full_scatter_max_dim)
            calls = [0]

            def make_batches() -> Iterator[dict[str, Any]]:
                # evaluate_stream's pass 1 also feeds the per-layer accumulators; a second call
                # (pass 2 when the cache overflowed) feeds their pass 2.
                calls[0] += 1
                for rec in runner.batches():
                    lay = {k[6:]: rec.pop(k) for k in list(rec) if k.startswith("layer:")}
                    if lay:
                        layer_accs.update(lay, rec["labels"], num_logits=runner.num_logits, pass_no=calls[0])
                    yield rec

            lin = taps.final_module
            res = evaluate_stream(
                make_batches,
                num_classes=num_classes if num_classes is not None else runner.num_logits,
                weight=lin.weight.detach(),
                bias=None if lin.bias is None else lin.bias.detach(),
                convention=convention,
                per_sample=per_sample,
                within="projected",
                cache_bytes=cache_bytes,
            )
            layer_results = {}
            if layers:
                if layer_accs.needs_second_pass():
                    _layer_pass(runner, layer_accs)
                    calls[0] += 1
                layer_results = layer_accs.results()
        finally:
            taps.remove()
    res.info["layer"] = taps.final_name
    res.info["data_passes"] = calls[0]
    if layers:
        res.info["layers"] = {n: layer_summary(layer_results[n]) for n in layers}
    return res


def _peek(runner: _Runner) -> None:
    """Run the first batch once, to learn the classifier layer and the number of logits."""
    it = runner.batches()
    rec = next(it, None)
    it.close()
    runner.taps.outputs.clear()
    if rec is None:
        raise ValueError("data yielded no batches")


@contextmanager
def _on_device(model: nn.Module, dev: torch.device) -> Iterator[None]:
    # Run on ``dev`` and put the model back where it was.
    home = _model_device(model)
    if home != dev:
        model.to(dev)
    try:
        yield
    finally:
        if home != dev:
            model.to(home)


class _LayerAccs:
    """One ``NCAccumulator`` per named layer: ``within="full"`` (one pass) when the flattened
    dimension is at most ``full_scatter_max_dim``, else ``"projected"`` (needs pass 2)."""

    def __init__(self, num_classes: int | None, full_scatter_max_dim: int):
        self.num_classes = num_classes
        self.max_dim = full_scatter_max_dim
        self.accs: dict[str, NCAccumulator] = {}

    def update(self, outputs: dict[str, Tensor], labels: Tensor, *, num_logits: int | None, pass_no: int) -> None:
        for name, h in outputs.items():
            acc = self.accs.get(name)
            if acc is None:
                C = self.num_classes if self.num_classes is not None else num_logits
                within = "full" if h.shape[1] <= self.max_dim else "projected"
                acc = self.accs[name] = NCAccumulator(C, within=within)
            if pass_no == 1:
                acc.update(h, labels)
            elif acc.within == "projected":
                if acc.phase == 1:
                    acc.start_second_pass()
                acc.update(h, labels)

    def needs_second_pass(self) -> bool:
        return any(a.within == "projected" and a.phase == 1 for a in self.accs.values())

    def results(self) -> dict[str, NCResult]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rank warnings stay in result.info["warnings"]
            return {n: a.compute() for n, a in self.accs.items()}


def _layer_pass(runner: _Runner, layer_accs: _LayerAccs) -> None:
    for acc in layer_accs.accs.values():
        if acc.within == "projected" and acc.phase == 1:
            acc.start_second_pass()
    for rec in runner.batches():
        lay = {k[6:]: rec[k] for k in rec if k.startswith("layer:")}
        layer_accs.update(lay, rec["labels"], num_logits=runner.num_logits, pass_no=2)


def layer_summary(result: NCResult) -> dict[str, Any]:
    """The per-layer keys (``LAYER_KEYS``) of a layer's result, plus how Σ_W was accumulated."""
    out = {k: result.get(k) for k in LAYER_KEYS}
    out["within"] = result.info.get("within")
    return out


def collect_layers(
    model: nn.Module,
    data: Any,
    *,
    layers: Sequence[str],
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    full_scatter_max_dim: int = 1024,
    input_key: str | None = None,
    label_key: str = "labels",
) -> dict[str, NCResult]:
    """NC1, the ETF error of the centred class means and the orthogonal-frame error of the
    uncentred means at each named layer — the "progressive collapse through depth" view.

    Forward hooks on the named modules capture their outputs (flattened to b×d:
    a conv map C×H×W becomes one vector) during the same forward passes. Each
    layer has its own :class:`~nclab.metrics.NCAccumulator` (labels are the
    given labels; C defaults to the number of logits):

    * ``d ≤ full_scatter_max_dim``: ``within="full"`` — the d×d within-class
      scatter is accumulated, so one pass over the data gives everything
      (memory O(d²) per layer);
    * larger ``d``: ``within="projected"`` — memory O(C·d), and NC1 needs a
      second pass over the data (the model is run again).

    The model is run in eval mode under ``no_grad``; hooks are removed and the
    train/eval flags restored afterwards, also on error. Returns
    ``{layer name: NCResult}`` in the order given (pass-2-only keys such as NC4
    are ``None`` for one-pass layers); :func:`layer_summary` extracts the
    per-layer keys.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; name at least one module (see model.named_modules())")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has duplicates: {layers}")
    source = _as_source(data, batch_size=batch_size, keys=_Keys(input_key, label_key))
    dev = torch.device(device) if device is not None else _model_device(model)
    with _eval_mode(model), _on_device(model, dev):
        taps = _Taps(model, final=False, layer=None, layers=layers)
        try:
            runner = _Runner(model, source, taps, dev, None)
            accs = _LayerAccs(num_classes, full_scatter_max_dim)
            n = 0
            for rec in runner.batches():
                n += rec["labels"].shape[0]
                lay = {k[6:]: rec[k] for k in rec if k.startswith("layer:")}
                if set(lay) != set(layers):
                    missing = sorted(set(layers) - set(lay))
                    raise ValueError(f"layer(s) {missing} were not called during forward()")
                accs.update(lay, rec["labels"], num_logits=runner.num_logits, pass_no=1)
            if n == 0:
                raise ValueError("data yielded no samples")
            if accs.needs_second_pass():
                _layer_pass(runner, accs)
            results = accs.results()
        finally:
            taps.remove()
    return {name: results[name] for name in layers}


_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.SiLU, nn.ELU, nn.Sigmoid)


def default_layers(model: nn.Module, *, max_layers: int = 12) -> list[str]:
    """Names of the model's activation modules (ReLU, GELU, ...) in module order — a
    depth profile that works for MLPs, CNNs and ResNets alike; at most ``max_layers``,
    evenly spaced, always including the last."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _ACTIVATIONS)]
    if len(names) > max_layers:
        pick = np.unique(np.round(np.linspace(0, len(names) - 1, max_layers)).astype(int))
        names = [names[i] for i in pick]
    return names


def features_of(
    model: nn.Module, data: Any, *, layer: str | None = None, device: str | torch.device | None = None,
    batch_size: int = 512, max_samples: int | None = None, input_key: str | None = None, label_key: str = "labels",
    clean_label_key: str = "clean_labels",
) -> dict[str, np.ndarray]:
    """In-memory classifier inputs, logits and labels (numpy) for plotting or ad-hoc analysis:
    ``{"features", "logits", "labels"[, "clean_labels"]}``; stops after ``max_samples``.
    Same classifier search, eval mode and hook clean-up as :func:`collect` — but unlike it,
    this holds everything it returns. Dict batches: as in :func:`collect`."""
    source = _as_source(data, batch_size=batch_size, keys=_Keys(input_key, label_key, clean_label_key))
    dev = torch.device(device) if device is not None else _model_device(model)
    out: dict[str, list[np.ndarray]] = {}
    with _eval_mode(model), _on_device(model, dev):
        taps = _Taps(model, final=True, layer=layer, layers=[])
        try:
            n = 0
            for rec in _Runner(model, source, taps, dev, None).batches():
                for key in ("features", "logits", "labels", "clean_labels"):
                    if key in rec:
                        out.setdefault(key, []).append(rec[key].cpu().numpy())
                n += rec["labels"].shape[0]
                if max_samples is not None and n >= max_samples:
                    break
        finally:
            taps.remove()
    res = {k: np.concatenate(v) for k, v in out.items()}
    if max_samples is not None:
        res = {k: v[:max_samples] for k, v in res.items()}
    return res
