"""``comostream live``: microphone to speaker through the engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from comostream.cli.common import (
    CommandError,
    Subparsers,
    backend_option,
    block_option,
    config_from_args,
    config_parent,
    f0_option,
    index_rate_option,
    level_arg,
    model_options,
    noise_scale_option,
    non_negative_int,
    positive_int,
    runtime_options,
    sound_device_arg,
    speaker_arg,
    transpose_or_auto,
    use_runtime,
)

__all__ = ["register"]


def latency_arg(text: str) -> str | float:
    """argparse type: ``low``, ``high`` or milliseconds -> what PortAudio takes (a name or s)."""
    if text in ("low", "high"):
        return text
    try:
        ms = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"use low, high or milliseconds, got {text!r}") from None
    if not ms > 0:
        raise argparse.ArgumentTypeError(f"latency must be positive, got {text}")
    return ms / 1000.0


def _cmd_live(args: argparse.Namespace) -> int:
    from comostream.realtime.live.devices import LiveError, list_devices_text

    try:
        if args.list_devices:
            print(list_devices_text())
            return 0
        from comostream.realtime.live.app import LiveOptions, run_live

        cfg = config_from_args(args)
        opts = LiveOptions(
            input=args.input,
            output=args.output,
            sample_rate=args.sample_rate,
            speaker=args.speaker,
            transpose=args.transpose,
            index_rate=args.index_rate,
            monitor=args.monitor,
            bypass=args.bypass,
            checkpoint=args.checkpoint,
            vocoder=args.vocoder,
            device=use_runtime(args),
            threads=args.threads,
            latency=args.latency,
            margin_blocks=args.margin,
            duration=args.duration,
            status_file=args.status_file,
        )
        run_live(opts, cfg.realtime, f0=cfg.f0)  # --block / --f0 are in cfg
    except LiveError as exc:
        raise CommandError(str(exc)) from None
    return 0


def register(sub: Subparsers) -> None:
    """Add ``live`` to ``sub``."""
    from comostream.realtime.live.console import COMMANDS  # no torch: --help stays instant

    commands = "; ".join(f"{typed} ({what})" for typed, what in COMMANDS)
    p = sub.add_parser(
        "live",
        parents=[config_parent],
        help="convert a microphone live (sound card in and out)",
        description=(
            "Convert the input device's signal live and play it on the output device. A status "
            "line (latency, RTF, xruns, dropped blocks, F0, singer) is refreshed twice a second; "
            f"type commands while it runs, then Enter: {commands}. Latency: the converter's "
            "(block + analysis overhang + lookaheads + output buffer) plus the devices' buffers."
        ),
    )
    p.add_argument(
        "--list-devices",
        action="store_true",
        help="list the sound devices (index, name, channels, default rate) and exit",
    )
    p.add_argument(
        "--input",
        type=sound_device_arg,
        default=None,
        metavar="DEV",
        help="input device: index or part of its name (default: the system's)",
    )
    p.add_argument(
        "--output",
        type=sound_device_arg,
        default=None,
        metavar="DEV",
        help="output device: index or part of its name (default: the system's)",
    )
    p.add_argument(
        "--sample-rate",
        type=positive_int,
        default=None,
        metavar="HZ",
        help="device sample rate (default: the input device's)",
    )
    block_option(p)
    f0_option(p)
    noise_scale_option(p)
    backend_option(p)
    p.add_argument(
        "--speaker",
        type=speaker_arg,
        default=None,
        metavar="NAME",
        help="target singer, NAME or a mix NAME:WEIGHT,NAME:WEIGHT (default: the first)",
    )
    index_rate_option(p)
    p.add_argument(
        "--transpose",
        type=transpose_or_auto,
        default=0.0,
        metavar="N",
        help="semitones within +-48 (+12 = an octave up), or auto: after about a second of "
        "voicing, the whole semitones from your register to the singer's (kept; the model "
        "must store registers)",
    )
    p.add_argument(
        "--monitor",
        type=level_arg,
        default=0.0,
        metavar="LEVEL",
        help="mix the dry input into the output at LEVEL, 0-1 (default 0)",
    )
    p.add_argument("--bypass", action="store_true", help="start with the dry signal (b toggles)")
    p.add_argument(
        "--latency",
        type=latency_arg,
        default="high",
        metavar="low|high|MS",
        help="device buffering asked of PortAudio (default high: no crackle)",
    )
    p.add_argument(
        "--margin",
        type=non_negative_int,
        default=1,
        metavar="BLOCKS",
        help="compute margin of the output buffer, in blocks, beyond one block and "
        "one device callback (default 1; more if a busy CPU makes it late)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after SECONDS (default: run until q or Ctrl-C)",
    )
    p.add_argument(
        "--status-file",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="rewrite the status as JSON here with every status line",
    )
    model_options(p)
    runtime_options(p, streaming=True)
    p.set_defaults(handler=_cmd_live)
