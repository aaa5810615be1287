"""Config: TOML defaults, overrides, unknown keys, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comostream.models.config import (
    DEFAULT_CONFIG_PATH,
    AudioConfig,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
)


def test_defaults_file_matches_dataclass_defaults() -> None:
    assert load_config() == Config()
    assert DEFAULT_CONFIG_PATH.is_file()


def test_default_audio_is_24khz_hop_256_and_100_mels_up_to_12khz() -> None:
    a = load_config().audio
    assert (a.sample_rate, a.n_fft, a.win_length, a.hop_length, a.n_mels) == (
        24000,
        1024,
        1024,
        256,
        100,
    )
    assert (a.fmin, a.fmax) == (0.0, 12000.0)
    assert a.frame_ms == pytest.approx(10.6667, abs=1e-3)


def test_a_user_file_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    cfg_file = tmp_path / "my.toml"
    cfg_file.write_text("[f0]\nbackend = 'dio'\nfmax = 800\n")
    cfg = load_config(cfg_file)
    assert cfg.f0.backend == "dio"
    assert cfg.f0.fmax == 800.0 and isinstance(cfg.f0.fmax, float)
    assert cfg.audio == AudioConfig()


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text("[audio]\nhop_lenght = 128\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file)
    assert "audio.hop_lenght" in str(err.value) and "bad.toml" in str(err.value)


def test_an_unknown_section_is_a_config_error_naming_it(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text("[vocoder]\nx = 1\n")
    with pytest.raises(ConfigError, match="vocoder"):
        load_config(cfg_file)


def test_a_wrong_type_or_an_out_of_range_value_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text("[audio]\nhop_length = 'big'\n")
    with pytest.raises(ConfigError, match="hop_length"):
        load_config(cfg_file)
    cfg_file.write_text("[audio]\nfmax = 50000.0\n")
    with pytest.raises(ConfigError, match="fmax"):
        load_config(cfg_file)


def test_invalid_toml_and_a_missing_file_are_config_errors(tmp_path: Path) -> None:
    cfg_file = tmp_path / "broken.toml"
    cfg_file.write_text("[audio\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(cfg_file)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_a_config_survives_a_json_round_trip_and_is_frozen() -> None:
    cfg = load_config(overrides={"corpus": {"singers": 3}})
    assert cfg.corpus.singers == 3
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert config_to_dict(again)["audio"]["hop_length"] == 256
    with pytest.raises(AttributeError):
        cfg.audio.hop_length = 128  # type: ignore[misc]
