"""Users' vocoder weights: comostream.models.ext_vocoder (+ comostream.models.bigvgan,
comostream.models.hifigan).

Every file is written in its ORIGINAL layout (``helpers.original_state``, ``write_original``)
from parameter names and shapes enumerated from the original repositories (NVIDIA/BigVGAN,
jik876/hifi-gan, open-mmlab/Amphion), not from our modules: random weight-norm pairs
(``weight_g``/``weight_v``), Snake parameters and the original anti-aliasing filters.
:func:`reference_forward` restates the original forward functionally over the raw file contents,
so a match checks key names, weight-norm folding, Snake's log scale and where each anti-aliasing
filter is applied.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comostream.models.bigvgan import BigVGANConfig, BigVGANGenerator, UpSample
from comostream.models.checkpoint_io import CheckpointError
from comostream.models.ext_vocoder import (
    AudioMismatchError,
    ExternalVocoder,
    fold_weight_norm,
    load_external_vocoder,
)
from comostream.models.hifigan import HiFiGANConfig, HiFiGANGenerator

from helpers import (
    AMPHION_AUDIO,
    ARCH1,
    NV_AUDIO,
    ORIGINAL_FILTER,
    UPS,
    original_state,
    write_original,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 12
ARCH2 = {
    **UPS,
    "upsample_initial_channel": 16,
    "resblock": "2",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3], [1, 2]],
}
SNAKEBETA = {"activation": "snakebeta", "snake_logscale": True}
V2_SNAKE = {
    "activation": "snake",
    "snake_logscale": False,
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
}

# case -> (expected format, family, generator hyper-parameters, file layout)
CASES = {
    "hifigan-resblock1": ("hifigan", "hifigan", ARCH1, "nvidia"),
    "hifigan-resblock2": ("hifigan", "hifigan", ARCH2, "nvidia"),
    "bigvgan-v1-snakebeta": ("bigvgan-nvidia", "bigvgan", {**ARCH1, **SNAKEBETA}, "nvidia"),
    "bigvgan-v2-snake-notanh": ("bigvgan-nvidia", "bigvgan", {**ARCH2, **V2_SNAKE}, "nvidia"),
    "bigvgan-amphion-pt": ("bigvgan-amphion", "bigvgan", {**ARCH1, **SNAKEBETA}, "amphion-pt"),
    "bigvgan-amphion-accelerate": (
        "bigvgan-amphion",
        "bigvgan",
        {**ARCH2, **SNAKEBETA},
        "amphion-accelerate",
    ),
    "hifigan-amphion-pt": ("hifigan-amphion", "hifigan", ARCH1, "amphion-pt"),
}


def reference_forward(sd: dict[str, Tensor], family: str, arch: dict, mel: Tensor) -> Tensor:
    """The original generator's forward, restated over the raw file: ``(B, M, T) -> (B, N)``."""

    def weight(name: str) -> Tensor:
        return torch._weight_norm(sd[f"{name}.weight_v"], sd[f"{name}.weight_g"], 0)

    def conv(name: str, x: Tensor, dilation: int = 1) -> Tensor:
        w = weight(name)
        pad = (w.shape[-1] - 1) * dilation // 2
        return F.conv1d(x, w, sd.get(f"{name}.bias"), padding=pad, dilation=dilation)

    def act(name: str, x: Tensor) -> Tensor:
        if family == "hifigan":
            return F.leaky_relu(x, 0.1)
        ch = x.shape[1]
        up = sd[f"{name}.upsample.filter"].expand(ch, -1, -1)
        x = F.conv_transpose1d(F.pad(x, (5, 5), mode="replicate"), up, stride=2, groups=ch)
        x = 2 * x[..., 15:-15]
        alpha = sd[f"{name}.act.alpha"].view(1, -1, 1)
        beta = sd.get(f"{name}.act.beta", sd[f"{name}.act.alpha"]).view(1, -1, 1)
        if arch["snake_logscale"]:
            alpha, beta = alpha.exp(), beta.exp()
        x = x + torch.sin(alpha * x) ** 2 / (beta + 1e-9)
        down = sd[f"{name}.downsample.lowpass.filter"].expand(ch, -1, -1)
        return F.conv1d(F.pad(x, (5, 6), mode="replicate"), down, stride=2, groups=ch)

    nk = len(arch["resblock_kernel_sizes"])
    x = conv("conv_pre", mel)
    for i, (u, k) in enumerate(
        zip(arch["upsample_rates"], arch["upsample_kernel_sizes"], strict=True)
    ):
        name = f"ups.{i}.0" if family == "bigvgan" else f"ups.{i}"
        x = F.leaky_relu(x, 0.1) if family == "hifigan" else x
        x = F.conv_transpose1d(x, weight(name), sd[f"{name}.bias"], u, padding=(k - u) // 2)
        outs = []
        for j, dils in enumerate(arch["resblock_dilation_sizes"]):
            p, y = f"resblocks.{i * nk + j}", x
            for m, d in enumerate(dils):
                if arch["resblock"] == "1":
                    t = conv(f"{p}.convs1.{m}", act(f"{p}.activations.{2 * m}", y), d)
                    y = y + conv(f"{p}.convs2.{m}", act(f"{p}.activations.{2 * m + 1}", t))
                else:
                    y = y + conv(f"{p}.convs.{m}", act(f"{p}.activations.{m}", y), d)
            outs.append(y)
        x = sum(outs) / nk
    x = act("activation_post", x) if family == "bigvgan" else F.leaky_relu(x, 0.01)
    x = conv("conv_post", x)[:, 0]
    return torch.tanh(x) if arch.get("use_tanh_at_final", True) else x.clamp(-1, 1)


def write_safetensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """A .safetensors file per the format spec: u64 header size, JSON header, raw data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        raw = t.detach().contiguous().float().numpy().tobytes()
        span = [offset, offset + len(raw)]
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": span}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def mel_input(n_mels: int = 100, seed: int = 1) -> Tensor:
    return torch.randn(2, n_mels, FRAMES, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("case", list(CASES))
def test_original_files_load_and_match_the_reference(tmp_path: Path, case: str) -> None:
    fmt, family, arch, layout = CASES[case]
    sd = original_state(family, arch)
    vocoder = load_external_vocoder(write_original(tmp_path, layout, family, arch, sd))
    assert isinstance(vocoder, ExternalVocoder)
    assert (vocoder.format, vocoder.sample_rate, vocoder.n_mels, vocoder.hop_length) == (
        fmt,
        24000,
        100,
        256,
    )
    assert not vocoder.training and not any(p.requires_grad for p in vocoder.parameters())
    mel = mel_input()
    with torch.no_grad():
        wav, expected = vocoder(mel), reference_forward(sd, family, arch, mel)
    assert wav.shape == (2, FRAMES * 256)
    assert expected.abs().max() > 0.05  # a non-trivial output
    torch.testing.assert_close(wav, expected, atol=2e-5, rtol=1e-4)


def test_training_folder_gives_the_newest_generator(tmp_path: Path) -> None:
    _, family, arch, _ = CASES["hifigan-resblock1"]
    sd = original_state(family, arch)
    write_original(tmp_path, "nvidia", family, arch, sd)  # g_02500000
    (tmp_path / "g_00000100").write_bytes(b"an older, broken file")
    torch.save({"mpd": {}, "msd": {}}, tmp_path / "do_02500000")
    vocoder = load_external_vocoder(tmp_path)
    assert vocoder.source.name == "g_02500000" and vocoder.format == "hifigan"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty: a folder without a vocoder weights file"):
        load_external_vocoder(empty)


def test_weight_norm_names_old_new_and_folded_give_the_same_output(tmp_path: Path) -> None:
    _, family, arch, _ = CASES["bigvgan-v1-snakebeta"]
    sd = original_state(family, arch)
    pairs = {
        ".weight_g": ".parametrizations.weight.original0",
        ".weight_v": ".parametrizations.weight.original1",
    }
    renamed = {}
    for key, value in sd.items():
        old = next((s for s in pairs if key.endswith(s)), None)
        renamed[key[: -len(old)] + pairs[old] if old else key] = value
    variants = {"old": sd, "parametrizations": renamed, "folded": fold_weight_norm(sd, "t")}
    mel, outputs = mel_input(), {}
    for name, state in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        path = write_original(folder, "nvidia", family, arch, state)
        with torch.no_grad():
            outputs[name] = load_external_vocoder(path)(mel)
    torch.testing.assert_close(outputs["parametrizations"], outputs["old"], atol=0, rtol=0)
    torch.testing.assert_close(outputs["folded"], outputs["old"], atol=1e-6, rtol=1e-5)


def test_fold_weight_norm_agrees_with_torch_weight_norm_modules() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 6, 9)
    new = nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(6, 4, 5, stride=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = nn.utils.weight_norm(nn.Conv1d(6, 4, 3))
    with torch.no_grad():
        new.parametrizations.weight.original0.mul_(3.0)
        old.weight_g.mul_(0.25)
        for module, conv in ((new, F.conv_transpose1d), (old, F.conv1d)):
            folded = fold_weight_norm(module.state_dict(), "t")
            assert set(folded) == {"weight", "bias"}
            stride = module.stride[0]
            got = conv(x, folded["weight"], folded["bias"], stride=stride)
            torch.testing.assert_close(got, module(x), atol=1e-6, rtol=1e-5)


def test_antialias_filters_are_read_from_the_file(tmp_path: Path) -> None:
    _, family, arch, _ = CASES["bigvgan-v1-snakebeta"]
    sd = original_state(family, arch)
    g = torch.Generator().manual_seed(5)
    corrupted = dict(sd)
    for key in sd:  # a different low-pass in every filter slot: placement must match too
        if key.endswith(".filter"):
            corrupted[key] = ORIGINAL_FILTER.view(1, 1, 12) + 0.05 * torch.randn(
                1, 1, 12, generator=g
            )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean = load_external_vocoder(write_original(tmp_path / "a", "nvidia", family, arch, sd))
    dirty = load_external_vocoder(write_original(tmp_path / "b", "nvidia", family, arch, corrupted))
    mel = mel_input()
    with torch.no_grad():
        a, b = clean(mel), dirty(mel)
        expected = reference_forward(corrupted, family, arch, mel)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(b, expected, atol=2e-5, rtol=1e-4)


def test_our_filters_equal_the_original_kaiser_sinc() -> None:
    up = UpSample()
    torch.testing.assert_close(up.filter.flatten(), ORIGINAL_FILTER, atol=1e-7, rtol=0)


def test_safetensors_checkpoint_folder(tmp_path: Path) -> None:
    _, family, arch, _ = CASES["bigvgan-amphion-accelerate"]
    sd = original_state(family, arch)
    folder = write_original(tmp_path, "amphion-accelerate", family, arch, sd)
    (folder / "pytorch_model.bin").unlink()
    write_safetensors(folder / "model.safetensors", sd)
    vocoder = load_external_vocoder(folder)
    assert vocoder.format == "bigvgan-amphion" and vocoder.source.name == "model.safetensors"
    mel = mel_input()
    with torch.no_grad():
        torch.testing.assert_close(
            vocoder(mel), reference_forward(sd, family, arch, mel), atol=2e-5, rtol=1e-4
        )
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors"):
        load_external_vocoder(folder)


def test_22khz_80band_hifigan_is_refused_unless_inspecting(tmp_path: Path) -> None:
    audio = {
        "num_mels": 80,
        "sampling_rate": 22050,
        "hop_size": 256,
        "n_fft": 1024,
        "win_size": 1024,
        "fmin": 0,
        "fmax": 8000,
    }
    sd = original_state("hifigan", ARCH1, n_mels=80)
    path = write_original(tmp_path, "nvidia", "hifigan", ARCH1, sd, audio)
    with pytest.raises(AudioMismatchError) as info:
        load_external_vocoder(path)
    text = str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)
    for part in (
        "config.json",
        "sample rate 22050 Hz (ours 24000 Hz)",
        "mel bands 80 (ours 100)",
        "fmax 8000 Hz (ours 12000 Hz)",
        "22.05 kHz / 80-band vocoder cannot drive the 24 kHz / 100-band model",
        "strict_audio=False",
    ):
        assert part in text
    assert "n_fft" not in text.split("differs:")[1]  # only what differs is listed
    vocoder = load_external_vocoder(path, strict_audio=False)
    assert (vocoder.sample_rate, vocoder.n_mels) == (22050, 80)
    assert len(vocoder.audio_differences) == 3
    with torch.no_grad():
        assert vocoder(mel_input(80)).shape == (2, FRAMES * 256)
    with pytest.raises(ValueError, match=r"expected a mel \(B, 80, T\)"):
        vocoder(mel_input(100))


def test_amphion_min_max_normalised_mels_are_a_mismatch(tmp_path: Path) -> None:
    _, family, arch, layout = CASES["bigvgan-amphion-pt"]
    audio = {**AMPHION_AUDIO, "mel_min_max_norm": True}
    path = write_original(tmp_path, layout, family, arch, original_state(family, arch), audio)
    with pytest.raises(AudioMismatchError, match="min-max normalised"):
        load_external_vocoder(path)


def test_wrong_files_are_clear_errors(tmp_path: Path) -> None:
    _, family, arch, _ = CASES["bigvgan-v1-snakebeta"]
    sd = original_state(family, arch)
    good = write_original(tmp_path, "nvidia", family, arch, sd)
    config = tmp_path / "config.json"
    cases: list[tuple[Any, str]] = []

    random_dict = tmp_path / "random.pt"
    torch.save({"foo": 1, "bar": torch.zeros(3)}, random_dict)
    cases.append((random_dict, r"random\.pt: no HiFi-GAN/BigVGAN generator weights.*foo, bar"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    cases.append((truncated, r"truncated\.pt: unreadable \(truncated or corrupt file\?\)"))

    missing = tmp_path / "missing.pt"
    torch.save({"generator": {k: v for k, v in sd.items() if k != "conv_post.bias"}}, missing)
    cases.append(
        (missing, r"missing\.pt: bigvgan-nvidia generator.*missing keys \[conv_post\.bias")
    )

    half_pair = tmp_path / "half.pt"
    torch.save({"generator": {k: v for k, v in sd.items() if k != "ups.1.0.weight_g"}}, half_pair)
    cases.append((half_pair, r"ups\.1\.0\.weight_v has no matching ups\.1\.0\.weight_g"))

    pickled = tmp_path / "pickled.pt"
    torch.save({"generator": sd, "h": Path("x")}, pickled)
    cases.append((pickled, r"pickled\.pt: refusing to load"))

    cases.append((tmp_path / "nowhere.pt", r"nowhere\.pt: vocoder checkpoint not found"))
    for path, pattern in cases:
        with pytest.raises(CheckpointError, match=pattern):
            load_external_vocoder(path, config=config)

    wide = tmp_path / "wide.json"  # a config of another shape than the weights
    wide.write_text(json.dumps({**arch, **NV_AUDIO, "upsample_initial_channel": 64}))
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \[.*conv_pre\.bias: checkpoint \(32,\) vs model \(64,\)",
    ):
        load_external_vocoder(good, config=wide)
    hifi_cfg = tmp_path / "hifi.json"
    hifi_cfg.write_text(json.dumps({**ARCH1, **NV_AUDIO}))
    with pytest.raises(CheckpointError, match=r"hifi\.json: a HiFi-GAN .*weights are a BigVGAN"):
        load_external_vocoder(good, config=hifi_cfg)
    bad_hop = tmp_path / "hop.json"
    bad_hop.write_text(json.dumps({**arch, **NV_AUDIO, "upsample_rates": [4, 4, 4, 2]}))
    with pytest.raises(CheckpointError, match=r"hop size 256 but .* multiply to 128"):
        load_external_vocoder(good, config=bad_hop)
    no_key = tmp_path / "nokey.json"
    no_key.write_text(
        json.dumps({k: v for k, v in {**arch, **NV_AUDIO}.items() if k != "resblock"})
    )
    with pytest.raises(CheckpointError, match=r"nokey\.json: bad generator config: .*'resblock'"):
        load_external_vocoder(good, config=no_key)
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"resblock": ')
    with pytest.raises(CheckpointError, match=r"broken\.json: not a readable JSON config"):
        load_external_vocoder(good, config=not_json)
    config.unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json or args\.json beside it"):
        load_external_vocoder(good)


def test_receptive_field_bounds_the_measured_dependence() -> None:
    """Perturb one mel frame (float64, exact comparison): every output sample that changes lies
    within ``receptive_field_frames`` of it, and for HiFi-GAN the bound is tight."""
    torch.manual_seed(0)
    mel_cfg = {"num_mels": 20}
    models = {
        "hifigan": HiFiGANGenerator(HiFiGANConfig.from_dict({**ARCH1, **mel_cfg})),
        "bigvgan": BigVGANGenerator(BigVGANConfig.from_dict({**ARCH2, **SNAKEBETA, **mel_cfg})),
    }
    t0, frames = 40, 80
    for name, gen in models.items():
        gen = gen.double().eval()
        mel = torch.randn(1, 20, frames, dtype=torch.float64)
        with torch.no_grad():
            before = gen(mel)[0, 0]
            mel[:, :, t0] += 1.0
            changed = torch.nonzero(gen(mel)[0, 0] != before).flatten()
        later_outputs_reach = (changed.max().item() + 1) / 256 - t0  # their left context
        earlier_outputs_reach = t0 - changed.min().item() / 256  # their right context
        left, right = gen.context_frames()
        assert later_outputs_reach <= left and earlier_outputs_reach <= right, name
        bound = math.ceil(max(left, right))
        assert bound < 40, name  # the probe sat far enough from the edges
        if name == "hifigan":
            assert left - later_outputs_reach < 1.0 and right - earlier_outputs_reach < 1.0
