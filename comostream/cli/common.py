"""What every command shares: option helpers, argument types, config loading, errors.

One spelling per idea, defined here once and used by every command module:

* ``--config TOML`` (:data:`config_parent`) and ``--NAME`` overrides of config fields
  (:func:`config_options`); ``--block FRAMES`` is the override of ``[realtime] block_frames``
  (:func:`block_option`), so handlers read ``cfg.realtime`` and never patch it;
* ``--backend torch|onnxruntime|onnxruntime-int8|inductor`` is the override of
  ``[realtime] backend`` (:func:`backend_option`);
* ``--checkpoint`` / ``--vocoder`` (:func:`model_options`), ``--threads`` / ``--device``
  (:func:`runtime_options`, applied by :func:`use_runtime`);
* ``--speaker NAME`` or ``NAME:WEIGHT,NAME:WEIGHT`` (:func:`speaker_arg`), ``--sample-rate HZ``.

Nothing here imports torch at module level: ``comostream --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FRAME_MS",
    "OUTPUT_FORMATS_HELP",
    "STREAM_THREADS",
    "CommandError",
    "Subparsers",
    "backend_arg",
    "backend_option",
    "block_frames_arg",
    "block_list",
    "block_option",
    "config_from_args",
    "config_option",
    "config_options",
    "config_parent",
    "index_rate_option",
    "level_arg",
    "model_options",
    "non_negative_int",
    "overridden",
    "port_arg",
    "positive_int",
    "processes_arg",
    "positive_seconds",
    "runtime_options",
    "runtime_threads",
    "say",
    "sound_device_arg",
    "speaker_arg",
    "streams",
    "output_options",
    "transpose_arg",
    "transpose_or_auto",
    "use_runtime",
    "user_errors",
]

Subparsers = Any  # argparse's private _SubParsersAction: the object add_subparsers returns

_CFG_PREFIX = "cfg__"  # dest of a config override: cfg__SECTION__NAME
FRAME_MS = "10.67 ms each at 24 kHz / hop 256"
# models/audio.py's OUTPUT_FORMATS and DEFAULT_SUBTYPES, said for --help (no soundfile import)
OUTPUT_FORMATS_HELP = (
    "The output's format follows its extension: .wav is 32-bit float (the samples as computed, "
    "never clipped), .flac 24-bit PCM (clipped to +-1), .ogg Ogg Vorbis; --subtype picks "
    "another sample format, e.g. PCM_16 for 16-bit."
)


class CommandError(RuntimeError):
    """A command cannot run as asked (printed as ``comostream: error: ...``, exit status 1)."""


# ---------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def processes_arg(text: str) -> int | str:
    """argparse type: ``auto`` or a number of processes >= 1 (``serve --processes``)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def transpose_arg(text: str) -> float:
    """argparse type: semitones, finite, within +-48
    (:func:`~comostream.models.limits.check_transpose`)."""
    from comostream.models.limits import check_transpose  # standard library only

    try:
        return check_transpose(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def index_rate_option(p: argparse.ArgumentParser) -> None:
    """``--index-rate R``: the retrieval index blend in [0, 1]
    (:mod:`comostream.models.retrieval`)."""
    from comostream.models.limits import DEFAULT_INDEX_RATE, check_index_rate

    def rate(text: str) -> float:
        try:
            return check_index_rate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument(
        "--index-rate",
        type=rate,
        default=DEFAULT_INDEX_RATE,
        metavar="R",
        help="how far each content frame moves towards the singer's own nearest frames (the "
        f"model file's retrieval index; 0 = off, 1 = all the way; default {DEFAULT_INDEX_RATE}; "
        "no effect for a singer without an index)",
    )


def transpose_or_auto(text: str) -> str | float:
    """argparse type: ``auto`` or semitones (:func:`transpose_arg`)."""
    return "auto" if text == "auto" else transpose_arg(text)


def port_arg(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is an integer 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def level_arg(text: str) -> float:
    """argparse type: a level within 0-1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0-1, got {value}")
    return value


def block_frames_arg(text: str) -> int:
    """argparse type: frames per model step, 1-512
    (:func:`~comostream.models.limits.check_block_frames`)."""
    from comostream.models.limits import check_block_frames  # standard library only

    try:
        return check_block_frames(int(text))
    except ValueError as exc:
        msg = str(exc) if "block" in str(exc) else f"expected a number of frames, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def block_list(text: str) -> list[int]:
    """argparse type: comma-separated frame counts (each :func:`block_frames_arg`)."""
    try:
        return [block_frames_arg(t) for t in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"expected frames like 1,2,4,8, got {text!r} ({exc})"
        ) from None


def speaker_arg(text: str) -> str | dict[str, float]:
    """argparse type: ``NAME`` or a mix ``NAME:WEIGHT,NAME:WEIGHT`` -> a name or ``{name: w}``."""
    if ":" not in text:
        if "," in text:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a mix gives each singer a weight (NAME:WEIGHT,NAME:WEIGHT); to "
                "convert to several singers, repeat --speaker"
            )
        return text
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        try:
            w = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad singer mix entry {part!r}: use NAME:WEIGHT"
            ) from None
        mix[name.strip()] = w
    from comostream.models.mix import BadMixError, check_mix  # torch-free

    try:
        return check_mix(mix)
    except BadMixError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def sound_device_arg(text: str) -> int | str:
    """argparse type: a sound device, by index or by part of its name."""
    return int(text) if text.isdigit() else text


# ---------------------------------------------------------------- options


def config_option(
    parser: argparse.ArgumentParser,
    section: str,
    cls: type,
    name: str,
    *,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    help: str | None = None,
) -> None:
    """Add an override of config field ``[section] name`` (default spelling ``--name``).

    The option is typed from the dataclass unless ``type`` is given; left unset, the value comes
    from the config file (or the built-in default). :func:`config_from_args` applies it.
    """
    hints = typing.get_type_hints(cls)
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    parser.add_argument(
        flag or "--" + name.replace("_", "-"),
        dest=f"{_CFG_PREFIX}{section}__{name}",
        type=type or hints[name],
        default=None,
        metavar=metavar or name.upper(),
        help=help or f"[{section}] {name}; default from the config ({default})",
    )


def config_options(
    parser: argparse.ArgumentParser, section: str, cls: type, names: Sequence[str]
) -> None:
    """:func:`config_option` for each of ``names`` of ``[section]``."""
    for name in names:
        config_option(parser, section, cls, name)


def block_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--block FRAMES``: the override of ``[realtime] block_frames`` (frames per model step)."""
    from comostream.models.config import RealtimeConfig

    config_option(
        parser,
        "realtime",
        RealtimeConfig,
        "block_frames",
        flag="--block",
        type=block_frames_arg,
        metavar="FRAMES",
        help=help or f"frames per model step ({FRAME_MS}); default: [realtime] block_frames",
    )


def noise_scale_arg(text: str) -> float:
    """argparse type: ``[realtime] noise_scale``
    (:func:`~comostream.models.limits.check_noise_scale`)."""
    from comostream.models.limits import check_noise_scale  # standard library only

    try:
        return check_noise_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def noise_scale_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--noise-scale S``: the override of ``[realtime] noise_scale`` (the one-step model's
    input noise, 1 = as distilled)."""
    from comostream.models.config import NOISE_SCALE, RealtimeConfig

    config_option(
        parser,
        "realtime",
        RealtimeConfig,
        "noise_scale",
        type=noise_scale_arg,
        metavar="S",
        help=help
        or "the one-step model's input noise, 0-2: 1 draws it as it was distilled, lower "
        "draws closer to the model's average sound, more natural and as close to the singer "
        "(docs/training.md, noise scale); 0 = no noise; default: [realtime] noise_scale "
        f"({NOISE_SCALE:g})",
    )


def backend_arg(text: str, choices: tuple[str, ...] | None = None) -> str:
    """argparse type: a model-step backend (:data:`~comostream.models.config.STEP_BACKENDS`,
    or ``choices``)."""
    from comostream.models.config import STEP_BACKENDS  # no torch import

    choices = choices or STEP_BACKENDS
    if text not in choices:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}, got {text!r}")
    return text


def backend_choice_arg(text: str) -> str:
    """argparse type: ``[realtime] backend`` (a step backend, or ``auto``)."""
    from comostream.models.config import BACKEND_CHOICES

    return backend_arg(text, BACKEND_CHOICES)


def backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend auto|torch|onnxruntime|onnxruntime-int8|inductor``: the override of
    ``[realtime] backend`` (what runs the streaming model step)."""
    from comostream.models.config import RealtimeConfig

    config_option(
        parser,
        "realtime",
        RealtimeConfig,
        "backend",
        type=backend_choice_arg,
        metavar="{auto,torch,onnxruntime,onnxruntime-int8,inductor}",
        help="what runs the model step: torch (traced on a CPU), onnxruntime (the model "
        "exported to ONNX at start-up, about 3 s; needs the onnx extra), onnxruntime-int8 (the "
        "same with its matrix products' weights in 8 bits: 20-30%% faster, output within "
        "about 30 dB SNR of the float step, the same by speaker similarity and DNSMOS) or "
        "inductor (compiled to C++ by torch.compile at start-up, about 30 s per block shape; "
        "needs g++ and python3-dev); all but torch need the built-in vocoder and the CPU; "
        "auto: serve's batched steps on onnxruntime-int8 when onnxruntime is installed "
        "(onnxruntime on a CPU without int8 kernels: x86-64 without AVX2), everything else "
        "on torch; default: [realtime] backend (auto)",
    )


def backend_list(text: str) -> list[str]:
    """argparse type: comma-separated model-step backends, each once (:func:`backend_arg`)."""
    names = [backend_arg(t.strip()) for t in text.split(",")]
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"each backend once, got {text!r}")
    return names


def f0_backend_arg(text: str) -> str:
    """argparse type: a streaming F0 backend name (``[f0] backend`` for the engine)."""
    from comostream.models.config import STREAMING_F0_BACKENDS

    if text not in STREAMING_F0_BACKENDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot stream; streaming F0 backends: {', '.join(STREAMING_F0_BACKENDS)}"
        )
    return text


