"""Plain helpers shared by the test modules (``from helpers import ...``; fixtures are in
conftest.py): chunked-stream drivers, engine test doubles, tiny models and their files, test
signals, users' vocoder files in their original layout, a toy training problem and a
self-signed TLS pair."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import importlib.util
import ipaddress
import json
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from websockets.asyncio.client import connect

from comostream.models.acoustic import AcousticModel
from comostream.models.config import Config, ContentConfig, F0Config, TrainConfig, load_config
from comostream.models.streaming import Delay, StreamState
from comostream.models.vocoder import Vocoder, vocoder_config
from comostream.realtime.serve.protocol import ERRORS
from comostream.training.checkpoint import save_checkpoint
from comostream.training.sampler import EpochShuffle
from comostream.training.state import TrainState, make_state

# The batched server's float step, for tests that hold its output to a torch engine's within
# float rounding: ONNX Runtime's float step where it is installed (`auto` picks the 8-bit one:
# tests/test_onnx_int8.py), else torch.
FLOAT_BACKEND = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"

# ---------------------------------------------------------------- chunked vs one-shot streams
FIXED_CHUNKS = (1, 2, 3, 4, 8)


def chunk_bounds(total: int, sizes: int | Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``total`` frames with ``sizes`` (cycled)."""
    pattern = [sizes] if isinstance(sizes, int) else list(sizes)
    out, start, i = [], 0, 0
    while start < total:
        stop = min(total, start + pattern[i % len(pattern)])
        out.append((start, stop))
        start, i = stop, i + 1
    return out


def random_chunkings(total: int, count: int, seed: int = 0, max_size: int = 9) -> list[list[int]]:
    """``count`` random chunk-size lists (1 .. max_size frames) covering ``total`` frames."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, max_size + 1, size=total)) for _ in range(count)]


def run_stream(
    step: Callable[..., Tensor],
    flush: Callable[[], Tensor],
    inputs: Sequence[Tensor],
    bounds: Sequence[tuple[int, int]],
    delay: int,
) -> Tensor:
    """Feed every chunk of ``inputs`` (time last) to ``step``, then ``flush``; concatenate and
    drop the first ``delay`` frames (the one-shot alignment)."""
    with torch.inference_mode():
        outs = [step(*(x[..., a:b] for x in inputs)) for a, b in bounds]
        outs.append(flush())
    return torch.cat(outs, dim=-1)[..., delay:]


def measured_reach(fn: Callable[[Tensor], Tensor], x: Tensor, frame: int) -> tuple[int, int]:
    """``(lookahead, left)`` in frames: perturb input ``frame`` of ``x (B, C, T)`` and find the
    earliest and latest output frames that change."""
    with torch.no_grad():
        base = fn(x)
        bumped = x.clone()
        bumped[..., frame] += 1.0
        diff = (fn(bumped) - base).abs().flatten(0, -2).amax(dim=0)
    changed = torch.nonzero(diff > 1e-12).flatten()  # untouched frames are bit-identical
    return frame - int(changed[0]), int(changed[-1]) - frame


def state_signature(tensors: Sequence[tuple[str, Tensor]]) -> list[tuple[str, int, int, tuple]]:
    """``(name, id, data_ptr, shape)`` of every state tensor: unchanged = no growth."""
    return [(name, id(t), t.data_ptr(), tuple(t.shape)) for name, t in tensors]


# ---------------------------------------------------------------- engine test doubles
class IdentityStep(nn.Module):
    """Returns each frame's own hop of input samples, ``lookahead`` frames late."""

    def __init__(self, lookahead: int = 0, hop: int = 256) -> None:
        super().__init__()
        self.lookahead_frames = lookahead
        self.hop_length = hop
        self.delay = Delay(1, lookahead * hop)

    def init_state(self, streams: int, device=None, dtype=None) -> StreamState:
        return {"delay": self.delay.init_state(streams, device, dtype)}

    def step(self, inputs: dict[str, Tensor], state: StreamState) -> Tensor:
        return self.delay.run(inputs["audio"].unsqueeze(1), state["delay"])[:, 0]


