"""Conditioner and speaker table: streaming equivalence, F0 features, names, mixes, growth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comostream.models.conditioner import (
    Conditioner,
    SpeakerTable,
    UnknownSpeakerError,
    f0_inputs,
    resolve_speaker,
)
from comostream.models.config import load_config
from comostream.models.f0_post import transpose
from comostream.models.streaming import state_tensors

from helpers import (
    FIXED_CHUNKS,
    chunk_bounds,
    measured_reach,
    random_chunkings,
    run_stream,
    state_signature,
)

CFG = load_config("configs/tiny.toml").model
SINGERS = ["alto", "bass", "tenor"]
T_FRAMES = 31


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conditioner() -> Conditioner:
    torch.manual_seed(0)
    return Conditioner(CFG, SINGERS).eval()


def _inputs(batch: int = 2, frames: int = T_FRAMES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    content = torch.randn(batch, CFG.content_dim, frames, generator=gen)
    f0 = 100.0 + 300.0 * torch.rand(batch, frames, generator=gen)
    voiced = torch.rand(batch, frames, generator=gen) > 0.3
    loudness = -60.0 + 50.0 * torch.rand(batch, frames, generator=gen)
    return [content, f0, voiced, loudness]


@pytest.mark.parametrize("sizes", [*FIXED_CHUNKS, *random_chunkings(T_FRAMES, 2, seed=7)])
def test_chunked_equals_one_shot(conditioner: Conditioner, sizes: int | list[int]) -> None:
    ins = _inputs()
    speaker = ["alto", {"bass": 0.5, "tenor": 0.5}]
    with torch.no_grad():
        ref = conditioner(*ins, speaker)
    assert ref.shape == (2, CFG.cond_channels, T_FRAMES)
    state = conditioner.init_state(2)
    before = state_signature(list(state_tensors(state)))
    y = run_stream(
        lambda *chunk: conditioner.step(*chunk, speaker, state)[0],
        lambda: conditioner.flush(speaker, state, 2),
        ins,
        chunk_bounds(T_FRAMES, sizes),
        conditioner.lookahead_frames,
    )
    assert (y - ref).abs().max() <= 1e-5
    assert state_signature(list(state_tensors(state))) == before


def test_declared_reach_is_measured(conditioner: Conditioner) -> None:
    content, *rest = _inputs(1, 30)
    reach = measured_reach(lambda c: conditioner(c, *rest, "bass"), content, 15)
    assert reach == (conditioner.lookahead_frames, conditioner.left_frames) == (0, 2)


def test_speaker_forms_agree(conditioner: Conditioner) -> None:
    ins = _inputs()
    table = conditioner.speakers
    with torch.no_grad():
        by_name = conditioner(*ins, ["tenor", "alto"])
        by_row = conditioner(*ins, torch.tensor([2, 0]))
        by_emb = conditioner(*ins, table.embed(["tenor", "alto"]))
        other = conditioner(*ins, ["bass", "alto"])
    assert torch.allclose(by_name, by_row) and torch.allclose(by_name, by_emb)
    assert not torch.allclose(by_name[0], other[0], atol=1e-4)


def test_transposed_f0_shifts_the_log_f0_feature(conditioner: Conditioner) -> None:
    content, f0, voiced, loudness = _inputs()
    up = torch.from_numpy(transpose(f0.numpy(), 12.0))  # the caller transposes first
    feats = conditioner.features(content, f0, voiced, loudness)
    feats_up = conditioner.features(content, up, voiced, loudness)
    assert torch.allclose(feats_up[:, -3] - feats[:, -3], torch.ones(2, T_FRAMES), atol=1e-5)
    assert torch.equal(feats_up[:, -2:], feats[:, -2:])


def test_f0_inputs_fill_gaps_and_keep_the_voiced_flag() -> None:
    f0 = np.array([0.0, 100.0, 0.0, 0.0, 800.0, 0.0], dtype=np.float32)
    cont, voiced = f0_inputs(f0)
    assert voiced.tolist() == [False, True, False, False, True, False]
    assert cont.numpy() == pytest.approx([100, 100, 200, 400, 800, 800], rel=1e-4)


def test_unknown_speaker_lists_the_known_ones() -> None:
    table = SpeakerTable(SINGERS, 4)
    assert table.index("bass") == 1
    with pytest.raises(UnknownSpeakerError) as err:
        table.index("soprano")
    assert isinstance(err.value, KeyError)
    assert "soprano" in str(err.value) and all(name in str(err.value) for name in SINGERS)
    with pytest.raises(UnknownSpeakerError):
        table.embed({"alto": 0.5, "nobody": 0.5})


def test_no_singer_means_the_first_and_every_name_of_a_mix_is_checked() -> None:
    table = SpeakerTable(SINGERS, 4)
    assert table.resolve(None) == resolve_speaker(None, SINGERS) == "alto"
    assert table.resolve("bass") == "bass"
    assert table.resolve({"alto": 0.5, "tenor": 0.5}) == {"alto": 0.5, "tenor": 0.5}
    for spec in ("soprano", {"alto": 0.5, "nobody": 0.5}):
        with pytest.raises(UnknownSpeakerError, match="known speakers: alto, bass, tenor"):
            resolve_speaker(spec, SINGERS)


def test_speaker_mix_is_a_weighted_sum() -> None:
    table = SpeakerTable(SINGERS, 4)
    rows = table.embedding.weight.detach()
    with torch.no_grad():
        mix = table.embed({"alto": 0.7, "tenor": 0.3})
        assert torch.allclose(mix[0], 0.7 * rows[0] + 0.3 * rows[2], atol=1e-6)
        assert torch.allclose(table.embed({"alto": 7, "tenor": 3}), mix, atol=1e-6)  # normalised
        assert torch.allclose(table.embed("bass")[0], rows[1])
    with pytest.raises(ValueError):
        table.embed({"alto": -1.0, "bass": 2.0})


def test_add_speaker_keeps_existing_rows() -> None:
    table = SpeakerTable(SINGERS, 4)
    old = table.embedding.weight.detach().clone()
    assert table.add_speaker("soprano") == 3
    assert table.names == (*SINGERS, "soprano")
    new = table.embedding.weight.detach()
    assert new.shape == (4, 4) and torch.equal(new[:3], old)
    assert torch.allclose(new[3], old.mean(dim=0))
    assert table.embedding.weight.requires_grad
    with pytest.raises(ValueError, match="exists"):
        table.add_speaker("alto")
