"""The study protocol: paired seeds (CE and LS share noise, init and batch order), the
dry-run JSON of both scales, and clear errors for missing data."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from nclab.cli.sweep import register
from nclab.sweep.study import plan_study


def _cli(args):
    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    return CliRunner().invoke(app, args)


def _without(cfg: dict, *keys: str) -> dict:
    c = json.loads(json.dumps(cfg))
    for k in keys:
        parts = k.split(".")
        d = c
        for p in parts[:-1]:
            d = d[p]
        d.pop(parts[-1], None)
    return c


def _cells(runs):
    cells: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        key = (r["dataset"]["name"], r["dataset"]["classes"], r["noise"]["rate"], r["seed"],
               r["model"].get("classifier_bias", True))
        assert r["loss"]["name"] not in cells.setdefault(key, {}), f"two {r['loss']['name']} runs in {key}"
        cells[key][r["loss"]["name"]] = r
    return cells


def test_small_dry_run_json_is_paired_one_schedule_and_has_ten_seeds():
    res = _cli(["reproduce", "memorization-dilation", "--scale", "small", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    runs = plan["runs"]
    assert plan["n_runs"] == len(runs) >= 240
    for r in runs:
        for k in ("dataset", "noise", "loss", "seed", "epochs", "schedule"):
            assert k in r
        # one schedule for every run: no early stop, the terminal phase only recorded
        assert r.get("stop") is None, r.get("stop")
        assert r["terminal_acc"] == 0.999 and r["epochs"] == 200
        assert r["schedule"]["name"] == "cosine" and r["noise"]["kind"] == "symmetric_all"
    cells = _cells(runs)
    for key, pair in cells.items():
        assert set(pair) == {"ce", "ls"}, key
        # CE and LS differ in the loss name only (and the hash-derived run name): same epochs and schedule
        assert _without(pair["ce"], "loss.name", "name", "hash") == _without(pair["ls"], "loss.name", "name", "hash")
    by_group: dict[tuple, set] = {}
    for ds, classes, rate, seed, _bias in cells:
        by_group.setdefault((ds, classes, rate), set()).add(seed)
    assert all(len(s) >= 10 for s in by_group.values())
    groups = {(ds, c) for ds, c, _ in by_group}
    assert groups == {("digits", 2), ("fashion-mnist", 2), ("fashion-mnist", 10)}
    assert {r for (ds, c, r) in by_group if c == 2} == {0.0, 0.1, 0.2, 0.3, 0.4}
    assert {r for (ds, c, r) in by_group if c == 10} == {0.2, 0.4}


def test_paper_dry_run_is_the_official_protocol():
    res = _cli(["reproduce", "memorization-dilation", "--scale", "paper", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "noise.kind=symmetric_all" in res.output and "noise.kind=symmetric " not in res.output
    plan = plan_study(scale="paper", check_data=False)
    names = {r.config["dataset"]["name"] for r in plan.runs()}
    assert names == {"mnist", "fashion-mnist", "cifar10", "svhn"}
    assert plan.search == "per-run"  # the official code searches per (dataset, loss, rate, seed)
    assert plan_study(scale="paper", check_data=False, search="per-cell").search == "per-cell"
    with pytest.raises(ValueError, match="search mode"):
        plan_study(scale="paper", check_data=False, search="sometimes")
    assert all(r.config.get("stop") is None for r in plan.runs())
    cfg = plan.runs()[0].config
    assert cfg["dataset"]["preprocess"] == "paper" and cfg["model"]["depth"] == 9 and cfg["model"]["width"] == 2048


def test_missing_data_names_the_places_looked_in(tmp_path, monkeypatch):
    monkeypatch.setenv("NCLAB_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        plan_study(scale="paper", datasets=["cifar10"], data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar10" in msg and str(tmp_path / "nowhere") in msg and "--data-dir" in msg
    res = _cli(["reproduce", "memorization-dilation", "--scale", "paper", "--datasets", "svhn",
                "--data-dir", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "svhn" in res.output


def test_ce_and_ls_of_a_cell_share_noise_init_and_batch_order():
    from nclab.models import build_model
    from nclab.seeding import torch_generator
    from nclab.train import TrainConfig
    from nclab.train.data import prepare_data

    torch.set_num_threads(1)
    plan = plan_study(scale="small", datasets=["digits"], rates=[0.4], seeds=2, multiclass=False, check_data=False)
    cells = _cells([r.config for r in plan.runs()])
    assert len(cells) == 2
    for pair in cells.values():
        got = {}
        for loss, cfg_d in pair.items():
            cfg = TrainConfig.model_validate(cfg_d)
            data = prepare_data(cfg, torch.device("cpu"))
            model = build_model(cfg.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                                generator=torch_generator(cfg.seed, "init"), **cfg.model.options())
            perm = torch.randperm(data.x_train.shape[0], generator=torch_generator(cfg.seed, "batches"))
            got[loss] = (data, model.state_dict(), perm)
        (d1, w1, p1), (d2, w2, p2) = got["ce"], got["ls"]
        assert torch.equal(d1.y_train, d2.y_train) and torch.equal(d1.clean_train, d2.clean_train)
        assert (d1.y_train != d1.clean_train).any()  # the draw flipped some labels
        assert torch.equal(d1.x_train, d2.x_train)
        assert all(torch.equal(w1[k], w2[k]) for k in w1)
        assert torch.equal(p1, p2)
    # different seeds do draw differently
    (a, b) = [next(iter(p.values())) for p in cells.values()]
    assert a["seed"] != b["seed"]
