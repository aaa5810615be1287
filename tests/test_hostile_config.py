"""Careless or hostile config files: every bad value is a config error naming the file and the
key (exit status 2, no traceback), and the file is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

import comostream
from comostream.models.config import ConfigError, RealtimeConfig, load_config
from comostream.models.limits import MAX_BLOCK_FRAMES


def test_a_config_block_out_of_bounds_is_a_config_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "big.toml"
    cfg.write_text("[realtime]\nblock_frames = 100000\n")
    assert comostream.main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "big.toml" in err and "block_frames" in err and f"1-{MAX_BLOCK_FRAMES}" in err
    with pytest.raises(ConfigError):
        RealtimeConfig(block_frames=MAX_BLOCK_FRAMES + 1)
    assert RealtimeConfig(block_frames=MAX_BLOCK_FRAMES).block_frames == MAX_BLOCK_FRAMES


def test_an_unknown_f0_backend_is_refused_at_validation_naming_the_valid_ones(
    tmp_path: Path, capsys
) -> None:
    cfg = tmp_path / "f0.toml"
    cfg.write_text('[f0]\nbackend = "nosuch"\n')
    assert comostream.main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "f0.toml" in err and "'nosuch'" in err
    assert "crepe-tiny, crepe-full, harvest, dio, yin" in err
    assert cfg.read_text() == '[f0]\nbackend = "nosuch"\n'


def test_a_directory_as_config_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert comostream.main(["config", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_an_unreadable_config_is_a_clear_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "binary.toml"
    cfg.write_bytes(b"\xff\xfe\x00garbage")
    assert comostream.main(["config", "--config", str(cfg)]) == 2
    assert "binary.toml" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-0.1", "2.5", "nan", "inf"])
def test_a_noise_scale_out_of_bounds_is_a_config_error(value: str, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "noise.toml"
    cfg.write_text(f"[realtime]\nnoise_scale = {value}\n")
    assert comostream.main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "noise.toml" in err and "noise_scale must be in [0, 2]" in err
    assert cfg.read_text() == f"[realtime]\nnoise_scale = {value}\n"
    with pytest.raises(ConfigError, match="noise_scale"):
        RealtimeConfig(noise_scale=float(value))
    assert RealtimeConfig(noise_scale=0).noise_scale == 0.0
