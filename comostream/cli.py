"""The command-line face of comostream: ``comostream <command> ...``.

This module only parses arguments and dispatches; each command's work lives in the package that
owns it. Heavy imports (torch, numba, ...) happen inside the handlers so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from comostream import __version__

Handler = Callable[[argparse.Namespace], int]


class CommandError(RuntimeError):
    """A command cannot run as asked (printed as ``comostream: error: ...``, exit status 1)."""


def _config_options(
    parser: argparse.ArgumentParser, section: str, cls: type, names: Sequence[str]
) -> None:
    """Add ``--name`` options for config fields ``section.name``, typed from the dataclass.

    An option left unset keeps the value from the config file (or the built-in default).
    """
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name in names:
        tp = hints[name]
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f"cfg__{section}__{name}",
            type=tp,
            default=None,
            metavar=name.upper(),
            help=f"[{section}] {name}; default from the config ({defaults[name]})",
        )


def _load_config(args: argparse.Namespace) -> Any:
    """The config from ``--config`` (or the defaults) with command-line overrides applied."""
    from comostream.models.config import load_config

    overrides: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            overrides.setdefault(section, {})[name] = value
    return load_config(getattr(args, "config", None), overrides)


# ---------------------------------------------------------------- handlers


def _cmd_demo(args: argparse.Namespace) -> int:
    from comostream.realtime.files.demo import run_demo

    singers = args.speaker.split(",") if args.speaker else None
    return run_demo(_load_config(args), out_dir=args.out, example=args.input,
                    checkpoint=args.checkpoint, singers=singers)  # fmt: skip


def _cmd_prep_synth(args: argparse.Namespace) -> int:
    from comostream.training.synth import synthesize_corpus

    cfg = _load_config(args)
    manifest = synthesize_corpus(args.out_dir, cfg.corpus, cfg.audio, jobs=args.jobs)
    print(f"wrote {manifest}")
    return 0


def _cmd_prep_features(args: argparse.Namespace) -> int:
    from comostream.training.features import prepare_features

    index = prepare_features(args.data_dir, args.feat_dir, _load_config(args), force=args.force)
    print(index.summary())
    return 0


def _cmd_prep_gta(args: argparse.Namespace) -> int:
    from comostream.models.acoustic import AcousticModel
    from comostream.training.vocoder_gta import write_gta_features

    model = AcousticModel.from_checkpoint(args.model)
    out = write_gta_features(model, args.data, args.out, model_name=str(args.model))
    print(f"wrote {out} (GTA mels of {args.model}); fine-tune with `comostream train vocoder "
          f"--data {out} --init VOCODER`")
    return 0


def _cmd_bench_f0(args: argparse.Namespace) -> int:
    import json

    from comostream.bench.corpus import default_bench_corpus
    from comostream.bench.f0 import format_f0_table, run_f0_bench

    cfg = _load_config(args)
    corpus = args.corpus or default_bench_corpus(cfg)
    backends = args.backends.split(",") if args.backends else None
    results = run_f0_bench(
        corpus,
        backends=backends,
        split=args.split,
        max_utterances=args.max_utterances,
        cfg=cfg.f0,
    )
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print(format_f0_table(results))
    return 0


def _run_options(args: argparse.Namespace) -> Any:
    from comostream.training.acoustic import RunOptions

    return RunOptions(data=args.data, out=args.out, resume=args.resume, dry_run=args.dry_run)


def _say(text: str) -> None:
    """Print on the main process only (under torchrun every rank runs the command)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(text)


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_teacher

    state = train_teacher(_load_config(args), _run_options(args))
    _say(f"teacher: {state.step} steps; checkpoints in {args.out}/ (last.pt)")
    return 0


