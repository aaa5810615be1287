"""The thread policy (one torch intra-op thread per stream unless ``--threads`` says otherwise)
and the warning, said once, when a stream falls behind real time."""

from __future__ import annotations

import argparse
import itertools
import logging
import types
from pathlib import Path

import pytest
import torch

import comostream
from comostream.cli import build_parser
from comostream.cli.common import runtime_threads, use_runtime
from comostream.models.audio import save_wav
from comostream.realtime.pace import RTF_LIMIT, PaceWatch, pace_warning
from comostream.training.checkpoint import save_checkpoint

from helpers import sung

pytestmark = pytest.mark.usefixtures("one_thread")

STREAMING = {
    "live": ["live"],
    "serve": ["serve"],
    "convert --block": ["convert", "IN", "-o", "OUT", "--block", "2"],
    "demo": ["demo"],
    "bench latency": ["bench", "latency"],
}
NOT_STREAMING = {
    "convert": ["convert", "IN", "-o", "OUT"],
    "bench quality": ["bench", "quality"],
    "bench f0": ["bench", "f0"],
    "prep gta": ["prep", "gta", "M.ckpt", "--data", "F", "--out", "O"],
}


@pytest.fixture
def torch_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """What :func:`use_runtime` asks of torch, recorded instead of done (torch's threads are
    left as they were)."""
    calls: dict[str, list[int]] = {"threads": [], "interop": []}
    monkeypatch.setattr(torch, "set_num_threads", calls["threads"].append)
    monkeypatch.setattr(torch, "set_num_interop_threads", calls["interop"].append)
    return calls


@pytest.mark.parametrize("name", STREAMING)
def test_a_streaming_command_runs_on_one_thread_by_default(
    name: str, torch_calls: dict[str, list[int]]
) -> None:
    args = build_parser().parse_args(STREAMING[name])
    assert runtime_threads(args) == 1
    assert use_runtime(args) == "cpu"
    assert torch_calls == {"threads": [1], "interop": [1]}


@pytest.mark.parametrize("name", NOT_STREAMING)
def test_other_commands_keep_torchs_default(name: str, torch_calls: dict[str, list[int]]) -> None:
    args = build_parser().parse_args(NOT_STREAMING[name])
    assert runtime_threads(args) is None
    use_runtime(args)
    assert torch_calls == {"threads": [], "interop": []}


@pytest.mark.parametrize("name", [*STREAMING, *NOT_STREAMING])
def test_threads_wins(name: str, torch_calls: dict[str, list[int]]) -> None:
    argv = {**STREAMING, **NOT_STREAMING}[name]
    args = build_parser().parse_args([*argv, "--threads", "3"])
    use_runtime(args)
    assert torch_calls["threads"] == [3]
    assert torch_calls["interop"] == ([1] if name in STREAMING else [])


def test_interop_threads_already_fixed_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(n: int) -> None:
        raise RuntimeError("cannot set number of interop threads after parallel work started")

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    assert use_runtime(build_parser().parse_args(["live"])) == "cpu"


def test_help_says_the_default_and_why() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub = sub.choices
    for name in ("live", "demo", "convert"):
        threads = next(a for a in sub[name]._actions if "--threads" in a.option_strings)
        assert "1" in threads.help and "thread per" in threads.help, name
    serve = next(a for a in sub["serve"]._actions if "--threads" in a.option_strings)
    assert "default: 1" in serve.help and "whole process" in serve.help
    assert "batched step" in serve.help and "--batch off" in serve.help


# ---------------------------------------------------------------- the warning


def test_no_warning_while_a_stream_keeps_up() -> None:
    assert pace_warning(RTF_LIMIT, 0, 4, 2) == ""
    assert pace_warning(0.2, 0, 1, 2) == ""
    assert pace_warning(None, 0, None, None) == ""


def test_the_warning_names_the_measure_the_cause_and_the_fix() -> None:
    text = pace_warning(1.25, 0, 4, 2)
    assert "RTF 1.25" in text and "4 torch threads per stream" in text
    assert "--threads 1" in text and "OMP_NUM_THREADS=1" in text
    assert "a larger --block than 2" in text and "machine" in text
    one = pace_warning(0.9, 0, 1, 2)
    assert "RTF 0.90" in one and "--threads 1" not in one and "busy" in one
    drops = pace_warning(None, 3, 2, None)
    assert "3 blocks dropped" in drops and "RTF" not in drops and "--block" in drops