class SilentF0:
    """An F0 tracker on the frame grid that reports every frame unvoiced."""

    def __init__(self, cfg: F0Config | None = None, lookahead_frames: int = 0) -> None:
        self.lookahead_samples = 512
        self.lookahead_frames = lookahead_frames
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.emitted = 0

    def push(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.received += len(chunk)
        ready = max(0, (self.received - self.lookahead_samples) // 256 + 1 - self.lookahead_frames)
        k = max(0, ready - self.emitted)
        self.emitted += k
        return np.zeros(k, np.float32), np.zeros(k, bool)


def silent_f0(lookahead_frames: int = 0):
    return lambda cfg: SilentF0(cfg, lookahead_frames)


def rng_chunks(seed: int, n: int, low: int = 1, high: int = 900) -> list[int]:
    g = np.random.default_rng(seed)
    return [int(v) for v in g.integers(low, high, size=max(1, n))]


# ---------------------------------------------------------------- tiny models and their files
# Random weights; the vocoder is F0-driven (harmonic-plus-noise), so even untrained its output's
# pitch follows the conditioning F0: tests of F0 tracking and timing can use these files.
SINGERS = ["alto", "bass", "tenor"]


def tiny_models(
    lookahead: int = 1, singers: list[str] | None = None
) -> tuple[AcousticModel, Vocoder]:
    """A tiny acoustic model (with its content encoder) and a tiny vocoder, seeded, eval mode."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.toml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lookahead_frames=lookahead))
    content = ContentConfig(
        channels=16,
        layers=2,
        content_dim=cfg.model.content_dim,
        lookahead_frames=lookahead,
        centre_tau_frames=30.0,  # the input centring (speaker normalisation) runs in every test
    )
    model = AcousticModel(cfg, singers or SINGERS, content).eval()
    centre = model.content_encoder.centre
    if centre is not None:  # a prior away from zero, as a trained encoder's
        centre.prior.copy_(torch.randn(centre.prior.shape) * 0.3)
    vocoder = Vocoder(vocoder_config("tiny", lookahead_frames=lookahead)).eval()
    return model, vocoder


def write_tiny_model(path: Path, lookahead: int = 1, singers: list[str] | None = None) -> Path:
    """An inference file (``comostream export`` format, vocoder included) of :func:`tiny_models`."""
    model, vocoder = tiny_models(lookahead, singers)
    return save_checkpoint(path, dict(model.export_payload(), vocoder=vocoder.export_payload()))


# ---------------------------------------------------------------- test signals
def sung(rate: int, seconds: float = 1.2) -> np.ndarray:
    """A sung-like test signal: a gliding harmonic tone with a gap of silence and some noise."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = 220.0 * 2 ** (0.5 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2
    x[(t > 0.5) & (t < 0.62)] = 0.0
    x += np.random.default_rng(0).standard_normal(t.shape) * 0.003
    return x.astype(np.float32)


def harmonic_tone(f0: np.ndarray, rate: int = 24000) -> np.ndarray:
    """Harmonic tone (1/h) following per-sample ``f0`` (Hz at ``rate``), with a breath of noise."""
    phase = 2 * np.pi * np.cumsum(f0) / rate
    h = np.arange(1, 30)
    x = np.sin(np.outer(phase, h)) @ (1.0 / h) * 0.1
    return (x + 0.003 * np.random.default_rng(int(f0[0])).standard_normal(x.size)).astype(
        np.float32
    )


# ---------------------------------------------------------------- users' vocoders, original layout
# Parameter names and shapes enumerated from the original repositories (NVIDIA/BigVGAN,
# jik876/hifi-gan, open-mmlab/Amphion), not from our modules.
# NVIDIA BigVGAN's kaiser-sinc anti-aliasing filter (ratio 2, 12 taps), from the original code.
ORIGINAL_FILTER = torch.tensor(
    [
        0.0020289646927267313,
        0.009389465674757957,
        -0.0255434587597847,
        -0.057657383382320404,
        0.12857258319854736,
        0.44320979714393616,
        0.44320979714393616,
        0.12857258319854736,
        -0.057657383382320404,
        -0.0255434587597847,
        0.009389465674757957,
        0.0020289646927267313,
    ]
)
UPS = {"upsample_rates": [4, 4, 4, 4], "upsample_kernel_sizes": [8, 8, 8, 8]}
ARCH1 = {
    **UPS,
    "upsample_initial_channel": 32,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 2, 3]],
}
NV_AUDIO = {
    "num_mels": 100,
    "sampling_rate": 24000,
    "hop_size": 256,
    "n_fft": 1024,
    "win_size": 1024,
    "fmin": 0,
    "fmax": None,
}
AMPHION_AUDIO = {
    "n_mel": 100,
    "sample_rate": 24000,
    "hop_size": 256,
    "n_fft": 1024,
    "win_size": 1024,
    "fmin": 0,
    "fmax": 12000,
}