def _cmd_train_distill(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_distill

    state = train_distill(_load_config(args), args.teacher, _run_options(args))
    _say(f"distill: {state.step} steps; checkpoints in {args.out}/ (last.pt); "
          f"export with `comostream export {args.out}/last.pt -o MODEL.ckpt`")  # fmt: skip
    return 0


def _cmd_train_finetune(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import train_finetune

    state = train_finetune(_load_config(args), args.init, args.speaker, _run_options(args))
    _say(f"finetune: {state.step} steps; singer {args.speaker!r} added; "
          f"checkpoints in {args.out}/ (last.pt)")  # fmt: skip
    return 0


def _cmd_train_content(args: argparse.Namespace) -> int:
    from comostream.training.content import train_content

    path = train_content(
        _load_config(args), args.data, args.out, dry_run=args.dry_run, resume=args.resume
    )
    _say(f"wrote {path}")
    return 0


def _cmd_bench_content(args: argparse.Namespace) -> int:
    import json

    from comostream.bench.content import (
        DEFAULT_CHECKPOINT,
        format_content_report,
        run_content_bench,
    )

    result = run_content_bench(
        args.checkpoint or DEFAULT_CHECKPOINT, args.corpus, _load_config(args),
        threads=args.threads,
    )
    print(json.dumps(result, indent=2, sort_keys=True) if args.json
          else format_content_report(result))  # fmt: skip
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from comostream.training.acoustic import export_model

    path = export_model(args.checkpoint, args.output, args.vocoder, args.corpus)
    what = "with the vocoder" if args.vocoder else "no vocoder: pass --vocoder to include one"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; target model, {what})")
    return 0


def _cmd_bench_acoustic(args: argparse.Namespace) -> int:
    import json

    from comostream.bench.acoustic import format_acoustic_table, run_acoustic_bench

    result = run_acoustic_bench(args.checkpoint, args.data, split=args.split,
                                items=args.items, teacher_steps=args.teacher_steps)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_acoustic_table(result))
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _block_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1."""
    try:
        return [_positive_int(t) for t in text.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected frames like 1,2,4,8, got {text!r}") from None


def _cmd_train_vocoder(args: argparse.Namespace) -> int:
    from comostream.training.vocoder import train_vocoder

    state = train_vocoder(_load_config(args), args.data, args.out, corpus=args.corpus,
                          resume=args.resume, init=args.init, dry_run=args.dry_run)  # fmt: skip
    _say(f"vocoder: {state.step} steps; checkpoints in {args.out}/ (last.pt); "
         f"score it with `comostream bench vocoder --checkpoint {args.out}/last.pt`")  # fmt: skip
    return 0


def _cmd_bench_vocoder(args: argparse.Namespace) -> int:
    import json

    from comostream.bench.vocoder import format_vocoder_report, run_vocoder_bench

    result = run_vocoder_bench(args.checkpoint, args.data, args.corpus, split=args.split,
                               items=args.items, block=args.block,
                               baseline=args.baseline)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_vocoder_report(result))
    return 0


def _speaker_arg(text: str | None) -> Any:
    """``NAME`` or a mix ``NAME:WEIGHT,NAME:WEIGHT`` -> a name or ``{name: weight}``."""
    if text is None or ":" not in text:
        return text
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad singer mix entry {part!r}: use NAME:WEIGHT") from None  # fmt: skip
    return mix


def _cmd_convert(args: argparse.Namespace) -> int:
    from comostream.realtime.files.convert import convert_file

    cfg = _load_config(args)
    r = convert_file(args.input, args.output, speaker=args.speaker,
                     transpose=args.transpose, block=args.block, checkpoint=args.checkpoint,
                     vocoder=args.vocoder, realtime=cfg.realtime, device=args.device)  # fmt: skip
    mode = "offline" if r.block is None else f"streamed in blocks of {r.block} frames"
    print(f"wrote {r.output}: {r.seconds:.2f} s as {r.speaker}, {mode}; latency "
          f"{r.latency_ms:.1f} ms; compute {r.compute_s:.2f} s (RTF {r.rtf:.3f})")
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    import json

    import torch

    from comostream.bench.latency import (
        build_bench_models,
        format_latency_table,
        plot_latency,
        run_latency_bench,
    )

    cfg = _load_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available")
    rt = cfg.realtime if args.block is None else dataclasses.replace(
        cfg.realtime, block_frames=args.block)  # fmt: skip
    model, voc, source = build_bench_models(cfg, args.checkpoint, args.vocoder, args.device)
    result = run_latency_bench(model, voc, realtime=rt, device=args.device,
                               sample_rate=args.sample_rate, seconds=args.seconds,
                               source=source, sweep=args.sweep or ())  # fmt: skip
    if args.plot is not None:
        plot_latency(result, args.plot)
    if args.ws:
        from comostream.bench.latency import measure_ws_overhead

        result.update(measure_ws_overhead(model, voc, realtime=rt, sample_rate=args.sample_rate,
                                          seconds=min(args.seconds, 5.0)))  # fmt: skip
    result.pop("chunk_ms_all")
    print(json.dumps(result, indent=2) if args.json else format_latency_table(result))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from comostream.models.shipped import require_model
    from comostream.realtime.load import load_models
    from comostream.realtime.serve.server import EngineFactory, ServerConfig, run_server

    cfg = _load_config(args)
    rt = cfg.realtime if args.block is None else dataclasses.replace(
        cfg.realtime, block_frames=args.block)  # fmt: skip
    try:
        config = ServerConfig(host=args.host, port=args.port, token=args.token,
                              max_streams=args.max_streams, idle_timeout_s=args.idle_timeout,
                              max_queue_ms=rt.max_backlog_ms,
                              allow_origins=tuple(args.allow_origin))  # fmt: skip
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    checkpoint = require_model(args.checkpoint)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA device is available")
    model, voc = load_models(checkpoint, args.vocoder, args.device, rt)
    try:
        return run_server(EngineFactory(model, voc, rt), config)
    except OSError as exc:
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {exc}") from None


def _stream_errors() -> tuple[type[BaseException], ...]:
    from websockets.exceptions import WebSocketException

    from comostream.realtime.serve.client import ServerError

    return (ServerError, WebSocketException, OSError, TimeoutError)


def _cmd_client(args: argparse.Namespace) -> int:
    from comostream.realtime.serve.client import stream_file

    try:
        r = stream_file(args.input, args.output, args.url, fast=args.fast, speaker=args.speaker,
                        transpose=args.transpose, fmt=args.format, block=args.block,
                        token=args.token)  # fmt: skip
    except _stream_errors() as exc:
        raise CommandError(f"{args.url}: {exc}") from None
    seconds = r.output.shape[0] / r.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s as {r.ready['speaker']}; round trip p50 "
          f"{r.rtt_percentile(50):.1f} ms, p99 {r.rtt_percentile(99):.1f} ms; algorithmic "
          f"latency {r.ready['latency_ms']:.1f} ms; server compute p50 "
          f"{r.stats['compute_ms_p50']:.1f} ms per block; dropped {r.dropped_samples} samples")
    return 0


def _device_arg(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _cmd_bridge(args: argparse.Namespace) -> int:
    if args.list_devices:
        import sounddevice as sd

        print(sd.query_devices())
        return 0
    from comostream.realtime.serve.bridge import DeviceError, run_bridge

    try:
        s = run_bridge(args.url, args.input, args.output, sample_rate=args.sample_rate,
                       block=args.block, seconds=args.seconds, speaker=args.speaker,
                       transpose=args.transpose, token=args.token)  # fmt: skip
    except DeviceError as exc:
        raise CommandError(str(exc)) from None
    except _stream_errors() as exc:
        raise CommandError(f"{args.url}: {exc}") from None
    rtt = sorted(s.rtt_ms or [0.0])
    print(f"sent {s.sent_blocks} blocks; round trip p50 {rtt[len(rtt) // 2]:.1f} ms; "
          f"underruns {s.underruns}, server drops {s.dropped}, skipped {s.skipped} samples")
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    import json

    from comostream.bench.quality import format_quality_table, run_quality_bench
    from comostream.models.shipped import require_model

    checkpoint = require_model(args.checkpoint)
    transpose = args.transpose if args.transpose == "auto" else float(args.transpose)
    result = run_quality_bench(checkpoint, args.data, args.corpus, vocoder=args.vocoder,
                               distill=args.distill,
                               teacher_steps=args.teacher_steps, block=args.block,
                               transpose=transpose, split=args.split, max_lines=args.max_lines,
                               max_conversions=args.max_conversions)  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else format_quality_table(result))
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    from comostream.realtime.live.devices import LiveError, list_devices_text

    try:
        if args.list_devices:
            print(list_devices_text())
            return 0
        from comostream.realtime.live.app import LiveOptions, run_live

        opts = LiveOptions(
            input=args.input, output=args.output, sample_rate=args.samplerate, block=args.block,
            speaker=args.speaker, transpose=args.transpose, monitor=args.monitor,
            bypass=args.bypass, checkpoint=args.checkpoint, vocoder=args.vocoder,
            device=args.device, threads=args.threads, latency=args.latency,
            margin_blocks=args.margin, duration=args.duration, status_file=args.status_file)
        run_live(opts, _load_config(args).realtime)
    except LiveError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _latency_arg(text: str) -> str | float:
    """``low``, ``high`` or milliseconds -> what PortAudio takes (a name or seconds)."""
    if text in ("low", "high"):
        return text
    try:
        ms = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"use low, high or milliseconds, got {text!r}") from None
    if not ms > 0:
        raise argparse.ArgumentTypeError(f"latency must be positive, got {text}")
    return ms / 1000.0


def _non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _level_arg(text: str) -> float:
    """argparse type: a level within 0-1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0-1, got {value}")
    return value