def test_the_warning_is_said_once() -> None:
    watch = PaceWatch()
    assert watch.check(0.5, 0, 1, 2) == ""  # keeping up: nothing, and still armed
    assert watch.check(0.9, 0, 1, 2).startswith("not keeping up with real time")
    assert watch.check(2.0, 5, 1, 2) == ""


def test_demo_warns_once_for_the_slowest_conversion(tmp_path: Path) -> None:
    from comostream.realtime.files.demo_convert import ConversionReport, demo_pace_warning

    def report(rtf: float) -> ConversionReport:
        return ConversionReport("ex", "bass", 0, 60.0, rtf, None, None, None, tmp_path / "o.wav")

    assert demo_pace_warning([report(0.3), report(0.5)], 2) == ""
    assert "RTF 1.70" in demo_pace_warning([report(0.3), report(1.7), report(0.9)], 2)
    assert demo_pace_warning([], 2) == ""


def test_a_serve_session_logs_once_when_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    from comostream.realtime.serve.session import DropQueue, Session

    s = Session.__new__(Session)  # only what the pace check reads
    s.id, s.block, s.pace = "s1", 1024, PaceWatch()
    s.engine = types.SimpleNamespace(block=2)
    s.hello = types.SimpleNamespace(sample_rate=48000)
    s.inq, s.outq = DropQueue(4096), DropQueue(4096)
    s.blocks_out, s.compute_s = 10, 0.01  # 0.2 s of audio, fast: not judged yet, nothing lost
    with caplog.at_level(logging.WARNING, logger="comostream.server"):
        s._check_pace()
        assert not caplog.records
        s.inq.dropped_blocks = 2
        s._check_pace()
        s.outq.dropped_blocks = 5
        s._check_pace()
    assert len(caplog.records) == 1
    assert "session s1: not keeping up" in caplog.text and "2 blocks dropped" in caplog.text


def test_a_serve_session_judges_its_rtf_after_two_seconds(caplog: pytest.LogCaptureFixture) -> None:
    from comostream.realtime.serve.session import DropQueue, Session

    s = Session.__new__(Session)
    s.id, s.block, s.pace = "s2", 1024, PaceWatch()
    s.engine = types.SimpleNamespace(block=2)
    s.hello = types.SimpleNamespace(sample_rate=48000)
    s.inq, s.outq = DropQueue(4096), DropQueue(4096)
    s.blocks_out, s.compute_s = 50, 1.0  # 1.07 s of audio at RTF 0.94: too soon to say
    with caplog.at_level(logging.WARNING, logger="comostream.server"):
        s._check_pace()
        assert not caplog.records
        s.blocks_out, s.compute_s = 100, 2.0  # 2.13 s at RTF 0.94
        s._check_pace()
    assert len(caplog.records) == 1 and "RTF 0.94" in caplog.text


# ---------------------------------------------------------------- convert --block, end to end


@pytest.fixture(scope="module")
def model_file(models, tmp_path_factory) -> dict[str, Path]:
    model, vocoder = models
    d = tmp_path_factory.mktemp("pace")
    full = dict(model.export_payload(), vocoder=vocoder.export_payload())
    wav = d / "in.wav"
    save_wav(wav, sung(24000, 0.5), 24000, subtype="FLOAT")
    return {"model": save_checkpoint(d / "model.ckpt", full), "wav": wav}


def slow_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """convert's clock: 100 s pass between its two readings (RTF 200 for 0.5 s of audio)."""
    import comostream.realtime.files.convert as convert

    ticks = itertools.count(0.0, 100.0)
    monkeypatch.setattr(convert, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))


@pytest.mark.parametrize("block", [None, "2"])
def test_convert_warns_once_when_streamed_too_slowly(
    block: str | None,
    model_file: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: None)  # the test process's
    argv = ["convert", str(model_file["wav"]), "-o", str(tmp_path / "o.wav")]
    argv += ["--checkpoint", str(model_file["model"])]
    assert comostream.main([*argv, *(["--block", block] if block else [])]) == 0
    assert "warning" not in capsys.readouterr().err  # real compute of a tiny model: fast
    slow_clock(monkeypatch)
    assert comostream.main([*argv, *(["--block", block] if block else [])]) == 0
    err = capsys.readouterr().err
    if block is None:  # offline: not a stream, nothing to keep up with
        assert "not keeping up" not in err
    else:
        assert err.count("comostream: warning: not keeping up with real time") == 1
        assert "RTF 200.00" in err and "a larger --block than 2" in err