def _wn(sd: dict[str, Tensor], g: torch.Generator, name: str, shape: tuple, bias: int) -> None:
    """A weight-normed conv the old way: gain (shape[0], 1, 1), direction ``shape``, bias."""
    sd[f"{name}.weight_g"] = 0.5 + 0.5 * torch.rand(shape[0], 1, 1, generator=g)
    sd[f"{name}.weight_v"] = torch.randn(*shape, generator=g)
    if bias:
        sd[f"{name}.bias"] = 0.1 * torch.randn(bias, generator=g)


def _snake(sd: dict[str, Tensor], g: torch.Generator, name: str, ch: int, arch: dict) -> None:
    centre = 0.0 if arch["snake_logscale"] else 1.0
    sd[f"{name}.act.alpha"] = centre + 0.4 * torch.randn(ch, generator=g)
    if arch["activation"] == "snakebeta":
        sd[f"{name}.act.beta"] = centre + 0.4 * torch.randn(ch, generator=g)
    sd[f"{name}.upsample.filter"] = ORIGINAL_FILTER.view(1, 1, 12).clone()
    sd[f"{name}.downsample.lowpass.filter"] = ORIGINAL_FILTER.view(1, 1, 12).clone()


def original_state(family: str, arch: dict, n_mels: int = 100, seed: int = 0) -> dict:
    """The generator state dict as the original code saves it (names, nesting, shapes)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    c0, rates = arch["upsample_initial_channel"], arch["upsample_rates"]
    _wn(sd, g, "conv_pre", (c0, n_mels, 7), c0)
    for i, k in enumerate(arch["upsample_kernel_sizes"]):
        name = f"ups.{i}.0" if family == "bigvgan" else f"ups.{i}"
        _wn(sd, g, name, (c0 >> i, c0 >> (i + 1), k), c0 >> (i + 1))  # (in, out, k)
    n = 0
    for i in range(len(rates)):
        ch = c0 >> (i + 1)
        for k, dils in zip(
            arch["resblock_kernel_sizes"], arch["resblock_dilation_sizes"], strict=True
        ):
            p = f"resblocks.{n}"
            groups = ("convs1", "convs2") if arch["resblock"] == "1" else ("convs",)
            for group in groups:
                for m in range(len(dils)):
                    _wn(sd, g, f"{p}.{group}.{m}", (ch, ch, k), ch)
            if family == "bigvgan":
                for a in range(len(groups) * len(dils)):
                    _snake(sd, g, f"{p}.activations.{a}", ch, arch)
            n += 1
    ch = c0 >> len(rates)
    if family == "bigvgan":
        _snake(sd, g, "activation_post", ch, arch)
    _wn(sd, g, "conv_post", (1, ch, 7), 1 if arch.get("use_bias_at_final", True) else 0)
    return sd


def amphion_args(family: str, arch: dict, pre: dict) -> str:
    """An Amphion args.json (json5 flavour: comments, trailing comma, '//' inside a string)."""
    model = json.dumps({"generator": family, family: arch}, indent=2)
    return (
        "{\n  // dumped by Amphion\n"
        '  "log_dir": "ckpts//vocoder", /* a block comment */\n'
        f'  "model": {model},\n  "preprocess": {json.dumps(pre)},\n}}\n'
    )


def write_original(
    tmp: Path, layout: str, family: str, arch: dict, sd: dict, audio: dict | None = None
) -> Path:
    """Save ``sd`` as the original code does; returns the path a user passes to the loader."""
    if layout == "nvidia":
        name = "bigvgan_generator.pt" if family == "bigvgan" else "g_02500000"
        torch.save({"generator": sd}, tmp / name)
        (tmp / "config.json").write_text(json.dumps({**arch, **(audio or NV_AUDIO)}))
        return tmp / name
    args = amphion_args(family, arch, audio or AMPHION_AUDIO)
    if layout == "amphion-pt":
        opt = {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]}
        state = {f"module.{k}": v for k, v in sd.items()}  # saved from a DDP-wrapped model
        torch.save(
            {"generator_state_dict": state, "optimizer_g": opt, "step": 400000}, tmp / "1.pt"
        )
        (tmp / "args.json").write_text(args)
        return tmp / "1.pt"
    ckpt = tmp / "checkpoint" / "epoch-0002_step-0000100_loss-0.500000"
    ckpt.mkdir(parents=True)
    torch.save(sd, ckpt / "pytorch_model.bin")
    (tmp / "args.json").write_text(args)
    return ckpt


# ---------------------------------------------------------------- a toy training problem
# A tiny conv regression; its step function draws noise from torch (dropout and input noise),
# numpy and python ``random``, so exact resume is only possible if every RNG state is restored.
TOY_CHANNELS, TOY_FRAMES = 2, 16


def toy_config(**train: Any) -> Config:
    """Defaults for a fast CPU run, overridable per field of [train]."""
    base = dict(
        batch_size=4,
        max_steps=12,
        lr=1e-2,
        warmup_steps=3,
        lr_schedule="cosine",
        log_every=2,
        valid_every=5,
        ckpt_every=4,
        grad_clip=1.0,
        amp=False,
    )
    base.update(train)
    return Config(train=TrainConfig(**base))


def toy_dataset(n: int = 24, seed: int = 0) -> EpochShuffle:
    """``n`` items (x (2, 16), y (1, 16)) with y a fixed smooth function of x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TOY_CHANNELS, TOY_FRAMES, generator=g)
    y = (0.7 * x[:, :1] - 0.4 * x[:, 1:].roll(1, -1)).tanh()
    return EpochShuffle(TensorDataset(x, y), seed=seed)