def f0_option(parser: argparse.ArgumentParser) -> None:
    """``--f0 NAME``: the override of ``[f0] backend`` (the engine's streaming F0 tracker)."""
    from comostream.models.config import F0Config

    config_option(
        parser,
        "f0",
        F0Config,
        "backend",
        flag="--f0",
        type=f0_backend_arg,
        metavar="NAME",
        help="streaming F0 tracker: yin-track or yin (docs/models.md#f0-backends); "
        "default: [f0] backend",
    )


def overridden(args: argparse.Namespace, section: str, name: str) -> bool:
    """Whether the command line set config field ``[section] name`` (e.g. ``--block``)."""
    return getattr(args, f"{_CFG_PREFIX}{section}__{name}", None) is not None


def _config_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="TOML",
        help="config file overriding configs/default.toml (unknown keys are an error)",
    )
    return parent


config_parent = _config_parent()  # parents=[config_parent]: ``--config TOML``


def model_options(
    parser: argparse.ArgumentParser,
    checkpoint_help: str = "inference file from `comostream export` (default: the shipped model)",
    *,
    vocoder: bool = True,
    required: bool = False,
    metavar: str = "MODEL.ckpt",
) -> None:
    """``--checkpoint`` (and ``--vocoder``) for commands that run a model."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        required=required,
        metavar=metavar,
        help=checkpoint_help,
    )
    if vocoder:
        parser.add_argument(
            "--vocoder",
            type=Path,
            default=None,
            metavar="VOC",
            help="vocoder to use instead of the model file's: a `train vocoder` checkpoint, or "
            "your BigVGAN / HiFi-GAN generator (runs in window mode)",
        )


def output_options(parser: argparse.ArgumentParser) -> None:
    """``-o/--output OUT`` (the extension picks the format) and ``--subtype NAME`` (the output
    file's sample format, checked against its format)."""
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="output file: OUT.wav, OUT.flac or OUT.ogg (the extension picks the format)",
    )
    parser.add_argument(
        "--subtype",
        type=str.upper,
        default=None,
        metavar="NAME",
        help="sample format of the output (a soundfile subtype: PCM_16, PCM_24, PCM_32, FLOAT "
        "for WAV; PCM_16, PCM_24 for FLAC; VORBIS, OPUS for OGG); default: FLOAT for .wav, "
        "PCM_24 for .flac, VORBIS for .ogg",
    )


