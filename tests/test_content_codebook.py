"""The content codebook: frames as a mix of shared codes (streaming, k-means, fitting a file, the
command, its bad values), and that it takes a singer offset out of the frames."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from comostream.bench.probes import logreg_predict
from comostream.cli import main
from comostream.models.acoustic import AcousticModel
from comostream.models.checkpoint_io import load_checkpoint
from comostream.models.config import (
    Config,
    ConfigError,
    ContentConfig,
    CorpusConfig,
    config_to_dict,
)
from comostream.models.content import ContentEncoder, load_content_encoder
from comostream.models.content_codebook import ContentCodebook
from comostream.training.checkpoint import save_checkpoint
from comostream.training.codebook import fit_codebook, kmeans
from comostream.training.content import train_content

from helpers import chunk_bounds, random_chunkings, run_stream, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ContentConfig(channels=16, layers=2, content_dim=8)


def _fitted(dim: int, codes: torch.Tensor, temperature: float, l2: bool) -> ContentCodebook:
    book = ContentCodebook(dim, codes.shape[0], temperature, l2)
    book.mean.copy_(torch.linspace(-1.0, 1.0, dim))
    book.std.copy_(torch.linspace(0.5, 2.0, dim))
    book.codes.copy_(codes)
    return book


def test_nearest_code_and_soft_mix() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(5, 4, generator=g) * 3.0
    hard = _fitted(4, codes, 0.0, l2=False)
    # frames near code 2 and code 4 (in standardised units), channels first
    u = torch.stack([codes[2] + 0.1, codes[4] - 0.1], 1)[None]  # (1, 4, 2)
    z = u * hard.std[None, :, None] + hard.mean[None, :, None]
    out = hard(z)
    want = torch.stack([codes[2], codes[4]], 1)[None] * hard.std[:, None] + hard.mean[:, None]
    torch.testing.assert_close(out, want)
    soft = _fitted(4, codes, 4.0, l2=False)
    w = soft.weights(z)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2))
    assert (w.argmax(-1) == torch.tensor([[2, 4]])).all() and w.max() < 1.0
    normed = _fitted(4, codes, 4.0, l2=True)(z)
    torch.testing.assert_close(normed.norm(dim=1), torch.full((1, 2), 2.0))  # sqrt(4)


def test_codebook_takes_a_small_singer_offset_out_of_the_frames() -> None:
    """Two singers sing the same 6 sounds, each with an offset of its own: a linear probe tells
    them apart on the frames, not on the frames through a codebook fitted on both."""
    g = torch.Generator().manual_seed(1)
    sounds = torch.randn(6, 8, generator=g) * 4.0
    offset = torch.randn(2, 8, generator=g) * 0.4
    which = torch.randint(6, (2, 600), generator=g)
    frames = torch.cat(
        [sounds[which[s]] + offset[s] + 0.1 * torch.randn(600, 8, generator=g) for s in range(2)]
    )  # (1200, 8)
    labels = torch.arange(2).repeat_interleave(600)
    mean, std = frames.mean(0), frames.std(0)
    book = ContentCodebook(8, 6, 0.0, l2_normalize=False)
    book.mean.copy_(mean)
    book.std.copy_(std)
    book.codes.copy_(kmeans((frames - mean) / std, 6, seed=0))
    coded = book(frames.T[None])[0].T
    train, test = torch.arange(1200) % 2 == 0, torch.arange(1200) % 2 == 1

    def probe(x: torch.Tensor) -> float:
        pred = logreg_predict(x[train], labels[train], x[test], 2)
        return float((pred == labels[test]).float().mean())

    assert probe(frames) > 0.95
    assert probe(coded) < 0.6  # chance 0.5
    # what is sung is kept: each frame's code is its sound's
    assert (torch.cdist(coded, sounds + offset.mean(0)).argmin(1) == which.reshape(-1)).all()


def test_kmeans_is_seeded_and_finds_separate_clusters() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres[:, None] + 0.3 * torch.randn(3, 50, 2, generator=g)).reshape(-1, 2)
    codes = kmeans(x, 3, seed=5)
    assert torch.equal(codes, kmeans(x, 3, seed=5))
    assert torch.cdist(centres, codes).min(1).values.max() < 0.3
    with pytest.raises(ValueError, match="at least one per code"):
        kmeans(x[:2], 3)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("temperature", [0.0, 4.0])
def test_encoder_with_codebook_streams_as_one_shot(temperature: float) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        TINY, lookahead_frames=2, codebook_size=5, codebook_temperature=temperature
    )
    enc = ContentEncoder(cfg).eval()
    assert enc.codebook is not None
    enc.codebook.codes.normal_()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 100, 40, generator=g) * 2.5 - 5.0
    with torch.no_grad():
        ref = enc(x)
        traced = torch.jit.trace(enc, (x,))
        torch.testing.assert_close(traced(x), ref)
    assert (ref.norm(dim=1) - math.sqrt(8)).abs().max() < 1e-4
    for sizes in [1, 3, *random_chunkings(40, 2)]:
        state = enc.init_state(2)
        out = run_stream(
            lambda c, s=state: enc.step(c, s)[0],
            lambda s=state: enc.flush(s, 2),
            [x],
            chunk_bounds(40, sizes),
            enc.lookahead_frames,
        )
        assert (out - ref).abs().max() <= 1e-5


def test_bad_codebook_settings_are_config_errors(tmp_path: Path) -> None:
    for bad in (
        {"codebook_size": -1},
        {"codebook_temperature": -0.5},
        {"codebook_temperature": math.nan},
        {"codebook_temperature": math.inf},
    ):
        with pytest.raises(ConfigError, match="codebook"):
            ContentConfig(**bad)
    cfg = Config(content=dataclasses.replace(TINY, codebook_size=4))
    with pytest.raises(ConfigError, match="train codebook"):
        train_content(cfg, tmp_path / "nowhere", tmp_path / "run", progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comostream.training.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("codebook") / "corpus"
    synthesize_corpus(
        root, CorpusConfig(singers=2, minutes=0.2, seed=3), progress=False, max_lines=3
    )
    return root


def test_fit_a_content_checkpoint_and_a_model_file(corpus: Path, tmp_path: Path) -> None:
    singers = ["flite_slt_alto", "flite_rms_baritone"]
    torch.manual_seed(0)
    cfg = Config(content=TINY)
    enc = ContentEncoder(TINY, cfg.audio).eval()
    src = save_checkpoint(
        tmp_path / "content.pt",
        {
            "kind": "content",
            "config": config_to_dict(cfg),
            "models": {"encoder": enc.state_dict(), "decoder": {}},
            "meta": {"singers": singers, "corpus": str(corpus)},
        },
    )
    out = fit_codebook(src, corpus, tmp_path / "coded.pt", size=6, seed=0, progress=False)
    coded = load_content_encoder(out)
    assert coded.cfg.codebook_size == 6 and coded.codebook is not None
    payload = load_checkpoint(out, kind="content")
    assert payload["meta"]["codebook"]["singers"] == sorted(singers)
    assert payload["meta"]["corpus"] == str(corpus) and "decoder" in payload["models"]
    x = torch.randn(1, cfg.audio.n_mels, 30) * 2.5 - 5.0
    with torch.no_grad():  # the same encoder, its frames now on the codes' mixes
        plain, mixed = enc(x), coded(x)
        assert not torch.allclose(plain, mixed)
        torch.testing.assert_close(coded.codebook(plain), mixed)
    # seeded: the same file again; a refit replaces the codebook
    again = fit_codebook(out, corpus, tmp_path / "again.pt", size=6, seed=0, progress=False)
    torch.testing.assert_close(load_content_encoder(again).codebook.codes, coded.codebook.codes)
    (tmp_path / "link.pt").hardlink_to(src)
    for same in (src, tmp_path / "link.pt"):
        with pytest.raises(ValueError, match="replace the input"):
            fit_codebook(src, corpus, same, size=6, progress=False)

    model_path = write_tiny_model(tmp_path / "tiny.ckpt", singers=singers)
    out = fit_codebook(model_path, corpus, tmp_path / "tiny-coded.ckpt", size=6, progress=False)
    model = AcousticModel.from_checkpoint(out)
    assert model.content_encoder is not None and model.content_encoder.codebook is not None
    assert model.content_cfg.codebook_size == 6
    vocoder = load_checkpoint(out, kind="inference")["vocoder"]  # the rest is kept
    assert vocoder.keys() == load_checkpoint(model_path, kind="inference")["vocoder"].keys()


def test_codebook_command(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_path = write_tiny_model(tmp_path / "tiny.ckpt", singers=["flite_slt_alto"])
    out = tmp_path / "coded.ckpt"
    args = ["train", "codebook", str(model_path), "--data", str(corpus), "-o", str(out)]
    assert main([*args, "--codes", "5", "--temperature", "0"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert AcousticModel.from_checkpoint(out).content_cfg.codebook_temperature == 0.0
    for bad in (["--codes", "0"], ["--temperature", "-1"], ["--max-frames", "x"]):
        with pytest.raises(SystemExit) as exc:
            main([*args, *bad])
        assert exc.value.code == 2
    assert main([*args, "--codes", "100000"]) == 1  # more codes than frames
    assert "at least one per code" in capsys.readouterr().err
    other = ["train", "codebook", str(model_path), "--data", str(corpus), "-o", str(model_path)]
    assert main(other) == 1
    assert "replace the input" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("temperature", [0.0, 4.0])
def test_engines_on_torch_traced_and_onnxruntime_run_the_codebook(temperature: float) -> None:
    """A model whose encoder has a codebook: the traced and ONNX steps give the eager engine's
    samples, and the codebook changes them."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from comostream.models.config import RealtimeConfig
    from comostream.realtime.engine import StreamingConverter, convert_array

    from helpers import sung, tiny_models

    plain, vocoder = tiny_models()
    content_cfg = dataclasses.replace(
        plain.content_cfg, codebook_size=5, codebook_temperature=temperature
    )
    model = AcousticModel(plain.cfg, plain.speakers, content_cfg).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    book = model.content_encoder.codebook
    book.codes.copy_(
        torch.randn(5, content_cfg.content_dim, generator=torch.Generator().manual_seed(4))
    )
    x = sung(48000, 0.5)
    out = {}
    for name, model_, backend, trace in (
        ("plain", plain, "torch", False),
        ("eager", model, "torch", False),
        ("traced", model, "torch", True),
        ("onnx", model, "onnxruntime", None),
    ):
        rt = RealtimeConfig(block_frames=2, backend=backend)
        eng = StreamingConverter.from_models(
            model_, vocoder, sample_rate=48000, realtime=rt, trace=trace
        )
        out[name] = convert_array(eng, x, chunk=eng.block_samples)
    peak = float(np.abs(out["eager"]).max())
    assert peak > 0 and np.abs(out["eager"] - out["plain"]).max() > 1e-3 * peak
    for name in ("traced", "onnx"):
        np.testing.assert_allclose(out[name], out["eager"], rtol=0, atol=1e-4 * peak, err_msg=name)
