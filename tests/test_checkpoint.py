"""Checkpoint writing (atomic, weights_only-safe) and validated loading."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from comostream.models.checkpoint_io import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_state_strict,
)
from comostream.training.checkpoint import (
    CheckpointWriteError,
    get_rng_state,
    link_checkpoint,
    save_checkpoint,
    set_rng_state,
)


def _payload(kind: str = "teacher") -> dict:
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "kind": kind,
        "step": 7,
        "config": {"train": {"lr": 1e-3, "amp": True}},
        "models": {"net": net.state_dict()},
        "optimizers": {"main": opt.state_dict()},
        "rng": [get_rng_state()],
    }


def test_round_trip_is_atomic_and_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "a.pt", _payload())
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.pt"]  # no temp file left
    ck = load_checkpoint(path, kind="teacher")
    assert ck["format"] == FORMAT_VERSION and ck["step"] == 7 and ck["config"]["train"]["amp"]
    assert set(ck["models"]["net"]) == {"weight", "bias"}
    torch.load(path, weights_only=True)  # plain data only
    assert load_checkpoint(path, kind=("distill", "teacher"))["kind"] == "teacher"


def test_unsafe_payloads_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"payload\['meta'\]\['arr'\] is a ndarray"):
        save_checkpoint(tmp_path / "a.pt", {"kind": "x", "meta": {"arr": np.zeros(2)}})
    with pytest.raises(TypeError, match="'kind'"):
        save_checkpoint(tmp_path / "a.pt", {"step": 1})
    assert not any(tmp_path.iterdir())


def test_rng_states_survive_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)  # noqa: NPY002
    save_checkpoint(tmp_path / "r.pt", {"kind": "x", "rng": get_rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(9), np.random.seed(9), random.seed(9)  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "unreadable checkpoint"),
        ("garbage", "unreadable checkpoint"),
        ("empty", "unreadable checkpoint"),
        ("pickle", "refusing to load"),
        ("list", "not a comostream checkpoint"),
        ("version", "format version 99; this comostream reads version 1"),
        ("kind", "a 'teacher' checkpoint, expected 'distill'"),
        ("missing", "checkpoint not found"),
    ],
)
def test_bad_files_raise_checkpoint_error_naming_the_file(
    tmp_path: Path, damage: str, message: str
) -> None:
    path = tmp_path / "bad.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 40)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":
        torch.save({"kind": "teacher", "format": 1, "obj": nn.Linear(2, 2)}, path)
    elif damage == "list":
        torch.save([1, 2], path)
    elif damage == "version":
        torch.save({"kind": "teacher", "format": 99}, path)
    elif damage == "missing":
        path.unlink()
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path, kind="distill")
    assert str(path) in str(info.value)


def test_strict_state_lists_missing_unexpected_and_mismatched_keys() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = dict(net.state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(net, state, "ck.pt: model 'net'")
    msg = str(info.value)
    assert msg.startswith("ck.pt: model 'net': state does not match Sequential")
    assert "missing keys [1.bias]" in msg and "unexpected keys [2.weight]" in msg
    assert "0.weight: checkpoint (5, 3) vs model (4, 3)" in msg
    good = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    load_state_strict(net, good.state_dict(), "x")
    assert torch.equal(net[0].weight, good[0].weight)


def test_full_disk_leaves_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload())
    before = path.read_bytes()

    def full_disk(obj: object, fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*intact") as info:
        save_checkpoint(path, _payload())
    assert str(path) in str(info.value) and isinstance(info.value, CheckpointError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_link_checkpoint_replaces_last(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "ckpt_1.pt", {"kind": "x", "step": 1})
    b = save_checkpoint(tmp_path / "ckpt_2.pt", {"kind": "x", "step": 2})
    link_checkpoint(a, tmp_path / "last.pt")
    link_checkpoint(b, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.pt", "ckpt_2.pt", "last.pt"]
