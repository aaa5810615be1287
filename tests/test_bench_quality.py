"""`comostream bench quality`: the metrics on known signals, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import comostream
from comostream.bench.latency import example_signal
from comostream.bench.quality import (
    GROSS_CENTS,
    dtw_mcd_db,
    f0_errors,
    format_quality_table,
    global_variance,
)
from comostream.models.config import CorpusConfig
from comostream.training.corpus import load_corpus
from comostream.training.synth import synthesize_corpus

from helpers import tiny_models, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dtw_mcd_is_zero_for_identical_and_shift_tolerant() -> None:
    x = example_signal(1.5, 24000)
    assert dtw_mcd_db(x, x) == pytest.approx(0.0, abs=1e-6)
    shifted = np.concatenate([np.zeros(2048, np.float32), x])[: len(x)]
    assert dtw_mcd_db(x, shifted) < 1.0  # DTW absorbs the delay
    spectrum = np.fft.rfft(x)
    tilt = np.linspace(1.0, 0.1, spectrum.shape[0])  # darker timbre
    darker = np.fft.irfft(spectrum * tilt, n=len(x)).astype(np.float32)
    assert dtw_mcd_db(x, darker) > 2.0


def test_global_variance_grows_with_change_over_time_and_ignores_silence() -> None:
    t = np.arange(48000) / 24000
    steady = 0.3 * np.sin(2 * np.pi * 440 * t)  # the same spectrum in every frame
    switching = 0.3 * np.sin(2 * np.pi * np.where((t * 5).astype(int) % 2, 440, 1320) * t)
    gv_steady, gv_switching = global_variance(steady), global_variance(switching)
    assert 0 <= gv_steady < 0.2 * gv_switching
    pad = np.zeros(24000)
    padded = np.concatenate([pad, switching, pad])
    assert global_variance(padded) == pytest.approx(gv_switching, rel=0.05)  # silence left out
    assert np.isnan(global_variance(pad))


def test_f0_errors_separate_octave_jumps_from_fine_error() -> None:
    ref = np.full(100, 200.0)
    voiced = np.ones(100, bool)
    voiced[:10] = False  # unvoiced in the source
    out = ref * 2.0 ** (10 / 1200)  # 10 cents sharp everywhere...
    out[50:52] = 400.0  # ...but two octave jumps
    out_voiced = np.ones(100, bool)
    r = f0_errors(ref, voiced, out, out_voiced)
    assert r["vde"] == pytest.approx(0.10)
    assert r["f0_gpe"] == pytest.approx(2 / 90)
    assert r["f0_gross"] == r["f0_octave"] == pytest.approx(2 / 90)  # 10 cents is not gross
    assert r["f0_fine_rmse_cents"] == pytest.approx(10.0)
    assert r["f0_rmse_cents"] == pytest.approx(np.sqrt((88 * 100 + 2 * 1200**2) / 90))
    assert 300 < GROSS_CENTS < 320
    none = f0_errors(ref, np.zeros(100, bool), out, out_voiced)
    assert none["f0_rmse_cents"] is None and none["vde"] == 1.0
    assert f0_errors(ref, voiced, out[:60], out_voiced[:60])["vde"] == pytest.approx(10 / 60)


def test_f0_errors_gross_counts_fifths_and_octaves_apart() -> None:
    ref = np.full(100, 200.0)
    on = np.ones(100, bool)
    out = ref.copy()
    out[:3] = 200.0 * 2.0 ** (60 / 1200)  # 60 cents: gross, not an octave, not 20 % off
    out[3:5] = 300.0  # a fifth: gross and GPE, not an octave
    out[5:6] = 100.0 * 2.0 ** (30 / 1200)  # an octave low, 30 cents sharp: an octave error
    r = f0_errors(ref, on, out, on)
    assert r["f0_gross"] == pytest.approx(6 / 100)
    assert r["f0_octave"] == pytest.approx(1 / 100)
    assert r["f0_gpe"] == pytest.approx(3 / 100)


def test_teacher_sampler_in_offline_steps_equals_one_step_over_all_frames() -> None:
    """The offline engine runs the teacher column in steps on one state: each must see every
    earlier frame (the causal teacher's context), as one step over the whole signal does."""
    from comostream.bench.quality import _TeacherSampler
    from comostream.models.acoustic import build_denoiser
    from comostream.models.samplers import sampling_sigmas

    model, _ = tiny_models(lookahead=0)
    torch.manual_seed(1)
    teacher = build_denoiser(model.cfg, consistency=False).eval()
    sampler = _TeacherSampler(teacher, sampling_sigmas(model.cfg.edm, 3), model.cfg.edm.sigma_max)
    n_mels, cg = teacher.backbone.n_mels, teacher.backbone.cond_channels
    x, cond = torch.randn(1, n_mels, 16) * model.cfg.edm.sigma_max, torch.randn(1, cg, 16)
    with torch.no_grad():
        whole = sampler.step(x, None, cond, sampler.init_state(1))[0]
        state, parts, fresh = sampler.init_state(1), [], []
        for a, b in ((0, 5), (5, 12), (12, 16)):
            parts.append(sampler.step(x[..., a:b], None, cond[..., a:b], state)[0])
            fresh.append(sampler.step(x[..., a:b], None, cond[..., a:b], {})[0])
    assert torch.cat(parts, -1).shape == whole.shape
    torch.testing.assert_close(torch.cat(parts, -1), whole, rtol=1e-4, atol=1e-4)
    assert (torch.cat(fresh, -1) - whole).abs().max() > 1e-3  # without the history it differs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite not installed (apt-get install flite)")
    out = tmp_path_factory.mktemp("qcorpus")
    synthesize_corpus(
        out, CorpusConfig(singers=2, minutes=0.2, seed=3), progress=False, max_lines=2
    )
    return out


def test_quality_bench_runs_and_reports_every_key(corpus: Path, tmp_path: Path, capsys) -> None:
    singers = sorted({u.singer for u in load_corpus(corpus)})
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=singers)
    rc = comostream.main(
        [
            "bench",
            "quality",
            "--checkpoint",
            str(model),
            "--corpus",
            str(corpus),
            "--split",
            "train",
            "--max-conversions",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    for mode in ("onestep", "teacher", "streaming"):
        assert mode in r
    assert r["f0_reference"] == "corpus"  # the synthetic corpus has exact F0
    assert set(r["f0_floor"]) == {
        "f0_rmse_cents",
        "f0_gpe",
        "f0_gross",
        "f0_octave",
        "f0_fine_rmse_cents",
        "vde",
    }
    assert set(r["f0_resynth_floor"]) == set(r["f0_floor"])  # the same figures, resynthesised
    assert r["f0_tracker"] == "yin-track"  # the engine's default tracker measures both
    assert 0 <= r["f0_floor"]["f0_fine_rmse_cents"] < 100  # YIN on clean synthetic singing
    table = format_quality_table(r)
    assert "f0_gpe" in table and "floor of this measurement" in table
    for key in (
        "f0_rmse_cents",
        "f0_gpe",
        "f0_gross",
        "f0_octave",
        "f0_fine_rmse_cents",
        "vde",
        "spk_sim_target",
        "spk_sim_source",
        "spk_win_rate",
        "mcd_db",
        "gv_ratio",
        "dnsmos_ovrl",
        "n_conversions",
    ):
        assert key in r["onestep"]
    assert r["onestep"]["n_conversions"] == r["streaming"]["n_conversions"] == 2
    rows = r["conversions"]  # each conversion of the one-step column, named
    assert len(rows) == 2 and all(x["source"] != x["target"] for x in rows)
    assert {x["source"] for x in rows} | {x["target"] for x in rows} <= set(singers)
    assert np.mean([x["vde"] for x in rows]) == pytest.approx(r["onestep"]["vde"], abs=1e-9)
    assert r["teacher"]["n_conversions"] == 0  # no --distill given
    # the streaming schedule gives the offline output, so the same figures
    assert r["streaming"]["vde"] == pytest.approx(r["onestep"]["vde"], abs=1e-6)
    assert r["onestep"]["mcd_db"] > 0 and r["onestep"]["gv_ratio"] > 0


def test_quality_bench_scores_another_vocoder(corpus: Path, tmp_path: Path, capsys) -> None:
    from comostream.models.vocoder import EXPORT_KIND
    from comostream.training.checkpoint import save_checkpoint

    from helpers import tiny_models

    singers = sorted({u.singer for u in load_corpus(corpus)})
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=singers)
    voc = tiny_models(lookahead=0)[1]
    with torch.no_grad():
        for p in voc.parameters():
            p.add_(0.05)  # another vocoder than the one in the model file
    vfile = save_checkpoint(tmp_path / "v.ckpt", {"kind": EXPORT_KIND, **voc.export_payload()})
    outs = []
    for extra in ([], ["--vocoder", str(vfile)]):
        rc = comostream.main(
            [
                "bench",
                "quality",
                "--checkpoint",
                str(model),
                "--corpus",
                str(corpus),
                "--split",
                "train",
                "--max-conversions",
                "1",
                "--json",
                *extra,
            ]
        )
        assert rc == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["vocoder"] is None and outs[1]["vocoder"] == str(vfile)
    assert outs[0]["onestep"]["mcd_db"] != outs[1]["onestep"]["mcd_db"]


def test_quality_bench_without_a_model_is_a_clear_error(capsys) -> None:
    assert comostream.main(["bench", "quality", "--checkpoint", "/nonexistent.ckpt"]) == 1
    assert "not found" in capsys.readouterr().err


def test_quality_bench_with_no_arguments_uses_the_shipped_model_and_the_bench_corpus(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults are resolved without running the benchmark (the full run is marked slow)."""
    import comostream.bench.corpus
    import comostream.bench.quality
    from comostream.models.shipped import default_model_path

    if default_model_path() is None:
        pytest.skip("this installation ships no model")
    seen: dict[str, object] = {}

    def fake_corpus(cfg) -> Path:
        seen["singers"] = cfg.corpus.singers
        return tmp_path / "bench-corpus"

    def fake_run(checkpoint, data, corpus, **kwargs):
        seen.update(checkpoint=checkpoint, data=data, corpus=corpus, **kwargs)
        return {"fake": True}

    monkeypatch.setattr(comostream.bench.corpus, "default_bench_corpus", fake_corpus)
    monkeypatch.setattr(comostream.bench.corpus, "default_real_corpus", lambda: tmp_path / "r")
    monkeypatch.setattr(comostream.bench.quality, "run_quality_bench", fake_run)
    assert comostream.main(["bench", "quality", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fake": True}
    assert seen["checkpoint"] == default_model_path()
    assert seen["corpus"] == tmp_path / "bench-corpus" and seen["data"] is None
    assert seen["transpose"] == "auto" and seen["split"] == "test"
    assert seen["real"] == tmp_path / "r"  # and the real voices' held-out prompts
    # a corpus or a feature folder given: no benchmark corpus is made
    seen.clear()
    assert comostream.main(["bench", "quality", "--data", "feats", "--json"]) == 0
    assert seen["data"] == Path("feats") and seen["corpus"] is None and "singers" not in seen


def test_quality_bench_refuses_a_corpus_without_the_models_singers(
    corpus: Path, tmp_path: Path, capsys
) -> None:
    model = write_tiny_model(tmp_path / "m.ckpt", lookahead=0, singers=["nobody", "else"])
    argv = ["bench", "quality", "--checkpoint", str(model), "--corpus", str(corpus)]
    assert comostream.main(argv) == 1
    err = capsys.readouterr().err
    assert "is a singer of the model (nobody, else)" in err and "Traceback" not in err


@pytest.mark.slow
def test_quality_bench_runs_with_no_arguments(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`comostream bench quality` on a fresh clone: the benchmark corpus is synthesised (under
    out/, here a temp folder) and the shipped model converts its held-out lines."""
    from comostream.models.shipped import default_model_path

    if default_model_path() is None or shutil.which("flite") is None:
        pytest.skip("needs the shipped model and the TTS voices (make debian-deps)")
    monkeypatch.chdir(tmp_path)
    # --no-real: the real part's packages are not fetched here (test_bench_quality_real.py)
    argv = ["bench", "quality", "--max-conversions", "2", "--no-real", "--json"]
    assert comostream.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["checkpoint"] == str(default_model_path())
    assert Path(r["corpus"]).parent == Path("out/bench-corpus")
    assert r["onestep"]["n_conversions"] == r["streaming"]["n_conversions"] == 2
    assert r["onestep"]["f0_rmse_cents"] is not None and r["onestep"]["mcd_db"] > 0
    from comostream.realtime.load import read_export

    shipped = set(read_export(default_model_path())["speakers"])
    assert len(r["singers"]) >= 2 and set(r["singers"]) <= shipped  # targets: the model's
