"""``comostream demo`` and ``comostream convert``: files through the streaming engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from comostream.cli.common import (
    FRAME_MS,
    OUTPUT_FORMATS_HELP,
    Subparsers,
    backend_option,
    block_option,
    config_from_args,
    config_parent,
    f0_option,
    index_rate_option,
    model_options,
    noise_scale_option,
    output_options,
    overridden,
    runtime_options,
    speaker_arg,
    transpose_or_auto,
    use_runtime,
)

__all__ = ["register"]

SPEAKER_MIX = "NAME or a mix NAME:WEIGHT,NAME:WEIGHT"


def _cmd_demo(args: argparse.Namespace) -> int:
    from comostream.realtime.files.demo import run_demo

    device = use_runtime(args)
    return run_demo(
        config_from_args(args),
        out_dir=args.out,
        example=args.input,
        checkpoint=args.checkpoint,
        singers=args.speaker,
        device=device,
        plot=args.plot,
    )


def _streamed(args: argparse.Namespace) -> bool:
    """``convert --block``: on the realtime schedule (one thread per stream by default)."""
    return overridden(args, "realtime", "block_frames")


def _cmd_convert(args: argparse.Namespace) -> int:
    from comostream.realtime.files.convert import convert_file

    device = use_runtime(args)
    cfg = config_from_args(args)
    # --block given: streamed on the realtime schedule in blocks of [realtime] block_frames
    block = cfg.realtime.block_frames if overridden(args, "realtime", "block_frames") else None
    r = convert_file(
        args.input,
        args.output,
        speaker=args.speaker,
        transpose=args.transpose,
        block=block,
        checkpoint=args.checkpoint,
        vocoder=args.vocoder,
        realtime=cfg.realtime,
        device=device,
        subtype=args.subtype,
        f0=cfg.f0,
        index_rate=args.index_rate,
    )
    print(r.summary())
    return 0


def register(sub: Subparsers) -> None:
    """Add ``demo`` and ``convert`` to ``sub``."""
    p = sub.add_parser(
        "demo",
        parents=[config_parent],
        help="run the main job on the bundled example (what `make demo` runs)",
        description=(
            "Convert the bundled sung examples to every singer of the model (the shipped one, or "
            "--checkpoint) through the streaming engine on the live schedule; write the WAVs and "
            "print latency, real-time factor, F0 error and timbre similarity per conversion. "
            "Without a model, stream the examples through the front-end and report."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--input", type=Path, default=None, help="audio file instead of the example")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="also draw DIR/spectrogram.png (the first conversion, before and after) and "
        "DIR/signal_path.png (the engine's stages with the latency each adds); needs matplotlib",
    )
    p.add_argument(
        "--speaker",
        type=speaker_arg,
        action="append",
        default=None,
        metavar="NAME",
        help=f"convert to this singer ({SPEAKER_MIX}); repeat for several "
        "(default: every singer of the model)",
    )
    model_options(p, "inference file (default: the shipped model)", vocoder=False)
    runtime_options(p, streaming=True)
    backend_option(p)
    noise_scale_option(p)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser(
        "convert",
        parents=[config_parent],
        help="convert a recording to another singer (a file)",
        description=(
            "Convert IN to a singer of the model and write OUT (mono, at IN's rate), through "
            "the streaming engine: offline (model steps of 5.46 s, memory bounded whatever the "
            "file's length) or, with --block, on the realtime schedule (the same output, to "
            "float rounding). F0 follows the source, transposed by --transpose semitones. OUT "
            "is written atomically and is never IN; IN's rate must be within 8-384 kHz. "
            + OUTPUT_FORMATS_HELP
        ),
    )
    p.add_argument("input", type=Path, metavar="IN", help="audio file (wav/flac/ogg, any rate)")
    output_options(p)
    p.add_argument(
        "--speaker",
        type=speaker_arg,
        default=None,
        metavar="NAME",
        help=f"target singer, {SPEAKER_MIX} (default: the first)",
    )
    index_rate_option(p)
    p.add_argument(
        "--transpose",
        type=transpose_or_auto,
        default=0.0,
        metavar="N|auto",
        help="semitones within +-48 (+12 = an octave up), or auto: the whole semitones that "
        "bring IN's register (median F0 of its voiced frames) to the singer's (stored in the "
        "model file; `comostream voice list` shows them)",
    )
    block_option(
        p,
        f"stream on the realtime schedule in blocks of FRAMES frames ({FRAME_MS}) "
        "instead of offline (model steps of 512 frames)",
    )
    f0_option(p)
    noise_scale_option(p)
    backend_option(p)
    model_options(p)
    runtime_options(
        p,
        "1 with --block (one thread per stream: more wait for each other at every small "
        "model step on a busy machine and miss real time); offline, torch's",
        streaming=_streamed,
    )
    p.set_defaults(handler=_cmd_convert)
