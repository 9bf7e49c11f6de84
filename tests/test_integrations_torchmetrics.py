"""nclab.integrations.torchmetrics.NeuralCollapse against nc_metrics and torchmetrics' own machinery."""

from __future__ import annotations

import socket
import warnings

import pytest
import torch

from nclab.integrations.torchmetrics import NeuralCollapse
from nclab.metrics import nc_metrics

torch.set_num_threads(1)

C, D, N = 4, 16, 400


def _data(seed: int = 0, spread: float = 1e-4):
    """Collapsed float32 features: class means of norm ~40, within-class spread ``spread``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(C, D, generator=g) * 10
    y = torch.arange(N) % C
    x = (means[y] + spread * torch.randn(N, D, generator=g)).float()
    yc = y.clone()
    yc[:20] = (yc[:20] + 1) % C
    lin = torch.nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(C, D, generator=g))
        lin.bias.copy_(torch.randn(C, generator=g))
    return x, y, yc, lin


def _reference(x, y, yc, lin):
    return nc_metrics(x.numpy(), y.numpy(), weight=lin.weight.detach().numpy(), bias=lin.bias.detach().numpy(),
                      clean_labels=yc.numpy()).values


def _assert_close(got: dict, ref: dict, rtol: float = 1e-6) -> None:
    assert got, "no metrics"
    for k, v in got.items():
        assert ref[k] is not None, k
        assert float(v) == pytest.approx(ref[k], rel=rtol, abs=1e-300), k


@pytest.mark.parametrize("spread", [1.0, 1e-4, 1e-6])
def test_equals_nc_metrics_on_collapsed_float32(spread):
    x, y, yc, lin = _data(spread=spread)
    m = NeuralCollapse(C, classifier=lin)
    for i in range(0, N, 64):
        m.update(x[i : i + 64], y[i : i + 64], yc[i : i + 64])
    got = m.compute()
    ref = _reference(x, y, yc, lin)
    _assert_close(got, ref)
    one_pass = {"nc1", "nc1_pinv", "nc1_trace_ratio", "nc1_logits", "cdnv", "nc2_etf_error_means",
                "nc2_etf_error_weights", "nc3_papyan", "nc3_zhu", "nc4_bias_norm", "accuracy", "accuracy_clean",
                "ece", "realized_noise_rate"}
    assert one_pass <= set(got)
    # two-pass quantities are not claimed
    assert not {"memorization", "dilation", "nc4_ncc_mismatch"} & set(got)
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in got.values())


def test_without_classifier_and_explicit_logits():
    x, y, _, lin = _data()
    m = NeuralCollapse(C, feature_dim=D)
    m.update(x, y)
    got = m.compute()
    assert "nc3_zhu" not in got and "accuracy" not in got
    _assert_close(got, nc_metrics(x.numpy(), y.numpy()).values)
    logits = lin(x).detach()
    m2 = NeuralCollapse(C, feature_dim=D)
    m2.update(x, y, logits=logits)
    ref = nc_metrics(x.numpy(), y.numpy(), logits=logits.numpy()).values
    _assert_close(m2.compute(), ref)


def test_merge_state_is_the_distributed_reduction():
    """Two 'ranks' seeing different halves, merged by torchmetrics' merge_state (the custom reduce fns)."""
    x, y, yc, lin = _data()
    a, b = NeuralCollapse(C, classifier=lin), NeuralCollapse(C, classifier=lin)
    a.update(x[:150], y[:150], yc[:150])
    b.update(x[150:], y[150:], yc[150:])
    a.merge_state(b)
    _assert_close(a.compute(), _reference(x, y, yc, lin))


def test_sync_with_gathered_states():
    """torchmetrics' sync path (gather -> stack -> dist_reduce_fx) with a stand-in all_gather."""
    x, y, yc, lin = _data()
    ranks = [NeuralCollapse(C, classifier=lin) for _ in range(3)]
    for r, sl in zip(ranks, (slice(0, 100), slice(100, 333), slice(333, N))):
        r.update(x[sl], y[sl], yc[sl])
    states = [{k: getattr(r, k).clone() for k in r._defaults} for r in ranks]
    me = ranks[0]
    names = list(me._reductions)

    def fake_gather(tensor, group=None):  # all_gather: every rank's copy of this state
        name = next(k for k in names if getattr(me, k) is tensor)
        return [s[name] for s in states]

    me.sync(dist_sync_fn=fake_gather, distributed_available=lambda: True)
    got = me._accumulator().compute().values
    me.unsync()
    ref = _reference(x, y, yc, lin)
    for k in ("nc1", "cdnv", "nc3_zhu", "accuracy", "ece", "realized_noise_rate"):
        assert got[k] == pytest.approx(ref[k], rel=1e-6)


