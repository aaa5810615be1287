"""The training loop: learning, exact resume, dry run, stats rows, schedule, max_steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comostream.models.checkpoint_io import CheckpointError, load_checkpoint
from comostream.models.config import TrainConfig
from comostream.training.loop import Trainer, lr_factor
from comostream.training.runlog import read_stats

from helpers import (
    flat_params,
    noisy_step,
    toy_config,
    toy_dataset,
    toy_state,
    toy_valid,
)


def _trainer(cfg, run_dir: Path, seed: int = 0, **kw) -> Trainer:  # type: ignore[no-untyped-def]
    kw.setdefault("valid_fn", toy_valid)
    return Trainer(
        cfg,
        toy_state(cfg, seed),
        noisy_step,
        toy_dataset(),
        run_dir,
        kind="toy",
        progress=False,
        tensorboard=False,
        **kw,
    )


def test_loss_falls_and_stats_rows_are_logged_at_their_intervals(tmp_path: Path) -> None:
    cfg = toy_config(max_steps=40, log_every=10, valid_every=20, ckpt_every=100)
    state = _trainer(cfg, tmp_path).fit()
    assert state.step == 40
    train = read_stats(tmp_path, "train")
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert {"loss", "mse", "abs", "lr", "grad_norm", "steps_per_s"} <= set(train[0])
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    valid = read_stats(tmp_path, "valid")
    assert [r["step"] for r in valid] == [20, 40] and valid[1]["mse"] < valid[0]["mse"]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["max_steps"] == 40
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["best.pt", "ckpt_00000040.pt", "last.pt"]  # best: validated at step 40


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    """12 steps in one run == 7 steps, stop, fresh objects + resume, 5 more steps."""
    cfg = toy_config()
    full = _trainer(cfg, tmp_path / "a").fit()
    first = _trainer(cfg, tmp_path / "b").fit(stop_at=7)
    assert first.step == 7 and (tmp_path / "b" / "ckpt_00000007.pt").is_file()
    assert not torch.equal(flat_params(first), flat_params(full))
    second = _trainer(cfg, tmp_path / "b", seed=123)  # different init: resume must overwrite it
    second.resume(tmp_path / "b" / "last.pt")
    assert second.state.step == 7
    resumed = second.fit()
    assert resumed.step == 12
    assert torch.equal(flat_params(resumed), flat_params(full))
    opt_a = full.optimizers["main"].state_dict()["state"]
    opt_b = resumed.optimizers["main"].state_dict()["state"]
    for k in opt_a:
        assert all(torch.equal(opt_a[k][n], opt_b[k][n]) for n in opt_a[k])
    assert (
        full.optimizers["main"].param_groups[0]["lr"]
        == resumed.optimizers["main"].param_groups[0]["lr"]
    )
    rows_a = read_stats(tmp_path / "a")
    rows_b = read_stats(tmp_path / "b")
    assert [(r["split"], r["step"]) for r in rows_a] == [(r["split"], r["step"]) for r in rows_b]
    assert [r["mse"] for r in rows_a if r["split"] == "valid"] == [
        r["mse"] for r in rows_b if r["split"] == "valid"
    ]


def test_dry_run_does_one_step_one_validation_one_checkpoint(tmp_path: Path) -> None:
    cfg = toy_config(max_steps=1000, log_every=50, valid_every=500, ckpt_every=500)
    state = _trainer(cfg, tmp_path, dry_run=True).fit()
    assert state.step == 1
    assert [(r["split"], r["step"]) for r in read_stats(tmp_path)] == [("train", 1), ("valid", 1)]
    ck = load_checkpoint(tmp_path / "last.pt", kind="toy")
    assert ck["step"] == 1 and set(ck["models"]) == {"net"} and len(ck["rng"]) == 1
    assert ck["config"]["train"]["max_steps"] == 1000
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["best.pt", "ckpt_00000001.pt", "last.pt"]


def test_training_stops_at_max_steps_with_a_checkpoint_every_n_steps(tmp_path: Path) -> None:
    cfg = toy_config(max_steps=10, ckpt_every=4, log_every=5)
    state = _trainer(cfg, tmp_path, valid_fn=None).fit()
    assert state.step == 10
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["ckpt_00000004.pt", "ckpt_00000008.pt", "ckpt_00000010.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 10
    assert _trainer(cfg, tmp_path).fit().step == 10  # max_steps reached again: fresh state
    again = _trainer(cfg, tmp_path)
    again.resume(tmp_path / "last.pt")
    assert again.fit().step == 10  # already finished: no more steps


def test_resume_rejects_a_checkpoint_of_another_kind_or_model(tmp_path: Path) -> None:
    cfg = toy_config(max_steps=1)
    _trainer(cfg, tmp_path, valid_fn=None).fit()
    other = Trainer(
        cfg,
        toy_state(cfg),
        noisy_step,
        toy_dataset(),
        tmp_path / "x",
        kind="teacher",
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(CheckpointError, match="a 'toy' checkpoint, expected 'teacher'"):
        other.resume(tmp_path / "last.pt")
    bigger = _trainer(cfg, tmp_path / "y")
    bigger.state.models["net"][0] = torch.nn.Conv1d(2, 9, 3, padding=1)
    with pytest.raises(CheckpointError, match=r"model 'net'.*0.weight: checkpoint \(8, 2, 3\)"):
        bigger.resume(tmp_path / "last.pt")


def test_non_finite_loss_stops_training(tmp_path: Path) -> None:
    def nan_step(state, batch):  # type: ignore[no-untyped-def]
        return {"loss": state.models["net"](batch[0]).mean() * float("nan")}

    cfg = toy_config(max_steps=3)
    trainer = Trainer(
        cfg,
        toy_state(cfg),
        nan_step,
        toy_dataset(),
        tmp_path,
        kind="toy",
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(FloatingPointError, match="step 1: non-finite loss"):
        trainer.fit()


def test_lr_schedule_warmup_then_constant_or_cosine() -> None:
    const = TrainConfig(warmup_steps=4, max_steps=20, lr_schedule="constant")
    assert [lr_factor(s, const) for s in (0, 1, 3, 4, 19)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cos = TrainConfig(warmup_steps=4, max_steps=20, lr_schedule="cosine")
    assert lr_factor(3, cos) == 1.0 and lr_factor(4, cos) == 1.0
    assert lr_factor(12, cos) == pytest.approx(0.5) and lr_factor(20, cos) == pytest.approx(0.0)
    assert lr_factor(0, TrainConfig(warmup_steps=0)) == 1.0


def test_tensorboard_scalars_are_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = toy_config(max_steps=2, log_every=1)
    Trainer(
        cfg, toy_state(cfg), noisy_step, toy_dataset(), tmp_path, kind="toy", progress=False
    ).fit()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
