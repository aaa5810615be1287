"""Hostile and careless conditions for training: a ``kill -9`` in the middle of a checkpoint
write, checkpoints piling up, a full disk while logging or checkpointing. Each asserts a clear
error and that nothing was lost (whole stats rows, a loadable previous checkpoint, exact resume).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from comostream.models.checkpoint_io import load_checkpoint
from comostream.models.config import ConfigError, TrainConfig
from comostream.training import runlog
from comostream.training.checkpoint import CheckpointWriteError, link_checkpoint, save_checkpoint
from comostream.training.loop import Trainer, TrainState
from comostream.training.runlog import RunWriteError, read_stats

from helpers import flat_params, noisy_step, toy_config, toy_dataset, toy_state, toy_valid

pytestmark = pytest.mark.usefixtures("one_thread")

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _trainer(cfg: Any, run_dir: Path, **kw: Any) -> Trainer:
    kw.setdefault("valid_fn", toy_valid)
    return Trainer(
        cfg,
        toy_state(cfg),
        noisy_step,
        toy_dataset(),
        run_dir,
        kind="toy",
        progress=False,
        tensorboard=False,
        **kw,
    )


def _pt_names(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("*.pt"))


def _whole_rows(run: Path) -> list[dict[str, Any]]:
    """Every line of stats.jsonl, each of which must be one whole JSON row."""
    text = (run / "stats.jsonl").read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _resume_and_finish(cfg: Any, run: Path) -> TrainState:
    trainer = _trainer(cfg, run)
    trainer.resume(run / "last.pt")
    return trainer.fit()


# ---------------------------------------------------------------- orphaned temp files

KILLED_WRITER = """
import sys, time, torch
from comostream.training.checkpoint import save_checkpoint

def stuck(obj, fh):
    fh.write(b"partial")
    fh.flush()
    print("writing", flush=True)
    time.sleep(60)

