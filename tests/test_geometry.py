"""The stream's geometry (realtime/geometry.py): one formula for a block's samples at any rate,
read by the engine, the server, the clients and the benches."""

from __future__ import annotations

import pytest

from comostream.models.config import AudioConfig, ConfigError, RealtimeConfig
from comostream.realtime.engine import StreamingConverter
from comostream.realtime.geometry import INPUT_RATES, StreamGeometry, stream_rate
from comostream.realtime.serve.client import block_samples
from comostream.realtime.serve.protocol import ProtocolError, parse_hello

from helpers import IdentityStep, silent_f0


@pytest.mark.parametrize(
    ("rate", "samples"), [(24000, 512), (48000, 1024), (44100, 941), (22050, 470), (16000, 341)]
)
def test_a_block_is_frames_times_hop_at_the_model_rate_and_rounded_at_device_rates(
    rate: int, samples: int
) -> None:
    geometry = StreamGeometry.from_configs(AudioConfig(), RealtimeConfig(block_frames=2))
    assert geometry.block_samples == 512
    assert geometry.samples_per_block(rate) == samples
    assert geometry.samples_per_block() == 512  # the model rate by default


def test_the_geometry_follows_the_audio_config_not_literals() -> None:
    audio = AudioConfig(sample_rate=48000, hop_length=480, fmax=20000.0)
    geometry = StreamGeometry.from_configs(audio, RealtimeConfig(block_frames=4), 3)
    assert geometry.frame_ms == pytest.approx(10.0)
    assert geometry.block_ms == pytest.approx(40.0)
    assert geometry.lookahead_ms == pytest.approx(30.0)
    assert geometry.frame_rate == pytest.approx(100.0)
    assert geometry.samples_per_block(44100) == 1764
    assert geometry.with_block(1).samples_per_block(48000) == 480
    assert geometry.samples_for(1, 8000) == 80


def test_a_block_is_never_empty() -> None:
    geometry = StreamGeometry(24000, 1, 1)
    assert geometry.samples_per_block(8000) == 1


def test_accepted_rates_stream_as_they_are_and_others_at_48k() -> None:
    for rate in INPUT_RATES:
        assert stream_rate(rate) == rate
    assert stream_rate(8000) == stream_rate(96000) == 48000
    hello = {"type": "hello", "version": 1, "channels": 1}
    for rate in INPUT_RATES:  # the server takes exactly the engine's rates
        assert parse_hello({**hello, "sample_rate": rate}).sample_rate == rate
    with pytest.raises(ProtocolError):
        parse_hello({**hello, "sample_rate": 96000})


def test_client_blocks_in_frames_become_samples_at_the_session_rate() -> None:
    assert block_samples(None, 48000) is None
    assert block_samples(2, 48000) == 1024
    assert block_samples(3, 44100) == 1411


@pytest.mark.parametrize(("rate", "block"), [(44100, 3), (48000, 2), (24000, 5)])
def test_the_engine_reads_its_block_from_the_geometry(rate: int, block: int) -> None:
    eng = StreamingConverter(
        IdentityStep(2),
        sample_rate=rate,
        realtime=RealtimeConfig(block_frames=block),
        f0_tracker=silent_f0(1),
    )
    assert eng.geometry.block_frames == block
    assert eng.geometry.lookahead_frames == 3  # the step's 2 + the F0 tracker's 1
    assert eng.block_samples == round(block * 256 * rate / 24000)
    assert eng.block_ms == pytest.approx(1000 * block * 256 / 24000)


def test_the_engine_defaults_to_the_model_rate_of_its_audio_config() -> None:
    assert StreamingConverter(IdentityStep(), f0_tracker=silent_f0()).sample_rate == 24000


def test_a_block_override_keeps_the_other_realtime_settings() -> None:
    rt = RealtimeConfig(block_frames=2, seed=7, ramp_frames=3, window_context_ms=100.0)
    assert rt.with_block(None) is rt
    changed = rt.with_block(5)
    assert changed.block_frames == 5
    assert (changed.seed, changed.ramp_frames, changed.window_context_ms) == (7, 3, 100.0)
    with pytest.raises(ConfigError):
        rt.with_block(0)
