"""Users' content encoders: fairseq / torchaudio / Hugging Face HuBERT and Whisper checkpoints
written in their original layouts (tiny sizes), checked against independent references."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import math
import re
import sys
import types
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from comostream.models.checkpoint_io import CheckpointError
from comostream.models.config import Config, FeaturesConfig
from comostream.models.ext_content import align_frames, load_content_model, plain, read_payload
from comostream.models.hubert import HubertContent, HubertSpec
from comostream.training.corpus import Utterance
from comostream.training.features import EXTRACTORS

pytestmark = pytest.mark.usefixtures("one_thread")

CONV = [(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2
CONV_TEXT = "[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2"
EMBED, HEADS = 32, 2  # 2 heads: the shape convention (64 channels per head) would say 1

# torchaudio name -> fairseq name (fairseq's HubertModel: ConvFeatureExtractionModel blocks are
# Sequential(conv, dropout, norm, gelu); TransformerEncoder layers use self_attn / fc1 / fc2).
TA_TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0",
        "encoder.pos_conv.0.weight_g",
    ),
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1",
        "encoder.pos_conv.0.weight_v",
    ),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (
        r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.",
        r"encoder.layers.\1.self_attn_layer_norm.",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.",
        r"encoder.layers.\1.fc1.",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.",
        r"encoder.layers.\1.fc2.",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.",
        r"encoder.layers.\1.final_layer_norm.",
    ),
]
TA_TO_FAIRSEQ_LN = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.",
        r"feature_extractor.conv_layers.\1.2.1.",
    )
] + TA_TO_FAIRSEQ
# torchaudio name -> Hugging Face HubertModel name
TA_TO_HF = [
    (r"encoder\.feature_projection\.", "feature_projection."),
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0",
        "encoder.pos_conv_embed.conv.weight_g",
    ),
    (
        r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1",
        "encoder.pos_conv_embed.conv.weight_v",
    ),
    (r"encoder\.transformer\.", "encoder."),
    (r"feature_extractor\.", "feature_extractor."),
]


def _rename(sd: dict, table: list, prefix: str = "") -> dict:
    out = {}
    for key, value in sd.items():
        for pattern, target in table:
            if re.match(pattern, key):
                out[prefix + re.sub(pattern, target, key, count=1)] = value.clone()
                break
        else:
            raise AssertionError(f"test table misses {key}")
    return out


def _ta_model(
    mode: str = "group_norm",
    embed: int = EMBED,
    heads: int = HEADS,
    pre_ln: bool = False,
    seed: int = 0,
) -> torchaudio.models.Wav2Vec2Model:
    """A tiny torchaudio HuBERT (standard 7-block conv stack, 8 channels) with random weights."""
    torch.manual_seed(seed)
    m = torchaudio.models.wav2vec2_model(
        mode, CONV, False, embed, 0.0, 16, 4, 2, heads, 0.0, 2 * embed, 0.0, 0.0, pre_ln, 0.0, None
    )
    with torch.no_grad():
        for name, p in m.named_parameters():
            gain = name.endswith("norm.weight")
            p.copy_((1.0 if gain else 0.0) + (0.2 if gain else 0.3) * torch.randn_like(p))
    return m.eval()


def _fairseq_payload(ta: torch.nn.Module, **extra_args: object) -> dict:
    fs = _rename(ta.state_dict(), TA_TO_FAIRSEQ)
    fs.update(mask_emb=torch.randn(EMBED), label_embs_concat=torch.randn(5, 16))
    fs.update({"final_proj.weight": torch.randn(16, EMBED), "final_proj.bias": torch.randn(16)})
    args = argparse.Namespace(
        conv_feature_layers=CONV_TEXT,
        encoder_embed_dim=EMBED,
        encoder_layers=2,
        encoder_attention_heads=HEADS,
        conv_pos=16,
        encoder_ffn_embed_dim=2 * EMBED,
        layer_norm_first=False,
        extractor_mode="default",
        normalize=False,
        final_dim=16,
        **extra_args,
    )
    return {
        "args": args,
        "cfg": None,
        "model": fs,
        "optimizer_history": [{"num_updates": 3}],
        "extra_state": {"epoch": 1},
    }


def _fairseq_forward(fs: dict, wav: torch.Tensor, layer: int) -> torch.Tensor:
    """fairseq HuBERT semantics written out from fairseq-named tensors: (B, M) -> (B, J, C)."""
    x = wav[:, None]
    for i, (_, _, stride) in enumerate(CONV):
        x = F.conv1d(x, fs[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(
                x,
                8,
                fs["feature_extractor.conv_layers.0.2.weight"],
                fs["feature_extractor.conv_layers.0.2.bias"],
            )
        x = F.gelu(x)
    x = F.layer_norm(x.transpose(1, 2), (8,), fs["layer_norm.weight"], fs["layer_norm.bias"])
    x = F.linear(x, fs["post_extract_proj.weight"], fs["post_extract_proj.bias"])
    g, v = fs["encoder.pos_conv.0.weight_g"], fs["encoder.pos_conv.0.weight_v"]
    w = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm over all dims but 2
    pos = F.conv1d(x.transpose(1, 2), w, fs["encoder.pos_conv.0.bias"], padding=8, groups=4)
    x = x + F.gelu(pos[..., :-1]).transpose(1, 2)  # SamePad drops one frame (even kernel)
    x = F.layer_norm(x, (EMBED,), fs["encoder.layer_norm.weight"], fs["encoder.layer_norm.bias"])
    b, t, c = x.shape
    for n in range(layer):
        p = f"encoder.layers.{n}."

        def lin(name: str, h: torch.Tensor, p: str = p) -> torch.Tensor:
            return F.linear(h, fs[p + name + ".weight"], fs[p + name + ".bias"])

        q, k, v = (
            lin(f"self_attn.{z}_proj", x).view(b, t, HEADS, -1).transpose(1, 2) for z in "qkv"
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // HEADS), dim=-1) @ v
        x = x + lin("self_attn.out_proj", att.transpose(1, 2).reshape(b, t, c))
        x = F.layer_norm(
            x, (c,), fs[p + "self_attn_layer_norm.weight"], fs[p + "self_attn_layer_norm.bias"]
        )
        x = x + lin("fc2", F.gelu(lin("fc1", x)))
        x = F.layer_norm(
            x, (c,), fs[p + "final_layer_norm.weight"], fs[p + "final_layer_norm.bias"]
        )
    return x


def _pad16(wav16: torch.Tensor) -> torch.Tensor:
    return F.pad(wav16, (200, 520))  # half a window in front: frame j centred at 320 j


def _aligned(frames16: torch.Tensor, n24: int, first: float = 0.0) -> np.ndarray:
    """(B, J, D) frames centred at 16 kHz samples first + 320 j -> (B, D, N // 256 + 1) by
    linear interpolation at our centres 256 t (24 kHz) = 512 t / 3 (16 kHz)."""
    f = frames16.detach().numpy()
    centres = first + 320.0 * np.arange(f.shape[1])
    targets = np.arange(n24 // 256 + 1) * 512.0 / 3.0
    return np.stack(
        [
            [np.interp(targets, centres, f[b, :, d]) for d in range(f.shape[2])]
            for b in range(f.shape[0])
        ]
    )


def _audio(n: int = 9000, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return 0.3 * torch.randn(batch, n, generator=torch.Generator().manual_seed(seed))


def _wav16(audio: torch.Tensor) -> torch.Tensor:
    return torchaudio.functional.resample(audio, 24000, 16000)


# ------------------------------------------------------------------------------------ HuBERT


def test_fairseq_mapping_matches_fairseq_semantics(tmp_path: Path) -> None:
    ta = _ta_model()
    payload = _fairseq_payload(ta)
    torch.save(payload, tmp_path / "hubert.pt")
    audio = _audio()
    fs = payload["model"]
    for layer in (1, 2):
        ext = load_content_model(tmp_path / "hubert.pt", layer=layer)
        assert ext.kind == "fairseq" and ext.encoder.spec.num_heads == HEADS  # read from args
        with torch.no_grad():
            ref16 = _fairseq_forward(fs, _pad16(_wav16(audio)), layer)
            torch.testing.assert_close(ext.encoder(_wav16(audio)), ref16, atol=2e-5, rtol=1e-4)
            out = ext(audio)
        assert out.shape == (2, EMBED, audio.shape[1] // 256 + 1)
        np.testing.assert_allclose(out.numpy(), _aligned(ref16, audio.shape[1]), atol=3e-5)
    # parameters land where torchaudio keeps them: attention, ffn, conv, effective pos_conv
    got = ext.encoder.model
    layer1 = got.encoder.transformer.layers[1]
    pairs = [
        (layer1.attention.k_proj.weight, "encoder.layers.1.self_attn.k_proj.weight"),
        (layer1.feed_forward.output_dense.bias, "encoder.layers.1.fc2.bias"),
        (
            got.feature_extractor.conv_layers[3].conv.weight,
            "feature_extractor.conv_layers.3.0.weight",
        ),
    ]
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.detach(), fs[theirs])
    g, v = fs["encoder.pos_conv.0.weight_g"], fs["encoder.pos_conv.0.weight_v"]
    torch.testing.assert_close(
        got.encoder.transformer.pos_conv_embed.conv.weight.detach(),
        g * v / v.norm(dim=(0, 1), keepdim=True),
    )


def test_fairseq_projection_layers_and_contentvec_extras(tmp_path: Path) -> None:
    ta = _ta_model()
    payload = _fairseq_payload(ta)
    fs = payload["model"]
    for key in (
        "self_attn_layer_norm.weight_ln.weight",
        "final_layer_norm.bias_ln.weight",
        "fc1.weight",
    ):  # a ContentVec speaker-conditioned layer 2 (dropped)
        fs[f"encoder.layers.2.{key}"] = torch.randn(EMBED, EMBED)
    fs.update(
        {
            "encoder.cond_layer_norm.weight_ln.weight": torch.randn(EMBED, 256),
            "layer_proj.weight": torch.randn(16, EMBED),
        }
    )
    torch.save(payload, tmp_path / "contentvec.pt")
    audio = _audio(5000)
    l1 = load_content_model(tmp_path / "contentvec.pt", layer=1)
    l2 = load_content_model(tmp_path / "contentvec.pt")  # default: final output = layer 2
    proj = load_content_model(tmp_path / "contentvec.pt", layer=1, projection=True)
    with torch.no_grad():
        a, b, c = l1(audio), l2(audio), proj(audio)
    assert l2.encoder.spec.num_layers == 2 and (a - b).abs().mean() > 0.1  # the layer matters
    assert c.shape == (2, 16, audio.shape[1] // 256 + 1) and proj.dim == 16
    expected = (
        torch.einsum("od,bdt->bot", fs["final_proj.weight"], a) + fs["final_proj.bias"][:, None]
    )
    torch.testing.assert_close(c, expected, atol=2e-5, rtol=1e-4)


def test_fairseq_pre_ln_cfg_dict_normalize_and_final_norm(tmp_path: Path) -> None:
    ta = _ta_model(mode="layer_norm", pre_ln=True, seed=3)
    fs = _rename(ta.state_dict(), TA_TO_FAIRSEQ_LN)
    model_cfg = {
        "conv_feature_layers": CONV_TEXT,
        "encoder_attention_heads": HEADS,
        "layer_norm_first": True,
        "extractor_mode": "layer_norm",
    }
    torch.save(
        {"args": None, "cfg": {"model": model_cfg, "task": {"normalize": True}}, "model": fs},
        tmp_path / "large.pt",
    )
    audio = _audio(6000)
    ext2 = load_content_model(tmp_path / "large.pt", layer=2)
    ext0 = load_content_model(tmp_path / "large.pt")
    wav16 = _wav16(audio)
    with torch.no_grad():
        ref = ta.extract_features(_pad16(F.layer_norm(wav16, wav16.shape[-1:])))[0][1]
        torch.testing.assert_close(ext2.encoder(wav16), ref, atol=2e-5, rtol=1e-4)
        final = F.layer_norm(
            ref, (EMBED,), fs["encoder.layer_norm.weight"], fs["encoder.layer_norm.bias"]
        )
        torch.testing.assert_close(ext0.encoder(wav16), final, atol=2e-5, rtol=1e-4)


def test_a_torchaudio_state_dict_matches_torchaudios_features(tmp_path: Path) -> None:
    ta = _ta_model(embed=128, heads=2)  # no config: heads by convention (128 / 64)
    torch.save(ta.state_dict(), tmp_path / "hubert_ta.pt")
    audio = _audio(7000, batch=1)
    ext = load_content_model(tmp_path / "hubert_ta.pt", layer=1)
    with torch.no_grad():
        ref = ta.extract_features(_pad16(_wav16(audio)))[0][0]
        out = ext(audio)
    assert ext.kind == "torchaudio" and out.shape == (1, 128, audio.shape[1] // 256 + 1)
    np.testing.assert_allclose(out.numpy(), _aligned(ref, audio.shape[1]), atol=3e-5)
    with pytest.raises(CheckpointError, match="no final_proj"):
        load_content_model(tmp_path / "hubert_ta.pt", projection=True)


def _write_safetensors(path: Path, tensors: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().numpy().astype(np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


@pytest.mark.parametrize("container", ["bin", "safetensors"])
def test_a_hugging_face_hubert_folder_matches_torchaudios_features(
    tmp_path: Path, container: str
) -> None:
    ta = _ta_model(seed=5)
    hf = _rename(ta.state_dict(), TA_TO_HF, prefix="hubert.")
    hf["hubert.masked_spec_embed"] = torch.randn(EMBED)
    hf.update({"final_proj.weight": torch.randn(16, EMBED), "final_proj.bias": torch.randn(16)})
    folder = tmp_path / "content-vec"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "hubert",
                "num_attention_heads": HEADS,
                "conv_dim": [8] * 7,
                "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
                "conv_stride": [5, 2, 2, 2, 2, 2, 2],
                "do_stable_layer_norm": False,
            }
        )
    )
    if container == "bin":
        torch.save(hf, folder / "pytorch_model.bin")
    else:
        _write_safetensors(folder / "model.safetensors", hf)
    audio = _audio(8000, batch=1)
    ext = load_content_model(folder, layer=2)
    with torch.no_grad():
        ref = ta.extract_features(_pad16(_wav16(audio)))[0][1]
        out = ext(audio)
    assert ext.kind == "hf" and ext.encoder.spec.num_heads == HEADS
    np.testing.assert_allclose(out.numpy(), _aligned(ref, audio.shape[1]), atol=3e-5)


def test_hubert_frame_centres_by_impulse() -> None:
    ta = _ta_model(mode="layer_norm", seed=7)  # per-frame norms: an impulse stays local
    spec = HubertSpec(
        tuple(CONV),
        "layer_norm",
        False,
        EMBED,
        2,
        HEADS,
        2 * EMBED,
        16,
        4,
        False,
        normalize_waveform=False,
    )
    enc = HubertContent(ta, spec, 1)
    wav = torch.zeros(1, 4000)
    base = enc.conv_features(wav)
    for s in (1600, 1799, 1800, 2345):
        hit = wav.clone()
        hit[0, s] = 1.0
        changed = ((enc.conv_features(hit) - base).abs().amax(dim=(0, 2)) > 0).nonzero().flatten()
        expected = [j for j in range(base.shape[1]) if 320 * j - 200 <= s < 320 * j + 200]
        assert changed.tolist() == expected  # frame j covers [320 j - 200, 320 j + 200)


def test_align_frames_puts_values_at_centres() -> None:
    first, hop, step, frames = 100.0, 320.0, 512.0 / 3.0, 40
    centres = first + hop * torch.arange(12, dtype=torch.float64)
    feats = torch.stack([centres, -2 * centres], dim=-1)[None].float()  # value = centre time
    out = align_frames(feats, first, hop, frames, step)
    t = step * np.arange(frames)
    inside = (t >= first) & (t <= centres[-1].item())
    np.testing.assert_allclose(out[0, 0].numpy()[inside], t[inside], rtol=1e-6)
    np.testing.assert_allclose(
        out[0, 0].numpy()[~inside], np.clip(t, first, centres[-1].item())[~inside]
    )
    np.testing.assert_allclose(out[0, 1].numpy(), -2 * out[0, 0].numpy(), rtol=1e-6)


def test_short_input_shapes_and_window_estimates(tmp_path: Path) -> None:
    torch.save(_fairseq_payload(_ta_model()), tmp_path / "h.pt")
    ext = load_content_model(tmp_path / "h.pt")
    for n in (1, 255, 256, 700):
        with torch.no_grad():
            assert ext(_audio(n, batch=3)).shape == (3, EMBED, n // 256 + 1)
    assert ext.sample_rate == 24000 and ext.left_context_frames == 188  # 2 s
    assert ext.lookahead_frames == 4  # (200 + 320) samples at 16 kHz = 3.05 frames


# ------------------------------------------------------------------------------ wrong files


def _flag_call(marker: str) -> None:
    CALLED.append(marker)


CALLED: list[str] = []


class _Evil:
    def __reduce__(self) -> tuple:
        return (_flag_call, ("executed",))


def _fake_module(monkeypatch: pytest.MonkeyPatch, dotted: str, **attrs: object) -> None:
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = dotted, key  # type: ignore[attr-defined]
        setattr(sys.modules[dotted], key, value)


def test_fairseq_and_omegaconf_objects_become_inert_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Dictionary:  # stands for fairseq.data.dictionary.Dictionary
        def __init__(self) -> None:
            self.symbols = ["<s>", "a"]

    class DictConfig:  # stands for omegaconf's container: state {"_content": {...}}
        def __init__(self, content: dict) -> None:
            self._content, self._parent = content, None

    class AnyNode:  # omegaconf value node: state {"_val": ...}
        def __init__(self, val: object, parent: object) -> None:
            self._val, self._parent = val, parent

    mode = enum.Enum("ExtractorMode", {"DEFAULT": "default"})
    _fake_module(monkeypatch, "fairseq.data.dictionary", Dictionary=Dictionary)
    _fake_module(monkeypatch, "omegaconf.dictconfig", DictConfig=DictConfig)
    _fake_module(monkeypatch, "omegaconf.nodes", AnyNode=AnyNode)
    _fake_module(monkeypatch, "fairseq.dataclass.constants", ExtractorMode=mode)
    model = DictConfig({})
    model._content.update(
        encoder_attention_heads=AnyNode(HEADS, model),
        extractor_mode=mode.DEFAULT,
        conv_feature_layers=AnyNode(CONV_TEXT, model),
    )
    payload = _fairseq_payload(_ta_model())
    payload.update(
        args=None, cfg=DictConfig({"model": model}), task_state={"dictionaries": [Dictionary()]}
    )
    torch.save(payload, tmp_path / "hubert_base.pt")
    monkeypatch.undo()  # the loader must not need (or import) these modules
    loaded, _ = read_payload(tmp_path / "hubert_base.pt")
    assert plain(loaded["cfg"]) == {
        "model": {
            "encoder_attention_heads": HEADS,
            "extractor_mode": "default",
            "conv_feature_layers": CONV_TEXT,
        }
    }
    assert type(loaded["task_state"]["dictionaries"][0]).pickled_name == (
        "fairseq.data.dictionary.Dictionary"
    )
    ext = load_content_model(tmp_path / "hubert_base.pt")
    assert ext.encoder.spec.num_heads == HEADS  # read back from the placeholder config
    assert "fairseq" not in sys.modules and "omegaconf" not in sys.modules


def test_unknown_pickled_class_is_refused_without_running_it(tmp_path: Path) -> None:
    payload = _fairseq_payload(_ta_model())
    payload["extra_state"] = {"evil": _Evil()}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refusing to load.*_flag_call"):
        load_content_model(tmp_path / "evil.pt")
    assert CALLED == []


def test_wrong_files_are_checkpoint_errors_naming_file_and_fault(tmp_path: Path) -> None:
    good = _fairseq_payload(_ta_model())
    torch.save(good, tmp_path / "good.pt")
    cases = {
        "random.pt": ({"weights": torch.randn(3), "step": 4}, "no known keys"),
        "list.pt": ([torch.randn(2)], "a list"),
    }
    missing = _fairseq_payload(_ta_model())
    del missing["model"]["encoder.layers.1.fc1.weight"]
    cases["missing.pt"] = (missing, r"missing keys \[encoder\.transformer\.layers\.1\.feed_forward")
    shape = _fairseq_payload(_ta_model())
    shape["model"]["encoder.layers.1.fc2.weight"] = torch.randn(EMBED, 3)
    cases["shape.pt"] = (shape, r"shape mismatches \[.*output_dense\.weight")
    unknown = _fairseq_payload(_ta_model())
    unknown["model"]["encoder.layers.0.adapter.weight"] = torch.randn(2)
    cases["unknown.pt"] = (unknown, r"unexpected keys.*adapter")
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match=re.escape(name) + ".*" + message):
            load_content_model(tmp_path / name)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: unreadable checkpoint"):
        load_content_model(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_content_model(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"good\.pt: layer 3 out of range"):
        load_content_model(tmp_path / "good.pt", layer=3)


# ----------------------------------------------------------------------------------- Whisper

DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 100,
    "n_audio_state": 32,
    "n_audio_head": 2,
    "n_audio_layer": 2,
    "n_vocab": 51865,
    "n_text_ctx": 448,
    "n_text_state": 32,
    "n_text_head": 2,
    "n_text_layer": 2,
}


def _whisper_sinusoids(length: int, channels: int) -> torch.Tensor:
    inc = np.log(10000) / (channels // 2 - 1)
    t = np.arange(length)[:, None] * np.exp(-inc * np.arange(channels // 2))[None]
    return torch.from_numpy(np.concatenate([np.sin(t), np.cos(t)], axis=1)).float()


def _whisper_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, m = DIMS["n_audio_state"], DIMS["n_mels"]

    def r(*shape: int, scale: float = 0.2, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    sd = {
        "encoder.conv1.weight": r(c, m, 3),
        "encoder.conv1.bias": r(c),
        "encoder.conv2.weight": r(c, c, 3),
        "encoder.conv2.bias": r(c),
        "encoder.positional_embedding": _whisper_sinusoids(DIMS["n_audio_ctx"], c),
        "encoder.ln_post.weight": r(c, base=1.0),
        "encoder.ln_post.bias": r(c),
        "decoder.token_embedding.weight": r(7, c),
        "decoder.ln.weight": r(c),
    }
    for n in range(DIMS["n_audio_layer"]):
        p = f"encoder.blocks.{n}."
        for name in ("attn.query", "attn.key", "attn.value", "attn.out"):
            sd[p + name + ".weight"] = r(c, c)
            if name != "attn.key":
                sd[p + name + ".bias"] = r(c)
        for ln in ("attn_ln", "mlp_ln"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = r(c, base=1.0), r(c)
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = r(4 * c, c), r(4 * c)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = r(c, 4 * c), r(c)
    return sd


def _whisper_mel(wav: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel computed directly: numpy STFT (periodic Hann 400, hop 160, centred,
    reflect), last frame dropped, librosa slaney mel filters, log10, max - 8 floor, (x+4)/4."""
    window = np.hanning(401)[:-1]
    padded = np.pad(wav, 200, mode="reflect")
    frames = np.stack(
        [padded[i * 160 : i * 160 + 400] * window for i in range(len(wav) // 160 + 1)]
    )
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels) @ power[:-1].T
    log = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def _whisper_encoder(sd: dict, mel: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """Whisper's AudioEncoder written out from its checkpoint keys: (B, n_mels, F) -> (B, J, C)."""
    x = F.gelu(F.conv1d(mel, sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(
        F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1)
    ).transpose(1, 2)
    x = x + sd["encoder.positional_embedding"][: x.shape[1]]
    b, t, c = x.shape
    h = DIMS["n_audio_head"]
    for n in range(layer or DIMS["n_audio_layer"]):
        p = f"encoder.blocks.{n}."

        def ln(name: str, y: torch.Tensor, p: str = p) -> torch.Tensor:
            return F.layer_norm(y, (c,), sd[p + name + ".weight"], sd[p + name + ".bias"])

        y = ln("attn_ln", x)
        scale = (c // h) ** -0.25
        q = F.linear(y, sd[p + "attn.query.weight"], sd[p + "attn.query.bias"]) * scale
        k = F.linear(y, sd[p + "attn.key.weight"]) * scale
        v = F.linear(y, sd[p + "attn.value.weight"], sd[p + "attn.value.bias"])
        q, k, v = (z.view(b, t, h, -1).transpose(1, 2) for z in (q, k, v))
        o = (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + F.linear(o, sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        y = ln("mlp_ln", x)
        x = x + F.linear(
            F.gelu(F.linear(y, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
            sd[p + "mlp.2.weight"],
            sd[p + "mlp.2.bias"],
        )
    if layer:
        return x
    return F.layer_norm(x, (c,), sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"])


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_matches_direct_computation(n_mels: int) -> None:
    from comostream.models.whisper_encoder import WhisperLogMel

    wav = 0.1 * np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    wav[2000:3000] *= 1e-4  # a quiet stretch exercises the max - 8 floor
    got = WhisperLogMel(n_mels)(torch.from_numpy(wav)[None])[0].numpy()
    expected = _whisper_mel(wav.astype(np.float64), n_mels)
    assert got.shape == expected.shape == (n_mels, 5000 // 160)
    np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize("with_pos", [True, False])
def test_a_whisper_checkpoint_matches_the_reference_encoder_at_each_layer(
    tmp_path: Path, with_pos: bool
) -> None:
    sd = _whisper_state()
    if not with_pos:
        del sd["encoder.positional_embedding"]  # the loader fills in Whisper's sinusoids
    torch.save({"dims": DIMS, "model_state_dict": sd}, tmp_path / "tiny.pt")
    sd.setdefault("encoder.positional_embedding", _whisper_sinusoids(DIMS["n_audio_ctx"], 32))
    audio = _audio(12000, batch=1)
    wav16 = F.pad(_wav16(audio), (0, 840))  # the encoder's end padding: last frame past the end
    mel = torch.from_numpy(_whisper_mel(wav16[0].double().numpy(), 80)).float()[None]
    for layer in (0, 1):
        ext = load_content_model(tmp_path / "tiny.pt", layer=layer)
        with torch.no_grad():
            out = ext(audio)
        ref = _whisper_encoder(sd, mel, layer)
        assert ext.kind == "whisper" and out.shape == (1, 32, 12000 // 256 + 1)
        np.testing.assert_allclose(out.numpy(), _aligned(ref, 12000), atol=2e-3)
    with pytest.raises(CheckpointError, match="no final_proj"):
        load_content_model(tmp_path / "tiny.pt", projection=True)


def test_whisper_long_input_is_segmented_and_bad_dims_refused(tmp_path: Path) -> None:
    dims = dict(DIMS, n_audio_ctx=20)  # 0.4 s segments
    sd = {k: v for k, v in _whisper_state().items() if k != "encoder.positional_embedding"}
    torch.save({"dims": dims, "model_state_dict": sd}, tmp_path / "short_ctx.pt")
    ext = load_content_model(tmp_path / "short_ctx.pt")
    with torch.no_grad():
        out = ext(_audio(30000, batch=2))  # 1.25 s: four segments
    assert out.shape == (2, 32, 30000 // 256 + 1) and torch.isfinite(out).all()
    torch.save({"dims": dict(DIMS, n_audio_head=3), "model_state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: n_audio_head does not divide"):
        load_content_model(tmp_path / "bad.pt")
    torch.save({"dims": DIMS, "model_state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt: Whisper encoder.*missing keys"):
        load_content_model(tmp_path / "empty.pt")


# ---------------------------------------------------------------------------- feature cache


def test_content_extractor_uses_the_external_model(tmp_path: Path) -> None:
    torch.save(_fairseq_payload(_ta_model()), tmp_path / "h.pt")
    cfg = Config(
        features=FeaturesConfig(
            extractors=("mel", "content"), content_model=str(tmp_path / "h.pt"), content_layer=1
        )
    )
    utt = Utterance(tmp_path / "x.wav", "a", "train", None, "", None, None, 0.0)
    audio = _audio(5000, batch=1)[0].numpy()
    arrays = EXTRACTORS["content"].fn(audio, utt, cfg)
    with torch.no_grad():
        expected = load_content_model(tmp_path / "h.pt", layer=1)(torch.from_numpy(audio)[None])[0]
    assert arrays["content"].shape == (EMBED, 5000 // 256 + 1)
    np.testing.assert_allclose(arrays["content"], expected.numpy(), atol=1e-6)


def test_content_extractor_can_read_a_perturbed_copy(tmp_path: Path) -> None:
    """``content_perturb``: content of a WORLD-resung copy (same frames, seeded by the path)."""
    torch.save(_fairseq_payload(_ta_model()), tmp_path / "h.pt")
    t = np.arange(12000) / 24000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
    audio = audio.astype(np.float32)
    base = FeaturesConfig(extractors=("mel", "content"), content_model=str(tmp_path / "h.pt"))
    utt = Utterance(tmp_path / "x.wav", "a", "train", None, "", None, None, 0.0)
    plain = EXTRACTORS["content"].fn(audio, utt, Config(features=base))["content"]
    cfg = Config(features=dataclasses.replace(base, content_perturb=True))
    once = EXTRACTORS["content"].fn(audio, utt, cfg)["content"]
    again = EXTRACTORS["content"].fn(audio, utt, cfg)["content"]
    other = Utterance(tmp_path / "y.wav", "a", "train", None, "", None, None, 0.0)
    moved = EXTRACTORS["content"].fn(audio, other, cfg)["content"]
    assert once.shape == plain.shape
    np.testing.assert_array_equal(once, again)  # seeded by the utterance
    assert np.abs(once - plain).mean() > 1e-3 and np.abs(once - moved).mean() > 1e-4
