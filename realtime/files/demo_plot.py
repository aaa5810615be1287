"""``comostream demo --plot DIR``: the README's pictures, drawn with matplotlib.

* ``spectrogram.png``: a bundled example before and after conversion to one singer (log-magnitude
  spectrogram, 0-5 kHz, with the F0 the output should follow drawn over both);
* ``signal_path.png``: the streaming engine's signal path, mic to speaker, each stage with the
  latency it adds, read from an engine built over the model (48 kHz, the configured block).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LatencyPart",
    "latency_parts",
    "plot_signal_path",
    "plot_spectrograms",
    "pyplot",
    "save_png",
    "write_demo_plots",
]

PLOT_RATE = 48000  # the signal path is drawn for a sound card at this rate


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a clear error when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'comostream[eval]'") from None
    return plt


def save_png(fig: Any, path: Path, dpi: int = 100, colors: int = 96) -> Path:
    """Save ``fig`` as a small palette PNG (``colors`` colours) at ``path``; close it."""
    import io

    from PIL import Image

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(colors=colors)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


@dataclass(frozen=True)
class LatencyPart:
    """One contribution to the engine's algorithmic latency."""

    stage: str  # the box of the signal path it belongs to
    what: str
    ms: float


def latency_parts(engine: Any) -> list[LatencyPart]:
    """The engine's algorithmic latency split by where it arises; the parts sum to
    ``engine.latency_ms`` exactly (what no stage explains is the output buffer's alignment to
    whole samples: 0 at 48 kHz, 22 ms at 44.1 kHz where a block is no whole number of samples)."""
    step = getattr(engine.step_module, "inner", engine.step_module)  # a TracedStep's chain
    model_rate, hop = engine.geometry.sample_rate, engine.hop
    frame_ms = 1000.0 * hop / model_rate
    chain_late = int(step.lookahead_frames)
    content = int(getattr(step, "content_late", 0))
    cond = int(getattr(step, "cond_late", content))
    mel = int(getattr(step, "mel_late", chain_late))
    parts = [
        LatencyPart("mic", "block", engine.block_ms),
        LatencyPart(
            "front-end", "window overhang", 1000.0 * engine.frontend.pad_samples / model_rate
        ),
        LatencyPart("front-end", "F0 lookahead", engine.frontend.lookahead_frames * frame_ms),
        LatencyPart("content encoder", "lookahead", content * frame_ms),
        LatencyPart("F0 hold", "none", 0.0),
        LatencyPart("conditioner", "lookahead", (cond - content) * frame_ms),
        LatencyPart("one-step target", "lookahead", (mel - cond) * frame_ms),
        LatencyPart("vocoder", "lookahead", (chain_late - mel) * frame_ms),
    ]
    if engine.rs_in is not None and engine.rs_out is not None:
        parts.append(
            LatencyPart(
                "resampler in", "filter", 1000.0 * engine.rs_in.delay_samples_out / model_rate
            )
        )
        parts.append(
            LatencyPart(
                "resampler out",
                "filter",
                1000.0 * engine.rs_out.delay_samples_out / engine.sample_rate,
            )
        )
    rest = engine.latency_ms - sum(p.ms for p in parts)
    parts.append(LatencyPart("output", "alignment", rest))
    return parts


# the boxes of the signal path, left to right, top row then bottom row
STAGES: list[tuple[str, str]] = [
    ("mic", "microphone\n(a block at a time)"),
    ("resampler in", "resampler\nto 24 kHz"),
    ("front-end", "front-end\nmel, loudness, F0"),
    ("content encoder", "content encoder\n(what is sung)"),
    ("F0 hold", "F0 hold +\ntranspose"),
    ("conditioner", "conditioner\n(+ singer)"),
    ("one-step target", "one-step\nconsistency target"),
    ("vocoder", "vocoder\nmel + F0 -> audio"),
    ("resampler out", "resampler\nback"),
    ("speaker", "speaker"),
]


