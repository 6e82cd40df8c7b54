"""Training loop on tiny generated scenes: the loss goes down, a killed run resumes to the same state,
the exported weights load, and `mirror_sfm evaluate` reports mAP in [0, 1]."""

import json

import pytest
import torch
from labelled_scenes import fit_one_batch, make_scenes

from mirror_sfm.cli import main
from mirror_sfm.errors import MirrorError
from mirror_sfm.model import load_model
from mirror_sfm.train.config import load_config
from mirror_sfm.train.data import TripletBatches, load_scenes
from mirror_sfm.train.logs import read_csv
from mirror_sfm.train.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return make_scenes(root, ["synth_a", "synth_b", "synth_c", "val_a"])


def config(out, steps, **extra):
    sets = {
        "run.out": out,
        "run.steps": steps,
        "run.validate_every": 0,
        "run.progress": False,
        "run.checkpoint_every": 2,
        "augment.size": 64,
        "data.columns": 3,
        "data.num_workers": 0,
        "model.freeze_blocks": 12,
        "optim.lr": 0.01,
        "run.threads": 1,
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def test_loss_goes_down_without_collapse(scenes):
    """Eight SGD steps on one fixed batch, through the loop's model set-up and loss: the loss must fall well
    below its collapse value (every descriptor alike: alpha_e + alpha_w + alpha_h = 2 without masks), so a
    broken loss, gradient or freeze fails here, and so does a collapse."""
    torch.manual_seed(0)
    cfg = config("unused", 1, **{"loss.use_masks": False, "augment.size": 96})
    batch = TripletBatches(load_scenes(scenes[:3]), cfg.data, cfg.augment, seed=0)[0]
    losses, _, terms = fit_one_batch(cfg, batch)
    last = sum(losses[-3:]) / 3
    assert last < 0.6 * losses[0] and last < 1.5, losses
    assert terms["d_neg"].item() > 0.5, terms  # negatives still apart: not a collapse


def test_train_logs_and_exports_weights(tmp_path, scenes):
    res = train(config(tmp_path / "run", 3), scenes[:3], [])
    assert res.step == 3 and res.weights.is_file()
    rows = read_csv(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert {"loss", "easy", "weak", "hard", "mask", "d_pos", "d_neg", "rank_ok", "lr", "step_time"} <= set(rows[0])
    assert all(0 < float(r["loss"]) < 10 for r in rows)
    model = load_model(res.weights)
    assert model.meta["trained_steps"] == 3
    # fp16 on disk, like save_weights' other users
    ckpt = torch.load(res.weights, weights_only=False)
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, scenes):
    full = train(config(tmp_path / "full", 4, **{"run.export": "''"}), scenes[:3], [])

    class Killed(Exception):
        pass

    def kill_at_3(step, terms):
        if step == 3:  # after the step-2 checkpoint, before the next
            raise Killed

    with pytest.raises(Killed):
        train(config(tmp_path / "resumed", 4, **{"run.export": "''"}), scenes[:3], [], callback=kill_at_3)
    resumed = train(config(tmp_path / "resumed", 4, **{"run.export": "''"}), scenes[:3], [])
    assert resumed.resumed_from == 2 and resumed.step == 4
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    # the log has each step once, step 3 of the killed run replaced by the resumed one
    full_log, res_log = read_csv(tmp_path / "full" / "log.csv"), read_csv(tmp_path / "resumed" / "log.csv")
    assert [r["step"] for r in res_log] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in res_log] == [r["loss"] for r in full_log]
    assert full.last_terms == resumed.last_terms


def test_lr_schedule_steps(tmp_path, scenes):
    cfg = config(
        tmp_path / "lr", 4, **{"optim.lr_step": 2, "optim.lr_gamma": 0.5, "run.export": "''", "model.freeze_blocks": -1}
    )
    train(cfg, scenes[:3], [])
    lrs = [float(r["lr"]) for r in read_csv(tmp_path / "lr" / "log.csv")]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005])