def toy_model(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(TOY_CHANNELS, 8, 3, padding=1), nn.GELU(), nn.Dropout(dropout), nn.Conv1d(8, 1, 1)
    )


def toy_state(cfg: Config, seed: int = 0, dropout: float = 0.1, sgd: bool = False) -> TrainState:
    """The toy model with AdamW, or plain SGD (whose update is proportional to the gradient)."""
    net = toy_model(seed, dropout)
    opts = {"main": torch.optim.SGD(net.parameters(), lr=cfg.train.lr)} if sgd else None
    return make_state({"net": net}, cfg.train, optimizers=opts)


def noisy_step(state: TrainState, batch: Any) -> dict[str, Tensor]:
    """MSE on noisy inputs, plus a logged-only term; uses all three global RNGs."""
    x, y = batch
    scale = 0.05 * float(np.random.rand()) + 0.01 * random.random()  # noqa: NPY002
    pred = state.models["net"](x + scale * torch.randn_like(x))
    mse = torch.mean((pred - y) ** 2)
    return {"loss": mse, "mse": mse.detach(), "abs": torch.mean((pred - y).abs()).detach()}


def plain_step(state: TrainState, batch: Any) -> dict[str, Tensor]:
    """Deterministic MSE (no noise), for comparing data-parallel and single-process runs."""
    x, y = batch
    return {"mse": torch.mean((state.models["net"](x) - y) ** 2)}


def toy_valid(state: TrainState) -> dict[str, float]:
    ds = toy_dataset(8, seed=99)
    x = torch.stack([ds[i][0] for i in range(8)])
    y = torch.stack([ds[i][1] for i in range(8)])
    noise = 0.01 * torch.randn_like(x)
    return {"mse": float(torch.mean((state.models["net"](x + noise) - y) ** 2))}


def flat_params(state: TrainState) -> Tensor:
    return torch.cat(
        [p.detach().reshape(-1) for m in state.models.values() for p in m.parameters()]
    )


# ---------------------------------------------------------------- TLS
def self_signed_pair(folder: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate and key for 127.0.0.1/localhost (PEM): the ``openssl``
    command, else the ``cryptography`` package; None with neither."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    openssl = shutil.which("openssl")
    if openssl:
        made = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"]
            + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            capture_output=True,
        )
        if made.returncode == 0:
            return cert, key
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False)
        .sign(pkey, hashes.SHA256())
    )
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


async def expect_error(url: str, frames: list[str | bytes], code: str) -> None:
    """Send ``frames``; the server must answer error ``code`` and close with its close code."""
    async with connect(url, max_size=None) as ws:
        for f in frames:
            await ws.send(f)
        while True:
            msg = await asyncio.wait_for(ws.recv(), 20)
            if isinstance(msg, str) and json.loads(msg)["type"] == "error":
                break
        assert json.loads(msg)["code"] == code, msg
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == ERRORS[code][0], (code, ws.close_code)