def plot_signal_path(parts: list[LatencyPart], path: Path, title: str) -> Path:
    """Draw the signal path with each stage's latency in ms, and the total as a stacked bar."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt = pyplot()
    per_stage: dict[str, float] = {}
    for p in parts:
        per_stage[p.stage] = per_stage.get(p.stage, 0.0) + p.ms
    fig = plt.figure(figsize=(10, 4.6))
    ax = fig.add_axes((0.01, 0.30, 0.98, 0.62))
    ax.set_xlim(0, 5)
    ax.set_ylim(0, 2)
    ax.axis("off")
    w, h = 0.86, 0.52
    centres = [(0.5 + i, 1.5) for i in range(5)] + [(4.5 - i, 0.45) for i in range(5)]
    for (key, label), (x, y) in zip(STAGES, centres, strict=True):
        ms = per_stage.get(key)
        model = key in ("content encoder", "conditioner", "one-step target", "vocoder")
        box = FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02",
            fc="#dde8f5" if model else "#eeeeee",
            ec="#335577",
        )
        ax.add_patch(box)
        ax.text(x, y + 0.04, label, ha="center", va="center", fontsize=8.5)
        if ms is not None:
            ax.text(
                x,
                y - h / 2 - 0.09,
                f"+{ms:.1f} ms",
                ha="center",
                va="center",
                fontsize=8.5,
                color="#cc3311" if ms > 0.05 else "#888888",
            )
    for i in range(len(centres) - 1):
        (x0, y0), (x1, y1) = centres[i], centres[i + 1]
        if y0 == y1:
            a, b = (x0 + w / 2 * np.sign(x1 - x0), y0), (x1 - w / 2 * np.sign(x1 - x0), y1)
        else:  # the turn from the top row to the bottom row
            a, b = (x0, y0 - h / 2 - 0.16), (x1, y1 + h / 2)
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color="#335577"))
    ax.set_title(title, fontsize=10)

    bar = fig.add_axes((0.05, 0.16, 0.9, 0.1))
    segments: dict[str, float] = {}  # the resamplers' filters and alignment as one segment
    for p in parts:
        name = "resamplers" if p.stage.startswith("resampler") else f"{p.stage} {p.what}"
        name = {"mic block": "block", "front-end window overhang": "window overhang"}.get(
            name, name
        )
        segments[name] = segments.get(name, 0.0) + p.ms
    colours = ["#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377", "#bbbbbb"]
    left = 0.0
    for i, (name, ms) in enumerate((n, v) for n, v in segments.items() if v > 0.05):
        bar.barh(0, ms, left=left, color=colours[i % len(colours)], edgecolor="white")
        label = f"{name}\n{ms:.1f}" if ms > 6.0 else f"{ms:.1f}"
        bar.text(left + ms / 2, 0, label, ha="center", va="center", fontsize=7.5)
        if ms <= 6.0:
            bar.text(left + ms / 2, 0.62, name, ha="center", va="bottom", fontsize=7.5)
        left += ms
    bar.set_xlim(0, left)
    bar.set_ylim(-0.5, 0.5)
    bar.set_yticks([])
    bar.set_xlabel(
        f"algorithmic latency {left:.1f} ms in all; compute and the devices' buffers come on top",
        fontsize=8.5,
    )
    bar.tick_params(labelsize=8)
    return save_png(fig, path)


def _stft_db(x: np.ndarray, rate: int, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-magnitude STFT in dB (frames x bins), Hann window."""
    pad = np.pad(x.astype(np.float64), (n_fft // 2, n_fft // 2))
    count = 1 + (len(pad) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]
    spec = np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft), axis=1))
    return 20.0 * np.log10(np.maximum(spec, 1e-5))


def plot_spectrograms(
    source: np.ndarray,
    converted: np.ndarray,
    rate: int,
    f0_hz: np.ndarray,
    path: Path,
    titles: tuple[str, str],
    max_hz: float = 5000.0,
) -> Path:
    """Source above, converted below (both at ``rate``), 0-``max_hz``; ``f0_hz`` (per 256-sample
    frame at ``rate``, 0 = unvoiced) is the F0 the converted voice should follow."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.2), sharex=True, sharey=True)
    for ax, x, title in zip(axes, (source, converted), titles, strict=True):
        db = _stft_db(x, rate)
        top = db.max()
        bins = int(max_hz / (rate / 1024)) + 1
        extent = (0.0, len(x) / rate, 0.0, bins * rate / 1024 / 1000.0)
        ax.imshow(
            db[:, :bins].T,
            origin="lower",
            aspect="auto",
            extent=extent,
            cmap="magma",
            vmin=top - 80.0,
            vmax=top,
        )
        t = np.arange(len(f0_hz)) * 256 / rate
        f = np.where(f0_hz > 0, f0_hz / 1000.0, np.nan)
        ax.plot(t, f, color="#66ccee", lw=1.2, ls="--", label="F0 the output should follow")
        ax.set_title(title, fontsize=9.5)
        ax.set_ylabel("kHz")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("seconds")
    fig.tight_layout()
    return save_png(fig, path, dpi=90, colors=64)


def write_demo_plots(
    out_dir: Path,
    checkpoint: Path,
    example: Path,
    converted: Path,
    singer: str,
    transpose: int,
    cfg: Any,
    device: str = "cpu",
) -> list[Path]:
    """Both pictures into ``out_dir``: ``example`` before and after (``converted``, the demo's
    output for ``singer`` at ``transpose`` semitones) and the signal path of ``checkpoint``."""
    from comostream.models.audio import load_audio
    from comostream.models.f0_yin import yin_f0
    from comostream.realtime.engine import StreamingConverter
    from comostream.realtime.geometry import StreamGeometry
    from comostream.realtime.load import load_models

    model, vocoder = load_models(checkpoint, None, device)
    rate = model.cfg.audio.sample_rate
    source, output = load_audio(example, rate), load_audio(converted, rate)
    f0 = yin_f0(source, cfg.f0)
    target = np.where(f0.voiced, f0.f0_hz * 2 ** (transpose / 12), 0.0)
    spectrogram = plot_spectrograms(
        source,
        output,
        rate,
        target,
        out_dir / "spectrogram.png",
        (
            f"before: {example.name} (bundled example)",
            f"after: converted to {singer}, transposed {transpose:+d} semitones "
            "(streamed, live schedule)",
        ),
    )
    chunk = StreamGeometry.from_configs(model.cfg.audio, cfg.realtime).samples_per_block(PLOT_RATE)
    engine = StreamingConverter.from_models(
        model, vocoder, sample_rate=PLOT_RATE, realtime=cfg.realtime, chunk=chunk, trace=False
    )
    title = (
        f"signal path at {PLOT_RATE // 1000} kHz, blocks of {engine.block} frames "
        f"({engine.block_ms:.1f} ms): latency each stage adds ({checkpoint.name})"
    )
    path = plot_signal_path(latency_parts(engine), out_dir / "signal_path.png", title)
    return [spectrogram, path]
