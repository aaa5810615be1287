"""Typed, frozen configuration: one dataclass per component, loaded from TOML.

Defaults live in ``configs/default.toml`` (mirrored by the dataclass defaults below). A user TOML
file overrides any subset of keys; an unknown section or key is an error that names the key and
the file. Every config round-trips through plain dicts, so it can be dumped as JSON into run
directories and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "AudioConfig",
    "F0Config",
    "CorpusConfig",
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


class ConfigError(ValueError):
    """A configuration file or dict is malformed (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class AudioConfig:
    """Audio and frame parameters shared by every feature (DESIGN.md, "Audio and features")."""

    sample_rate: int = 24000  # Hz, the model rate
    n_fft: int = 1024  # samples
    win_length: int = 1024  # samples
    hop_length: int = 256  # samples per frame (10.67 ms at 24 kHz)
    n_mels: int = 100  # mel bins
    fmin: float = 0.0  # Hz, lowest mel edge
    fmax: float = 12000.0  # Hz, highest mel edge
    log_floor: float = 1e-5  # magnitude floor before the natural log

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ConfigError("audio: sample_rate, hop_length and n_mels must be positive")
        if self.win_length > self.n_fft:
            raise ConfigError("audio: win_length must not exceed n_fft")
        if self.n_fft % 2 or self.hop_length > self.win_length:
            raise ConfigError("audio: n_fft must be even and hop_length <= win_length")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError("audio: need 0 <= fmin < fmax <= sample_rate / 2")
        if self.log_floor <= 0.0:
            raise ConfigError("audio: log_floor must be positive")

    @property
    def frame_ms(self) -> float:
        """Duration of one frame (one hop) in milliseconds."""
        return 1000.0 * self.hop_length / self.sample_rate


@dataclass(frozen=True)
class F0Config:
    """F0 extraction and post-processing."""

    backend: str = "harvest"  # one of models.f0.BACKENDS
    fmin: float = 60.0  # Hz, lowest F0 searched
    fmax: float = 1100.0  # Hz, highest F0 searched
    voicing_threshold: float = 0.5  # CREPE periodicity above which a frame is voiced
    silence_db: float = -60.0  # dBFS frame RMS below which every backend says unvoiced
    median_frames: int = 3  # median smoothing window in frames (odd; 1 disables)
    octave_repair: bool = True  # fix isolated octave jumps
    crepe_batch_frames: int = 512  # frames per CREPE forward pass (memory bound)

    def __post_init__(self) -> None:
        if not 0.0 < self.fmin < self.fmax:
            raise ConfigError("f0: need 0 < fmin < fmax")
        if self.median_frames < 1 or self.median_frames % 2 == 0:
            raise ConfigError("f0: median_frames must be odd and >= 1")
        if not 0.0 <= self.voicing_threshold <= 1.0:
            raise ConfigError("f0: voicing_threshold must be in [0, 1]")


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic multi-singer singing corpus (``comostream prep synth``)."""

    singers: int = 8  # number of singers
    minutes: float = 2.0  # minutes of audio per singer
    seed: int = 0
    valid_fraction: float = 0.1  # fraction of lyric lines (with their melodies) held out for valid
    test_fraction: float = 0.15  # fraction held out for test

    def __post_init__(self) -> None:
        if self.singers < 1:
            raise ConfigError("corpus: singers must be >= 1")
        if self.minutes <= 0:
            raise ConfigError("corpus: minutes must be positive")
        if not (0 <= self.valid_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ConfigError("corpus: fractions must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("corpus: valid_fraction + test_fraction must be < 1")


@dataclass(frozen=True)
class Config:
    """The whole configuration, one section per component."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    f0: F0Config = field(default_factory=F0Config)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)

    def to_json(self) -> str:
        """The config as pretty JSON (for run directories and checkpoints)."""
        return json.dumps(config_to_dict(self), indent=2, sort_keys=True)


T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain JSON-able dicts."""
    return dataclasses.asdict(cfg)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` coerced to ``tp`` (int -> float only) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, source: str) -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"{source}: unknown config key '{key}' (known in [{where or 'top'}]: "
            f"{', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)  # type: ignore[arg-type]
        else:
            try:
                kwargs[name] = _check_type(value, tp, key)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a :class:`Config` from nested dicts (e.g. JSON stored in a checkpoint)."""
    return _build(Config, data, "", source)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the defaults, then ``path`` (a TOML file) over them, then ``overrides``.

    Raises ConfigError naming the file and key for unknown keys, wrong types or bad values.
    """
    merged = _read_toml(DEFAULT_CONFIG_PATH)
    cfg = config_from_dict(merged, str(DEFAULT_CONFIG_PATH))
    if path is not None:
        user = _read_toml(Path(path))
        _deep_update(merged, user)
        cfg = config_from_dict(merged, str(path))
    if overrides:
        _deep_update(merged, overrides)
        cfg = config_from_dict(merged, "command-line options")
    return cfg


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