STREAM_THREADS = 1  # torch intra-op threads per stream unless --threads says otherwise
STREAM_THREADS_HELP = (
    "1 (one thread per stream: on a busy or shared machine more threads wait for each other at "
    "every small model step and miss real time; torch's intra-op setting is process-wide)"
)


def runtime_options(
    parser: argparse.ArgumentParser,
    threads_default: str = "torch's",
    *,
    streaming: bool | Callable[[argparse.Namespace], bool] = False,
) -> None:
    """``--threads N`` and ``--device cpu|cuda``, applied by :func:`use_runtime`. ``streaming``
    (or a test of the parsed arguments, e.g. ``--block`` given): the command streams, so it
    runs on :data:`STREAM_THREADS` unless ``--threads`` says otherwise."""
    if streaming is True and threads_default == "torch's":
        threads_default = STREAM_THREADS_HELP
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"torch CPU (intra-op) threads (default: {threads_default})",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the models run (default cpu)",
    )
    parser.set_defaults(runtime_streaming=streaming)


def runtime_threads(args: argparse.Namespace) -> int | None:
    """The torch intra-op threads the command runs on: ``--threads``, else
    :data:`STREAM_THREADS` for a streaming command (:func:`runtime_options`), else None
    (torch's default)."""
    if getattr(args, "threads", None):
        return int(args.threads)
    return STREAM_THREADS if streams(args) else None