torch.save = stuck
save_checkpoint(sys.argv[1], {"kind": "toy", "step": 9})
"""


def test_kill_9_during_a_checkpoint_write_leaves_a_temp_that_the_next_run_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(run / "ckpt_00000009.pt")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    orphans = [p.name for p in run.iterdir()]
    assert len(orphans) == 1 and orphans[0].startswith(".ckpt_00000009.pt.")  # the kill's leftover
    # more leftovers of our writers, and files that look alike but are not ours
    ours = [
        Path(tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=run)[1]).name,
        Path(tempfile.mkstemp(prefix=".stats.jsonl.", suffix=".tmp", dir=run)[1]).name,
        ".best.pt.4242.link",
    ]
    (run / ours[-1]).write_bytes(b"")
    foreign = [
        "notes.txt",
        ".hidden",
        ".ckpt_00000009.pt.tmp",  # no random part
        "ckpt_00000009.pt.abcd1234.tmp",  # no leading dot
        ".mydata.bin.abcd1234.tmp",  # not a file of a run folder
        ".last.pt.abc.link",  # not a PID
    ]
    for name in foreign:
        (run / name).write_text("keep me")
    (run / ".ckpt_00000001.pt.abcdefgh.tmp").mkdir()  # a folder: never removed
    capsys.readouterr()
    _trainer(toy_config(max_steps=2, ckpt_every=2), run).fit()
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "interrupted write" in line]
    assert len(notes) == 1 and "removed 4 temp file(s)" in notes[0] and str(run) in notes[0]
    left = {p.name for p in run.iterdir()}
    assert not left & {*orphans, *ours}
    assert set(foreign) <= left and ".ckpt_00000001.pt.abcdefgh.tmp" in left
    assert all((run / name).read_text() == "keep me" for name in foreign)
    capsys.readouterr()
    _trainer(toy_config(max_steps=2, ckpt_every=2), run).fit()  # nothing left: no note
    assert "interrupted write" not in capsys.readouterr().err


# ---------------------------------------------------------------- retention


def _scripted_valid(state: TrainState) -> dict[str, float]:
    """A validation loss that is lowest at step 6 (so best.pt is neither the first nor last)."""
    return {"loss": abs(state.step - 6) + 0.5, "other": -float(state.step)}


def test_retention_keeps_the_newest_n_last_and_best_and_resume_stays_exact(
    tmp_path: Path,
) -> None:
    cfg = toy_config(max_steps=20, ckpt_every=2, valid_every=2, log_every=2, keep_checkpoints=2)
    full = _trainer(cfg, tmp_path / "full", valid_fn=_scripted_valid).fit()
    assert _pt_names(tmp_path / "full") == [
        "best.pt",
        "ckpt_00000018.pt",
        "ckpt_00000020.pt",
        "last.pt",
    ]
    best = load_checkpoint(tmp_path / "full" / "best.pt", kind="toy")
    assert best["step"] == 6 and best["best"] == {"step": 6, "metric": "loss", "value": 0.5}
    assert load_checkpoint(tmp_path / "full" / "last.pt")["best"]["step"] == 6

    run = tmp_path / "part"
    _trainer(cfg, run, valid_fn=_scripted_valid).fit(stop_at=13)
    assert _pt_names(run) == ["best.pt", "ckpt_00000012.pt", "ckpt_00000013.pt", "last.pt"]
    trainer = _trainer(cfg, run, valid_fn=_scripted_valid)
    trainer.resume(run / "ckpt_00000013.pt")  # the newest kept checkpoint
    assert trainer.best == {"step": 6, "metric": "loss", "value": 0.5}
    resumed = trainer.fit()
    assert resumed.step == 20 and torch.equal(flat_params(resumed), flat_params(full))
    assert _pt_names(run) == _pt_names(tmp_path / "full")
    assert load_checkpoint(run / "best.pt")["step"] == 6

    assert read_stats(run, "valid") == read_stats(tmp_path / "full", "valid")
    steps = [r["step"] for r in read_stats(run, "train")]
    assert steps == [r["step"] for r in read_stats(tmp_path / "full", "train")]


def test_keep_checkpoints_0_keeps_all_a_chosen_metric_and_later_files_are_left_alone(
    tmp_path: Path,
) -> None:
    cfg = toy_config(max_steps=8, ckpt_every=2, valid_every=4, keep_checkpoints=0)
    _trainer(cfg, tmp_path, valid_fn=_scripted_valid, best_metric="other").fit()
    steps = [2, 4, 6, 8]
    assert _pt_names(tmp_path) == ["best.pt", *[f"ckpt_{s:08d}.pt" for s in steps], "last.pt"]
    assert load_checkpoint(tmp_path / "best.pt")["best"] == {
        "step": 8,
        "metric": "other",
        "value": -8.0,
    }
    # resuming from step 4 with keep 1: the later files of the run being redone are left alone
    cfg1 = toy_config(max_steps=6, ckpt_every=2, valid_every=4, keep_checkpoints=1)
    trainer = _trainer(cfg1, tmp_path, valid_fn=_scripted_valid)
    trainer.resume(tmp_path / "ckpt_00000004.pt")
    trainer.fit()
    assert _pt_names(tmp_path) == ["best.pt", "ckpt_00000006.pt", "ckpt_00000008.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_keep_checkpoints_is_a_train_setting_and_a_cli_option(tmp_path: Path) -> None:
    from comostream.cli import build_parser, config_from_args

    assert TrainConfig().keep_checkpoints == 3  # the default never fills a disk
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 0"):
        TrainConfig(keep_checkpoints=-1)
    for stage in ("teacher", "distill", "finetune", "content", "vocoder"):
        argv = ["train", stage, "--data", "d", "--out", "o"]
        argv += {"distill": ["--teacher", "t"], "finetune": ["--init", "i", "--speaker", "s"]}.get(
            stage, []
        )
        assert config_from_args(build_parser().parse_args(argv)).train.keep_checkpoints == 3
        args = build_parser().parse_args([*argv, "--keep-checkpoints", "7"])
        assert config_from_args(args).train.keep_checkpoints == 7
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nkeep_checkpoints = 0\n")
    args = build_parser().parse_args(
        ["train", "vocoder", "--data", "d", "--out", "o"]
        + [
            "--config",
            str(toml),
        ]
    )
    assert config_from_args(args).train.keep_checkpoints == 0


# ---------------------------------------------------------------- a full disk


@pytest.mark.parametrize("failure", ["enospc", "short"])
def test_full_disk_while_logging_stops_with_a_clear_error_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    cfg = toy_config(max_steps=12, ckpt_every=4, valid_every=4, log_every=1)
    straight = _trainer(cfg, tmp_path / "straight").fit()
    run = tmp_path / "run"
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if bytes(data).startswith(b'{"split": "train", "step": 6,'):
            written = real_write(fd, bytes(data)[: len(data) // 2])  # the disk fills up mid-row
            if failure == "short":
                return written
            raise ENOSPC
        return real_write(fd, data)

    monkeypatch.setattr(runlog.os, "write", full_disk)
    with pytest.raises(RunWriteError) as info:
        _trainer(cfg, run).fit()
    monkeypatch.undo()
    msg = str(info.value)
    assert str(run / "stats.jsonl") in msg and "could not append a row" in msg
    assert ("No space left on device" if failure == "enospc" else "is the disk full?") in msg
    assert f"Training stopped at step 6; {run / 'last.pt'} (step 4) is intact" in msg
    rows = _whole_rows(run)  # no half line
    assert [(r["split"], r["step"]) for r in rows][-2:] == [("valid", 4), ("train", 5)]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert load_checkpoint(run / "last.pt", kind="toy")["step"] == 4
    # space freed: resuming the last good checkpoint gives the uninterrupted run
    resumed = _resume_and_finish(cfg, run)
    assert torch.equal(flat_params(resumed), flat_params(straight))
    a = [(r["split"], r["step"]) for r in _whole_rows(tmp_path / "straight")]
    assert [(r["split"], r["step"]) for r in _whole_rows(run)] == a


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = toy_config(max_steps=12, ckpt_every=4, valid_every=4, log_every=2)
    straight = _trainer(cfg, tmp_path / "straight").fit()
    run = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj: Any, fh: Any) -> None:
        if obj["step"] == 8:
            fh.write(b"partial")
            raise ENOSPC
        real_save(obj, fh)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        _trainer(cfg, run).fit()
    monkeypatch.undo()
    msg = str(info.value)
    assert str(run / "ckpt_00000008.pt") in msg and "No space left on device" in msg
    assert f"Training stopped at step 8; {run / 'last.pt'} (step 4) is intact" in msg
    assert _pt_names(run) == ["best.pt", "ckpt_00000004.pt", "last.pt"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp file
    assert load_checkpoint(run / "last.pt", kind="toy")["step"] == 4
    assert _whole_rows(run)[-1]["step"] == 8
    resumed = _resume_and_finish(cfg, run)
    assert torch.equal(flat_params(resumed), flat_params(straight))


def test_full_disk_elsewhere_in_the_run_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.json (written at the start) and the stats rewrite of a resume go through a temp file
    (tmp_path / "config.json").write_text("old\n")
    (tmp_path / "stats.jsonl").write_text('{"split": "train", "step": 9}\n')

    def no_space(*args: Any, **kwargs: Any) -> Any:
        raise ENOSPC

    monkeypatch.setattr(runlog.tempfile, "mkstemp", no_space)
    with pytest.raises(RunWriteError, match=r"config\.json: could not write \(No space left"):
        _trainer(toy_config(max_steps=2), tmp_path).fit()
    assert (tmp_path / "config.json").read_text() == "old\n"
    with pytest.raises(RunWriteError, match=r"stats\.jsonl: could not write.*intact"):
        runlog.RunLogger(tmp_path, tensorboard=False, resume_step=2)
    assert (tmp_path / "stats.jsonl").read_text() == '{"split": "train", "step": 9}\n'
    monkeypatch.undo()

    # pointing last.pt at a new checkpoint fails: the old last.pt stays
    a = save_checkpoint(tmp_path / "ckpt_1.pt", {"kind": "x", "step": 1})
    b = save_checkpoint(tmp_path / "ckpt_2.pt", {"kind": "x", "step": 2})
    link_checkpoint(a, tmp_path / "last.pt")
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if str(src).endswith(".link"):
            raise ENOSPC
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointWriteError, match=r"last\.pt: could not point it at ckpt_2"):
        link_checkpoint(b, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert not list(tmp_path.glob(".*.link"))


def test_the_cli_prints_a_write_error_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from comostream.cli import main
    from comostream.training import acoustic

    def full(*args: Any, **kwargs: Any) -> None:
        raise RunWriteError("RUN/stats.jsonl: could not append a row (No space left on device)")

    monkeypatch.setattr(acoustic, "train_teacher", full)
    assert main(["train", "teacher", "--data", str(tmp_path), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("comostream: error: RUN/stats.jsonl: could not append a row")
    assert "Traceback" not in err