def _cmd_config(args: argparse.Namespace) -> int:
    print(_load_config(args).to_json())
    return 0


# ---------------------------------------------------------------- parser


def _model_options(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --vocoder / --device for commands that run the engine."""
    p.add_argument("--checkpoint", type=Path, default=None, metavar="MODEL.ckpt",
                   help="inference file from `comostream export` (default: the shipped model)")
    p.add_argument("--vocoder", type=Path, default=None, metavar="VOC",
                   help="vocoder to use instead of the model file's: a `train vocoder` "
                   "checkpoint, or your BigVGAN / HiFi-GAN generator (runs in window mode)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command and option)."""
    from comostream.models.config import CorpusConfig, F0Config, FeaturesConfig

    parser = argparse.ArgumentParser(
        prog="comostream",
        description=(
            "Real-time streaming singing-voice conversion (consistency-distilled diffusion). "
            "Run 'comostream COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"comostream {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=None, metavar="TOML",
        help="config file overriding configs/default.toml (unknown keys are an error)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", parents=[common],
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
    p.add_argument("--checkpoint", type=Path, default=None, metavar="MODEL.ckpt",
                   help="inference file (default: the shipped model)")
    p.add_argument("--speaker", default=None, metavar="NAME[,NAME...]",
                   help="convert to these singers only (default: all)")
    p.set_defaults(handler=_cmd_demo)

    prep = sub.add_parser("prep", help="prepare data: the synthetic corpus, training features")
    prep_sub = prep.add_subparsers(dest="prep_command", metavar="WHAT", required=True)
    p = prep_sub.add_parser(
        "synth", parents=[common],
        help="synthesise a parallel multi-singer singing corpus with exact F0",
        description=(
            "Render every lyric line on its melody with every singer (flite, espeak-ng and "
            "festival voices re-sung with WORLD). Writes OUT_DIR/<singer>/<utt>.wav (24 kHz "
            "mono), <utt>.f0.npy (Hz per 256-sample frame, 0 = unvoiced) and manifest.jsonl."
        ),
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    _config_options(p, "corpus", CorpusConfig, ["singers", "minutes", "seed"])
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.set_defaults(handler=_cmd_prep_synth)
    p = prep_sub.add_parser(
        "features", parents=[common],
        help="cache mel, F0 and loudness of every utterance of a corpus for training",
        description=(
            "Compute frame-aligned features of every utterance of DATA_DIR (a synthetic corpus "
            "or DATA_DIR/<singer>/*.wav) into FEAT_DIR/<singer>/<utt>.npz plus index.jsonl and "
            "features.json. Unreadable or silent files are skipped and listed in skipped.jsonl; "
            "utterances already done are skipped unless --force."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("feat_dir", type=Path, metavar="FEAT_DIR")
    p.add_argument("--force", action="store_true", help="recompute every utterance")
    _config_options(p, "f0", F0Config, ["backend"])
    _config_options(p, "features", FeaturesConfig, ["f0_source"])
    p.set_defaults(handler=_cmd_prep_features)
    p = prep_sub.add_parser(
        "gta", parents=[common],
        help="the model's own (ground-truth-aligned) mels, to fine-tune the vocoder on",
        description=(
            "Copy FEAT_DIR into OUT_DIR with every utterance's mel replaced by the one-step "
            "target's output from that utterance's own features and singer (the realtime "
            "path's noise), frame-aligned with the recording. Fine-tuning the vocoder on them "
            "(`comostream train vocoder --data OUT_DIR --init VOCODER`) teaches it to render "
            "the model's smoother mels as clean singing. Utterances already written are kept."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="an inference file (`comostream export`)")
    p.add_argument("--data", type=Path, required=True, metavar="FEAT_DIR",
                   help="the features the model was trained on")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    p.set_defaults(handler=_cmd_prep_gta)

    bench = sub.add_parser("bench",
                           help="benchmarks: F0 backends, content encoder, acoustic model, vocoder")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    p = bench_sub.add_parser(
        "f0", parents=[common],
        help="accuracy and cost of each F0 backend on the synthetic corpus",
        description=(
            "Raw pitch accuracy (within 50 cents), voicing decision error and compute seconds "
            "per second of audio for each backend, against the exact F0 of the synthetic "
            "corpus's held-out split."
        ),
    )
    p.add_argument(
        "--corpus", type=Path, default=None,
        help="corpus folder (default: synthesise a small one under out/bench-corpus once)",
    )
    p.add_argument("--backends", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--max-utterances", type=int, default=None, help="cap for a quick run")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by backend")
    _config_options(p, "f0", F0Config, ["fmin", "fmax", "voicing_threshold"])
    p.set_defaults(handler=_cmd_bench_f0)

    _add_train_commands(sub, common)
    p = sub.add_parser(
        "export", help="write the inference file of a distilled model (target only)",
        description=(
            "Keep only what inference runs: the conditioner, the EMA target denoiser, the "
            "singer table and the config (no student, teacher or optimiser state)."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT",
                   help="a distill or finetune training checkpoint (RUN_DIR/last.pt)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.ckpt")
    p.add_argument("--vocoder", type=Path, default=None, metavar="VOC.ckpt",
                   help="a `comostream train vocoder` checkpoint to store in the file")
    p.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                   help="the training corpus: store the singers' voice prints (for the demo)")
    p.set_defaults(handler=_cmd_export)

    p = bench_sub.add_parser(
        "content", parents=[common],
        help="singer information left and content kept by the content encoder (held-out singers)",
        description=(
            "On the singers of a parallel synthetic corpus that the encoder never saw: a linear "
            "singer probe on content frames vs on mel frames (vs chance), a log-F0 probe, "
            "cross-singer agreement of frame-aligned renditions, the decoder's reconstruction "
            "error, and compute per second of audio in streaming mode."
        ),
    )
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a `train content` checkpoint (default out/content/last.pt)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="parallel corpus (default: the one the checkpoint was trained on)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(handler=_cmd_bench_content)

    p = bench_sub.add_parser(
        "acoustic", help="one-step target vs N-step teacher: mel distance and compute",
        description=(
            "On fixed validation segments (same noise for both), the mean absolute log-mel "
            "distance to the ground truth and the compute per second of audio of the distilled "
            "one-step target and of the teacher's Heun sampler, measured in one run."
        ),
    )
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="a distill training checkpoint (it holds the teacher too)")
    p.add_argument("--data", type=Path, required=True, metavar="FEAT_DIR")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("--items", type=int, default=16, help="segments of 256 frames (default 16)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="Heun steps (default: [edm] teacher_steps, 40)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_bench_acoustic)

    p = bench_sub.add_parser(
        "vocoder", parents=[common],
        help="vocoder resynthesis quality (MCD, F0 RMSE, PESQ-wb) and compute",
        description=(
            "Resynthesise the held-out lines (test split) of a feature folder from their mel "
            "and F0 and compare with the recordings: mel-cepstral distortion (dB), F0 RMSE "
            "(cents, harvest re-estimate), PESQ-wb (needs `pip install .[eval]`), mel L1, and "
            "compute per second of audio on one thread, one-shot and streamed."
        ),
    )
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                   help="a `train vocoder` checkpoint (or its export)")
    p.add_argument("--data", type=Path, default=None, metavar="FEAT_DIR",
                   help="feature folder (default: the one the vocoder was trained on)")
    p.add_argument("--corpus", type=Path, default=None, metavar="DIR",
                   help="recordings (default: the corpus the features were made from)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--items", type=int, default=None, help="at most this many utterances")
    p.add_argument("--block", type=_positive_int, default=4,
                   help="frames per streaming step for the compute figure (default 4)")
    p.add_argument("--baseline", action="store_true",
                   help="also score the untrained model (pure harmonic-plus-noise from the mel)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_cmd_bench_vocoder)

    p = sub.add_parser(
        "convert", parents=[common], help="convert a recording to another singer (a file)",
        description=(
            "Convert IN to a singer of the model and write OUT (WAV at IN's rate), through the "
            "streaming engine: offline (one model step for the whole file) or, with --block, on "
            "the realtime schedule (the same output, to float rounding). F0 follows the source, "
            "transposed by --transpose semitones."
        ),
    )
    p.add_argument("input", type=Path, metavar="IN", help="audio file (wav/flac/ogg, any rate)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.wav")
    p.add_argument("--speaker", type=_speaker_arg, default=None, metavar="NAME",
                   help="target singer, or a mix NAME:WEIGHT,NAME:WEIGHT (default: the first)")
    p.add_argument("--transpose", type=float, default=0.0, metavar="N",
                   help="semitones (+12 = an octave up)")
    p.add_argument("--block", type=_positive_int, default=None, metavar="FRAMES",
                   help="stream in blocks of FRAMES frames (10.67 ms each) instead of offline")
    _model_options(p)
    p.set_defaults(handler=_cmd_convert)

    p = bench_sub.add_parser(
        "quality", parents=[common],
        help="conversion quality on held-out lines: F0, singer similarity, MCD, DNSMOS",
        description=(
            "Convert every held-out line of every singer to every other singer (one-step "
            "target offline, the teacher with N steps when --distill is given, and the streaming "
            "schedule) and score F0 RMSE (cents) and voicing error against the source, "
            "Resemblyzer similarity to the target vs the source singer, DTW-aligned MCD against "
            "the target singer's own rendition, DNSMOS. Singer similarity and DNSMOS need "
            "`pip install .[eval]`."
        ),
    )
    p.add_argument("--checkpoint", type=Path, default=None, metavar="MODEL.ckpt",
                   help="inference file (default: the shipped model)")
    p.add_argument("--data", type=Path, default=None, metavar="FEAT_DIR",
                   help="the model's feature folder (names the corpus)")
    p.add_argument("--corpus", type=Path, default=None, metavar="DIR", help="the corpus")
    p.add_argument("--distill", type=Path, default=None, metavar="CKPT",
                   help="the distillation checkpoint, for the teacher column")
    p.add_argument("--vocoder", type=Path, default=None, metavar="VOC.ckpt",
                   help="score with this vocoder (a `train vocoder` checkpoint or export) instead "
                        "of the one in the model file")
    p.add_argument("--teacher-steps", type=_positive_int, default=None, metavar="N")
    p.add_argument("--block", type=_positive_int, default=None, metavar="FRAMES",
                   help="streaming block (default: [realtime] block_frames of the model)")
    p.add_argument("--transpose", default="auto", metavar="auto|N",
                   help="semitones, or auto: to the target singer's register (default)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--max-lines", type=_positive_int, default=None, metavar="N")
    p.add_argument("--max-conversions", type=_positive_int, default=None, metavar="N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_bench_quality)

    p = bench_sub.add_parser(
        "latency", parents=[common],
        help="latency and compute of the streaming engine (vs the window-recompute strategy)",
        description=(
            "Stream the bundled example through the engine in real-time-sized chunks and report "
            "the algorithmic latency, the end-to-end latency of an onset on a simulated "
            "real-time clock, per-chunk compute p50/p99 per stage, the real-time factor, the "
            "teacher's N-step cost vs the one-step target, and the cost of re-running the same "
            "models on 2.5 s of context per 250 ms block. Without --checkpoint the models have "
            "random weights of the configured sizes (compute does not depend on the weights)."
        ),
    )
    p.add_argument("--block", type=_positive_int, default=None, metavar="FRAMES",
                   help="frames per model step (default: [realtime] block_frames)")
    p.add_argument("--sample-rate", type=int, default=48000, metavar="HZ",
                   help="input/output rate, as a sound card's (default 48000)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio streamed (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw the per-chunk compute distribution against the block duration")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ws", action="store_true",
                   help="also stream through a loopback WebSocket server and report its round "
                   "trip overhead (ws_overhead_ms)")
    p.add_argument("--sweep", type=_block_list, default=None, metavar="FRAMES[,FRAMES...]",
                   help="also measure latency, RTF and the window-recompute ratio at these "
                        "block sizes, e.g. 1,2,4,8 (block_sweep)")
    _model_options(p)
    p.set_defaults(handler=_cmd_bench_latency)
    _add_stream_commands(sub, common)
    _add_live_command(sub, common)

    p = sub.add_parser(
        "config", parents=[common], help="print the resolved configuration as JSON"
    )
    p.set_defaults(handler=_cmd_config)
    return parser


def _add_live_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """``comostream live``: microphone to speaker through the engine."""
    p = sub.add_parser(
        "live", parents=[common], help="convert a microphone live (sound card in and out)",
        description=(
            "Convert the input device's signal live and play it on the output device. A status "
            "line (latency, RTF, xruns, dropped blocks, F0, singer) is refreshed twice a second; "
            "type commands while it runs: s NAME (singer or NAME:W,NAME:W mix), t N (transpose), "
            "b (bypass), m LEVEL (monitor), q (quit); Ctrl-C stops. Latency: the converter's "
            "(block + analysis overhang + lookaheads + output buffer) plus the devices' buffers."
        ),
    )
    p.add_argument("--list-devices", action="store_true",
                   help="list the sound devices (index, name, channels, default rate) and exit")
    p.add_argument("--input", type=_device_arg, default=None, metavar="DEV",
                   help="input device: index or part of its name (default: the system's)")
    p.add_argument("--output", type=_device_arg, default=None, metavar="DEV",
                   help="output device: index or part of its name (default: the system's)")
    p.add_argument("--samplerate", type=_positive_int, default=None, metavar="HZ",
                   help="device sample rate (default: the input device's)")
    p.add_argument("--block", type=_positive_int, default=None, metavar="FRAMES",
                   help="frames per model step, 10.67 ms each (default: [realtime] block_frames)")
    p.add_argument("--speaker", type=_speaker_arg, default=None, metavar="NAME",
                   help="target singer, or a mix NAME:WEIGHT,NAME:WEIGHT (default: the first)")
    p.add_argument("--transpose", type=float, default=0.0, metavar="N",
                   help="semitones (+12 = an octave up)")
    p.add_argument("--monitor", type=_level_arg, default=0.0, metavar="LEVEL",
                   help="mix the dry input into the output at LEVEL, 0-1 (default 0)")
    p.add_argument("--bypass", action="store_true",
                   help="start with the dry signal (b toggles)")
    p.add_argument("--latency", type=_latency_arg, default="high", metavar="low|high|MS",
                   help="device buffering asked of PortAudio (default high: no crackle)")
    p.add_argument("--margin", type=_non_negative_int, default=1, metavar="BLOCKS",
                   help="compute margin of the output buffer, in blocks, beyond one block and "
                   "one device callback (default 1; more if a busy CPU makes it late)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after SECONDS (default: run until q or Ctrl-C)")
    p.add_argument("--status-file", type=Path, default=None, metavar="FILE.json",
                   help="rewrite the status as JSON here with every status line")
    _model_options(p)
    p.set_defaults(handler=_cmd_live)


def _add_stream_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``comostream serve|client|bridge``: WebSocket streaming (docs/protocol.md)."""
    p = sub.add_parser(
        "serve", parents=[common], help="WebSocket streaming server for DAW bridges and browsers",
        description=(
            "Serve the streaming engine over WebSocket (ws://HOST:PORT/ws, protocol in "
            "docs/protocol.md): one engine per connection, bounded queues that drop the oldest "
            "blocks when a client or the server falls behind. Also serves a browser page at / "
            "(microphone -> server -> playback) and GET /health. SIGTERM closes sessions "
            "gracefully (close code 1001)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any)")
    p.add_argument("--token", default=None, help="secret every client must send in its hello")
    p.add_argument("--max-streams", type=_positive_int, default=8, metavar="N",
                   help="concurrent streams; newcomers are refused with close code 4007")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="close a session that sends nothing for S seconds (default 30)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser origin allowed besides the server's own page (repeatable)")
    p.add_argument("--block", type=_positive_int, default=None, metavar="FRAMES",
                   help="frames per model step (default: [realtime] block_frames)")
    _model_options(p)
    p.set_defaults(handler=_cmd_serve)

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="server URL")
    conn.add_argument("--speaker", type=_speaker_arg, default=None, metavar="NAME",
                      help="target singer, or a mix NAME:WEIGHT,... (default: the server's)")
    conn.add_argument("--transpose", type=float, default=0.0, metavar="N", help="semitones")
    conn.add_argument("--token", default=None, help="the server's --token")
    conn.add_argument("--block", type=_positive_int, default=None, metavar="SAMPLES",
                      help="samples per frame (default: one model step at the audio's rate)")
    p = sub.add_parser(
        "client", parents=[conn], help="stream a file through a `comostream serve` server",
        description=(
            "Stream IN to the server at real-time pace (or --fast), write the converted audio "
            "(float WAV at IN's rate, aligned to IN) and print the round-trip latency p50/p99."
        ),
    )
    p.add_argument("input", type=Path, metavar="IN", help="audio file (mono or stereo)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.wav")
    p.add_argument("--fast", action="store_true",
                   help="send as fast as the server answers (a few blocks in flight)")
    p.add_argument("--format", choices=["f32le", "s16le"], default="f32le",
                   help="sample format on the wire (default f32le)")
    p.set_defaults(handler=_cmd_client)

    p = sub.add_parser(
        "bridge", parents=[conn], help="sound devices <-> server (route a DAW send through it)",
        description=(
            "Stream an input device to the server and play the converted audio on an output "
            "device: route a DAW send to a virtual device, record or monitor the output."
        ),
    )
    p.add_argument("--input", type=_device_arg, default=None, metavar="DEV",
                   help="input device (index or name; default: the system's)")
    p.add_argument("--output", type=_device_arg, default=None, metavar="DEV",
                   help="output device (index or name; default: the system's)")
    p.add_argument("--sample-rate", type=int, default=48000, metavar="HZ")
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.set_defaults(handler=_cmd_bridge)


def _add_train_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``comostream train teacher|distill|finetune|content``: one loop, options from [train]."""
    from comostream.models.config import ContentConfig, TrainConfig

    train = sub.add_parser(
        "train", help="train: acoustic teacher, distill, finetune; content encoder; vocoder"
    )
    train_sub = train.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    stages = {
        "teacher": ("the EDM diffusion teacher (conditioner + denoiser)", _cmd_train_teacher),
        "distill": ("consistency distillation of a teacher: student + EMA target",
                    _cmd_train_distill),
        "finetune": ("add a singer to a distilled model and learn its embedding",
                     _cmd_train_finetune),
    }  # fmt: skip
    for name, (text, handler) in stages.items():
        p = train_sub.add_parser(name, parents=[common], help=text, description=(
            f"Train {text}. Works under torchrun (DDP) too; writes config.json, stats.jsonl, "
            "TensorBoard scalars and checkpoints (ckpt_STEP.pt, last.pt) to --out."))  # fmt: skip
        data_help = ("features from `comostream prep features`" if name != "finetune" else
                     "features holding the new singer, or a folder of its recordings")
        p.add_argument("--data", type=Path, required=True, metavar="DIR", help=data_help)
        p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
        p.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                       help="continue a run exactly from its checkpoint")
        p.add_argument("--dry-run", action="store_true",
                       help="one step, one validation, one checkpoint, then stop")
        _config_options(p, "train", TrainConfig, ["max_steps", "batch_size", "lr", "seed"])
        p.set_defaults(handler=handler)
        if name == "distill":
            p.add_argument("--teacher", type=Path, required=True, metavar="TEACHER_CKPT")
        if name == "finetune":
            p.add_argument("--init", type=Path, required=True, metavar="CKPT",
                           help="a distill (or finetune) checkpoint")
            p.add_argument("--speaker", required=True, metavar="NAME",
                           help="the new singer (a singer of FEAT_DIR)")
    p = train_sub.add_parser(
        "content", parents=[common],
        help="train the built-in streaming content encoder",
        description=(
            "Train the content encoder on the first --train-singers singers of CORPUS_DIR: it "
            "sees WORLD-perturbed audio (pitch, formants, EQ, breathiness, level), a decoder "
            "told the original F0, loudness and singer rebuilds the original mel, and a singer "
            "classifier is fooled adversarially. Writes RUN_DIR/ckpt_*.pt and last.pt (kind "
            "'content'); perturbed mels are cached under RUN_DIR/perturbed."
        ),
    )
    p.add_argument("--data", type=Path, required=True, metavar="CORPUS_DIR",
                   help="a corpus (`comostream prep synth` or CORPUS_DIR/<singer>/*.wav)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--dry-run", action="store_true",
                   help="one step, one validation, one checkpoint")
    p.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                   help="continue from a checkpoint of this run")
    _config_options(p, "train", TrainConfig, ["max_steps", "batch_size", "lr", "seed"])
    _config_options(p, "content", ContentConfig, ["train_singers"])
    p.set_defaults(handler=_cmd_train_content)
    p = train_sub.add_parser(
        "vocoder", parents=[common],
        help="train the built-in streaming harmonic-plus-noise vocoder",
        description=(
            "Train the vocoder on random segments of the train split of FEAT_DIR (ground-truth "
            "mel and F0) against the corpus recordings: multi-resolution STFT + mel L1, plus "
            "an LS-GAN with feature matching from [vocoder] adv_start when adv_weight > 0. "
            "Writes config.json, stats.jsonl and checkpoints (ckpt_STEP.pt, last.pt; kind "
            "'vocoder') to --out."
        ),
    )
    p.add_argument("--data", type=Path, required=True, metavar="FEAT_DIR",
                   help="features from `comostream prep features`")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--corpus", type=Path, default=None, metavar="CORPUS_DIR",
                   help="the recordings (default: the corpus FEAT_DIR was made from)")
    p.add_argument("--resume", type=Path, default=None, metavar="CKPT",
                   help="continue a run exactly from its checkpoint")
    p.add_argument("--init", type=Path, default=None, metavar="VOCODER",
                   help="fine-tune: start from this vocoder's weights (same sizes), fresh "
                        "optimisers, step 0; e.g. on `comostream prep gta` features")
    p.add_argument("--dry-run", action="store_true",
                   help="one step, one validation, one checkpoint, then stop")
    _config_options(p, "train", TrainConfig, ["max_steps", "batch_size", "lr", "seed"])
    p.set_defaults(handler=_cmd_train_vocoder)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``comostream`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from comostream.models.config import ConfigError

    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"comostream: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("comostream: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"comostream: error: {exc}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input problem: printed plainly, no traceback."""
    from comostream.models.audio import AudioError
    from comostream.models.checkpoint_io import CheckpointError
    from comostream.models.conditioner import UnknownSpeakerError
    from comostream.training.corpus import CorpusError
    from comostream.training.feature_index import FeatureError
    from comostream.training.voices import ToolMissingError

    return (AudioError, CorpusError, FeatureError, CheckpointError, ToolMissingError,
            UnknownSpeakerError, FileNotFoundError, CommandError)  # fmt: skip

