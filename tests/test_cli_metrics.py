import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.metrics import nc_metrics

_register_all()
runner = CliRunner()


@pytest.fixture
def feature_file(tmp_path, rng):
    C, d, n = 3, 5, 300
    yc = rng.integers(0, C, n)
    yc[:C] = np.arange(C)
    mu = np.abs(rng.normal(size=(C, d))) * 3
    x = np.abs(mu[yc] + rng.normal(size=(n, d)) * 0.4)
    y = np.where((rng.random(n) < 0.2) & (np.arange(n) >= C), (yc + 1) % C, yc)
    W, b = mu - mu.mean(0), np.zeros(C)
    path = tmp_path / "f.npz"
    np.savez(path, features=x.astype(np.float32), labels=y, clean_labels=yc, W=W, b=b)
    return path, (x.astype(np.float32), y, yc, W, b)


REQUIRED_KEYS = {
    "nc1", "nc1_pinv", "nc2_equinorm_means", "nc2_equinorm_weights", "nc2_equiangular_means",
    "nc2_etf_error_weights", "nc2_etf_error_means", "nc2_orthogonal_error_means", "nc3_papyan", "nc3_zhu",
    "nc4_ncc_mismatch", "nc4_bias_norm", "cdnv", "accuracy", "ece", "memorization", "memorization_normalized",
    "dilation", "dilation_normalized", "realized_noise_rate",
}


def test_metrics_json_has_contract_keys_and_values(feature_file):
    path, (x, y, yc, W, b) = feature_file
    res = runner.invoke(app, ["metrics", str(path), "--json", "--convention", "papyan2020"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert REQUIRED_KEYS <= set(out)
    ref = nc_metrics(x, y, weight=W, bias=b, clean_labels=yc, convention="papyan2020")
    assert out["nc1"] == pytest.approx(ref["nc1"], rel=1e-12)
    assert out["memorization"] == pytest.approx(ref["memorization"], rel=1e-12)
    assert out["convention"] == "papyan2020"


def test_metrics_table(feature_file):
    path, _ = feature_file
    res = runner.invoke(app, ["metrics", str(path)])
    assert res.exit_code == 0, res.output
    assert "nc2_orthogonal_error_means" in res.stdout and "memorization" in res.stdout


def test_metrics_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    res = runner.invoke(app, ["metrics", str(bad)])
    assert res.exit_code == 2 and "not a readable .npz" in res.output
    miss = tmp_path / "miss.npz"
    np.savez(miss, features=np.zeros((4, 2)))
    res = runner.invoke(app, ["metrics", str(miss)])
    assert res.exit_code == 2 and "missing required array(s) ['labels']" in res.output
    typo = tmp_path / "typo.npz"
    np.savez(typo, features=np.zeros((4, 2)), labels=np.array([0, 0, 1, 1]), weights=np.zeros((2, 2)))
    res = runner.invoke(app, ["metrics", str(typo)])
    assert res.exit_code == 2 and "unknown array(s) ['weights']" in res.output
    nan = tmp_path / "nan.npz"
    f = np.ones((4, 2))
    f[0, 0] = np.nan
    np.savez(nan, features=f, labels=np.array([0, 0, 1, 1]))
    res = runner.invoke(app, ["metrics", str(nan)])
    assert res.exit_code == 2 and "1 non-finite values" in res.output
