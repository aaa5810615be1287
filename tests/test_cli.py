"""The command-line face: help lists the commands; options map onto the config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import comostream
from comostream.cli import _load_config as load_cli_config
from comostream.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        comostream.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "prep", "bench", "config"):
        assert command in out


def test_python_dash_m_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "comostream", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "demo" in res.stdout and "bench" in res.stdout


def test_config_option_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert comostream.main(["config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["audio"]["hop_length"] == 256


def test_bad_config_file_is_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[f0]\nbakend = 'dio'\n")
    assert comostream.main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "f0.bakend" in err and "bad.toml" in err


def test_prep_synth_options_are_typed_from_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["prep", "synth", "/tmp/x", "--singers", "3", "--minutes", "0.5"])
    cfg = load_cli_config(args)
    assert cfg.corpus.singers == 3 and cfg.corpus.minutes == 0.5
    assert cfg.corpus.seed == 0