def test_validation_is_logged(tmp_path, scenes):
    cfg = config(
        tmp_path / "val",
        2,
        **{
            "run.validate_every": 2,
            "run.val_resize": 96,
            "run.val_ks": "[5]",
            "run.export": "''",
            "model.freeze_blocks": -1,
        },
    )
    train(cfg, scenes[:3], [scenes[3]])
    rows = read_csv(tmp_path / "val" / "val.csv")
    assert {r["scene"] for r in rows} == {"val_a", "mean"} and {r["gt"] for r in rows} == {"co:0.5", "ct:0.2"}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)


def test_train_errors_are_clear(tmp_path, scenes):
    with pytest.raises(MirrorError, match="no labelled training scene"):
        train(config(tmp_path / "none", 1, **{"data.root": tmp_path / "empty"}))
    with pytest.raises(MirrorError, match="unknown option optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])


def test_train_cli(tmp_path, scenes, capsys):
    cfg = tmp_path / "train.yaml"
    splits = tmp_path / "splits.yaml"
    splits.write_text("train: ['synth_*']\nvalidation: [val_a]\n")
    cfg.write_text(
        f"data: {{root: {scenes[0].parent}, splits: {splits}, columns: 3, num_workers: 0}}\n"
        "augment: {size: 64}\nmodel: {freeze_blocks: -1}\n"
        "run: {validate_every: 0, progress: false, threads: 1, val_resize: 64}\n"
    )
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "cli"),
                "--steps",
                "1",
                "--set",
                "run.export_whitening=true",
                "--set",
                "run.whitening_dim=32",
            ]
        )
        == 0
    )
    assert "trained to step 1" in capsys.readouterr().out
    model = load_model(tmp_path / "cli" / "weights.pt")  # whitening fitted on the training scenes
    assert model.whitening is not None and model.whitening.dim == 32
    assert sorted(model.meta["train_scenes"]) == ["synth_a", "synth_b", "synth_c"]
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "mirror_sfm: error: config file not found" in capsys.readouterr().err


def test_evaluate_cli(tmp_path, scenes, capsys):
    out = tmp_path / "report.json"
    assert (
        main(["evaluate", str(scenes[3]), "--weights", "imagenet", "--resize", "96", "-k", "5", "10", "-o", str(out)])
        == 0
    )
    table = capsys.readouterr().out
    assert "val_a" in table and "co:0.5" in table
    report = json.loads(out.read_text())
    res = report["scenes"][0]["results"]
    assert report["scenes"][0]["images"] == 12 and res["co:0.5"]["queries"] > 0
    for spec in ("co:0.5", "ct:0.2"):
        for key in ("mAP@5", "AP@5", "mAP@10", "AP@10"):
            assert 0.0 <= res[spec][key] <= 1.0
    # no re-ranking, another GT
    assert (
        main(
            [
                "evaluate",
                str(scenes[3]),
                "--weights",
                "imagenet",
                "--resize",
                "96",
                "--rerank",
                "none",
                "--gt",
                "mo:0.3",
            ]
        )
        == 0
    )
    assert "mo:0.3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate"], "no scene to evaluate"),
        (["evaluate", "/nonexistent/scene"], "scene folder not found: /nonexistent/scene"),
        (["evaluate", "SCENE", "--gt", "co"], "ground truth must be 'criterion:threshold'"),
        (["evaluate", "SCENE", "--gt", "xx:0.5"], "ground truth must be 'criterion:threshold'"),
        (["evaluate", "SCENE", "--weights", "/no/such.pt"], "model weights not found"),
    ],
)
def test_evaluate_cli_errors(argv, message, scenes, capsys):
    argv = [str(scenes[3]) if a == "SCENE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirror_sfm: error: ") and message in err and err.count("\n") == 1


def test_evaluate_missing_labels_is_clear(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    assert main(["evaluate", str(tmp_path / "s")]) == 2
    assert "image list not found" in capsys.readouterr().err


def test_config_numbers_in_exponent_form():
    """YAML 1.1 reads 2e-3 as a string: a float option still takes it; a word is one error line."""
    assert load_config(None, ["optim.lr=2e-3", "loss.lambda_same=4"]).optim.lr == 0.002
    with pytest.raises(MirrorError, match="optim.lr: expected a number"):
        load_config(None, ["optim.lr=fast"])