def test_forward_returns_batch_metrics_and_accumulates():
    x, y, yc, lin = _data()
    m = NeuralCollapse(C, classifier=lin)
    first = m(x[:64], y[:64], yc[:64])
    _assert_close(first, _reference(x[:64], y[:64], yc[:64], lin))
    assert m(x[64:66], y[64:66], yc[64:66]) == {}  # two samples cannot hold four classes
    for i in range(66, N, 50):
        m(x[i : i + 50], y[i : i + 50], yc[i : i + 50])
    _assert_close(m.compute(), _reference(x, y, yc, lin))


def test_state_dict_to_and_reset():
    x, y, yc, lin = _data()
    m = NeuralCollapse(C, classifier=lin).to("cpu")
    m.update(x, y, yc)
    sd = m.state_dict()
    assert "feature_moments" in sd and sd["feature_moments"].dtype == torch.float64
    fresh = NeuralCollapse(C, classifier=lin)
    fresh.load_state_dict(sd)
    with warnings.catch_warnings():  # torchmetrics warns that compute() precedes any update()
        warnings.simplefilter("ignore", UserWarning)
        restored = fresh.compute()
    _assert_close(restored, _reference(x, y, yc, lin))
    assert "weight" not in " ".join(sd)  # the classifier is not part of the metric's state
    m.reset()
    assert float(m.feature_moments.abs().sum()) == 0.0


def test_clear_errors():
    x, y, yc, lin = _data()
    with pytest.raises(ValueError, match="feature_dim"):
        NeuralCollapse(C)
    with pytest.raises(ValueError, match="outputs"):
        NeuralCollapse(C + 1, classifier=lin)
    m = NeuralCollapse(C, classifier=lin)
    with pytest.raises(ValueError, match="dimension"):
        m.update(x[:, :3], y)
    m.update(x[:100], y[:100], yc[:100])
    m.update(x[100:], y[100:])
    with pytest.raises(ValueError, match="clean_labels were given for some batches"):
        m.compute()
    m2 = NeuralCollapse(C, classifier=lin)
    m2.update(x[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="no samples"):
        m2.compute()


def _ddp_worker(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, y, yc, lin = _data()
        m = NeuralCollapse(C, classifier=lin)
        idx = torch.arange(rank, N, world)  # DistributedSampler-style interleaving
        m.update(x[idx], y[idx], yc[idx])
        out = m.compute()  # syncs across ranks (sync_on_compute=True)
        if rank == 0:
            torch.save({k: float(v) for k, v in out.items()}, path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_gloo_process_group(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "out.pt")
    # forked from this process (torch imported, one thread): no interpreter start-up per rank
    mp.start_processes(_ddp_worker, args=(2, port, path), nprocs=2, join=True, start_method="fork")
    got = torch.load(path)
    x, y, yc, lin = _data()
    _assert_close(got, _reference(x, y, yc, lin))


def test_float32_rank_deficient_features_use_float32_tolerance():
    """Features whose class means span 5 of 64 dimensions (C = 10), in float32: the metric's
    numerical rank follows the input precision, as nc_metrics' does."""
    import warnings

    from nclab.integrations.torchmetrics import NeuralCollapse
    from nclab.metrics import nc_metrics

    g = torch.Generator().manual_seed(0)
    C, d, n = 10, 64, 2000
    codes, A = torch.randn(C, 5, generator=g), torch.randn(5, d, generator=g)
    y = torch.arange(n) % C
    x = ((codes[y] + 0.3 * torch.randn(n, 5, generator=g)) @ A).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = NeuralCollapse(C, feature_dim=d)
        m.update(x, y)
        got = float(m.compute()["nc1"])
        ref = nc_metrics(x, y, num_classes=C).values["nc1"]
    assert got == pytest.approx(ref, rel=1e-6)