def streams(args: argparse.Namespace) -> bool:
    """Whether the parsed command streams (``streaming`` of :func:`runtime_options`)."""
    streaming = getattr(args, "runtime_streaming", False)
    return bool(streaming(args) if callable(streaming) else streaming)


def use_runtime(args: argparse.Namespace) -> str:
    """Apply :func:`runtime_threads` (and, streaming, one inter-op thread where torch still
    allows it) and check ``--device``; returns the torch device to run on."""
    import torch

    threads = runtime_threads(args)
    if threads:
        torch.set_num_threads(threads)
    if threads and streams(args):
        try:  # only before any parallel work has started (once per process)
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available (use --device cpu)")
    return str(args.device)


# ---------------------------------------------------------------- config, output, errors


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~comostream.models.config.Config` of ``--config`` (or the defaults) with the
    command line's overrides (:func:`config_option`) applied."""
    from comostream.models.config import load_config

    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key.startswith(_CFG_PREFIX) and value is not None:
            _, section, name = key.split("__", 2)
            overrides.setdefault(section, {})[name] = value
    return load_config(getattr(args, "config", None), overrides)


def say(text: str) -> None:
    """Print on the main process only (under torchrun every rank runs the command)."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input problem: printed plainly, no traceback."""
    from comostream.models.audio import AudioError
    from comostream.models.checkpoint_io import CheckpointError
    from comostream.models.conditioner import UnknownSpeakerError
    from comostream.models.register import NoRegisterError
    from comostream.realtime.compiled import InductorBackendError
    from comostream.realtime.onnx_step import OnnxBackendError
    from comostream.training.corpus import CorpusError
    from comostream.training.feature_index import FeatureError
    from comostream.training.runlog import RunWriteError
    from comostream.training.voices import ToolMissingError

    return (
        AudioError,
        CorpusError,
        FeatureError,
        CheckpointError,
        RunWriteError,
        ToolMissingError,
        UnknownSpeakerError,
        NoRegisterError,
        OnnxBackendError,
        InductorBackendError,
        FileNotFoundError,
        CommandError,
    )
