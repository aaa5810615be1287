"""Hostile and careless command lines: extreme transpositions, blocks, ports and timeouts are
refused at argument parsing (before any model loads), each with a clear message and nothing
written. Config files: tests/test_hostile_config.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import comostream
from comostream.cli import build_parser
from comostream.cli.common import config_from_args
from comostream.models.config import RealtimeConfig
from comostream.models.limits import MAX_BLOCK_FRAMES, check_transpose
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.live.console import parse_command

from helpers import IdentityStep, silent_f0


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch) -> None:
    """Every refusal here must come before a model is loaded."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("comostream.realtime.load.load_models", refuse)
    monkeypatch.setattr("comostream.models.shipped.require_model", refuse)


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        comostream.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- transposition: one check

BAD_TRANSPOSE = ["nan", "inf", "-inf", "1000", "48.5", "-49", "x"]
COMMANDS = {
    "convert": ["convert", "IN.wav", "-o", "OUT.wav"],
    "live": ["live"],
    "client": ["client", "IN.wav", "-o", "OUT.wav"],
    "bridge": ["bridge"],
    "bench quality": ["bench", "quality"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("value", BAD_TRANSPOSE)
def test_a_bad_transpose_is_a_usage_error_on_every_command(
    command: str, value: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    err = _usage_error([*COMMANDS[command], f"--transpose={value}"], capsys)
    assert "--transpose" in err and "within +-48 semitones" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("value", [0, 48, -48, 12.5, "-7", "auto"])
def test_sane_transpositions_parse(value, capsys) -> None:
    args = build_parser().parse_args(["bench", "quality", "--transpose", str(value)])
    assert args.transpose == ("auto" if value == "auto" else float(value))
    if value != "auto":
        parsed = build_parser().parse_args(["convert", "a", "-o", "b"])
        assert parsed.transpose == 0.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1000.0, -48.01])
def test_the_engine_and_the_console_use_the_same_check(value: float) -> None:
    with pytest.raises(ValueError, match="within \\+-48"):
        check_transpose(value)
    with pytest.raises(ValueError, match="within \\+-48"):
        StreamingConverter(IdentityStep(1), transpose=value, f0_tracker=silent_f0())
    eng = StreamingConverter(IdentityStep(1), transpose=3.0, f0_tracker=silent_f0())
    with pytest.raises(ValueError, match="within \\+-48"):
        eng.set_transpose(value)
    assert eng.transpose == 3.0  # a refused change changes nothing
    with pytest.raises(ValueError, match="finite|within \\+-48"):
        parse_command(f"t {value}", ["a"])
    assert np.isfinite(eng.push(np.zeros(512, np.float32))).all()


# ---------------------------------------------------------------- block sizes


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_BLOCK_FRAMES + 1), "100000", "two"])
def test_a_block_out_of_bounds_is_a_usage_error(value: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.wav"
    err = _usage_error(["convert", "in.wav", "-o", str(out), f"--block={value}"], capsys)
    assert "--block" in err
    assert not out.exists()


@pytest.mark.parametrize("command", [["client", "in.wav", "-o", "o.wav"], ["bridge"], ["live"]])
def test_a_block_out_of_bounds_is_refused_by_every_command(command: list[str], capsys) -> None:
    err = _usage_error([*command, "--block", "100000"], capsys)
    assert f"1-{MAX_BLOCK_FRAMES} frames" in err


def test_a_sweep_out_of_bounds_is_a_usage_error(capsys) -> None:
    err = _usage_error(["bench", "latency", "--sweep", "1,100000"], capsys)
    assert "--sweep" in err and f"1-{MAX_BLOCK_FRAMES} frames" in err


# ---------------------------------------------------------------- serve: before the model loads


@pytest.mark.parametrize(
    "option,value",
    [
        ("--port", "99999"),
        ("--port", "-1"),
        ("--port", "http"),
        ("--idle-timeout", "nan"),
        ("--idle-timeout", "inf"),
        ("--idle-timeout", "0"),
        ("--idle-timeout", "-5"),
        ("--processes", "0"),
        ("--processes", "many"),
        ("--processes", "-2"),
    ],
)
def test_serve_refuses_bad_ports_and_timeouts_at_parsing(option: str, value: str, capsys) -> None:
    err = _usage_error(["serve", f"{option}={value}"], capsys)
    assert option in err


def test_serve_accepts_the_edges(capsys) -> None:
    args = build_parser().parse_args(["serve", "--port", "0", "--idle-timeout", "0.5"])
    assert args.port == 0 and args.idle_timeout == 0.5
    args = build_parser().parse_args(["serve", "--port", "65535"])
    assert args.port == 65535


@pytest.mark.parametrize("value", ["-1", "2.01", "nan", "loud"])
@pytest.mark.parametrize(
    "command",
    [["convert", "in.wav", "-o", "o.wav"], ["demo"], ["live"], ["serve"], ["bench", "quality"]],
)
def test_a_noise_scale_out_of_bounds_is_a_usage_error(
    command: list[str], value: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    err = _usage_error([*command, f"--noise-scale={value}"], capsys)
    assert "--noise-scale" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_noise_scale_reaches_the_config() -> None:
    args = build_parser().parse_args(["convert", "a", "-o", "b", "--noise-scale", "0"])
    assert config_from_args(args).realtime.noise_scale == 0.0
    args = build_parser().parse_args(["convert", "a", "-o", "b"])
    assert config_from_args(args).realtime.noise_scale == RealtimeConfig().noise_scale == 0.5
