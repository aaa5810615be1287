"""``comostream bench ...``: measurements (f0, content, models, quality, latency, gpu, memory,
serve, busy)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comostream.cli.common import (
    FRAME_MS,
    CommandError,
    Subparsers,
    backend_list,
    backend_option,
    block_list,
    block_option,
    config_from_args,
    config_options,
    config_parent,
    model_options,
    noise_scale_option,
    overridden,
    positive_int,
    runtime_options,
    transpose_or_auto,
    use_runtime,
)

__all__ = ["register"]

SPLITS = ["train", "valid", "test"]


def _cmd_bench_f0(args: argparse.Namespace) -> int:
    from comostream.bench.corpus import default_bench_corpus
    from comostream.bench.f0 import format_f0_table, run_f0_bench

    device = use_runtime(args)
    cfg = config_from_args(args)
    corpus = args.corpus or default_bench_corpus(cfg)
    backends = args.backends.split(",") if args.backends else None
    results = run_f0_bench(
        corpus,
        backends=backends,
        split=args.split,
        max_utterances=args.max_utterances,
        cfg=cfg.f0,
        device=device,
        suite=not args.no_suite,
        real=args.real,
    )
    print(json.dumps(results, indent=2, sort_keys=True) if args.json else format_f0_table(results))
    return 0


def _cmd_bench_content(args: argparse.Namespace) -> int:
    from comostream.bench.content import format_content_report, run_content_bench
    from comostream.bench.corpus import default_bench_corpus
    from comostream.models.shipped import require_model

    checkpoint = require_model(args.checkpoint)
    cfg = config_from_args(args)
    corpus = args.corpus
    if corpus is None and args.checkpoint is None:  # the shipped model: every singer it lacks
        corpus = default_bench_corpus(cfg, every_singer=True)
    device = use_runtime(args)
    result = run_content_bench(checkpoint, corpus, cfg, threads=args.threads or 1, device=device)
    print(
        json.dumps(result, indent=2, sort_keys=True) if args.json else format_content_report(result)
    )
    return 0


def _cmd_bench_acoustic(args: argparse.Namespace) -> int:
    from comostream.bench.acoustic import format_acoustic_table, run_acoustic_bench

    device = use_runtime(args)
    steps = args.teacher_steps
    if steps is None and args.config is not None:
        steps = config_from_args(args).edm.teacher_steps
    result = run_acoustic_bench(
        args.checkpoint,
        args.data,
        split=args.split,
        items=args.items,
        teacher_steps=steps,
        device=device,
    )
    print(json.dumps(result, indent=2) if args.json else format_acoustic_table(result))
    return 0


def _cmd_bench_vocoder(args: argparse.Namespace) -> int:
    from comostream.bench.vocoder import format_vocoder_report, run_vocoder_bench

    device = use_runtime(args)
    result = run_vocoder_bench(
        args.checkpoint,
        args.data,
        args.corpus,
        split=args.split,
        items=args.items,
        block=args.block,
        baseline=args.baseline,
        f0=config_from_args(args).f0,
        device=device,
    )
    print(json.dumps(result, indent=2) if args.json else format_vocoder_report(result))
    return 0


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from comostream.bench.corpus import default_bench_corpus, default_real_corpus
    from comostream.bench.quality import format_quality_table, run_quality_bench
    from comostream.models.shipped import require_model
    from comostream.training.debs import PackageError

    checkpoint = require_model(args.checkpoint)
    device = use_runtime(args)
    cfg = config_from_args(args)
    transpose = args.transpose  # "auto" or semitones (transpose_or_auto)
    corpus, real, skipped = args.corpus, args.real, None
    if args.no_real and real is not None:
        raise CommandError("--real and --no-real: choose one")
    if corpus is None and args.data is None:  # the synthetic corpus `bench f0` uses too
        corpus = default_bench_corpus(cfg)
        if real is None and not args.no_real:  # and the real voices' held-out prompts
            try:
                real = default_real_corpus()
            except PackageError as exc:
                skipped = f"the real voices could not be prepared: {exc}"
                print(f"bench quality: real part skipped: {exc}", file=sys.stderr)
    result = run_quality_bench(
        checkpoint,
        args.data,
        corpus,
        vocoder=args.vocoder,
        distill=args.distill,
        teacher_steps=args.teacher_steps,
        realtime=cfg.realtime,
        transpose=transpose,
        split=args.split,
        max_lines=args.max_lines,
        max_conversions=args.max_conversions,
        real=real,
        real_lines=args.real_lines,
        device=device,
    )
    if skipped is not None:
        result["real"] = {"skipped": skipped}
    print(json.dumps(result, indent=2) if args.json else format_quality_table(result))
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    from comostream.bench.latency import (
        build_bench_models,
        format_latency_table,
        latency_pace_warning,
        plot_latency,
        run_latency_bench,
    )

    device = use_runtime(args)
    cfg = config_from_args(args)
    rt = cfg.realtime

    def progress(what: str) -> None:
        print(f"bench latency: {what}", file=sys.stderr, flush=True)

    model, voc, source = build_bench_models(cfg, args.checkpoint, args.vocoder, device)
    progress(f"model: {source}")
    from comostream.models.config import STEP_BACKENDS

    result = run_latency_bench(
        model,
        voc,
        realtime=rt,
        device=device,
        sample_rate=args.sample_rate,
        seconds=args.seconds,
        source=source,
        sweep=args.sweep or (),
        backends=args.backends or STEP_BACKENDS,
        progress=progress,
    )
    if args.plot is not None:
        plot_latency(result, args.plot)
        progress(f"plot written to {args.plot}")
    if args.ws:
        from comostream.bench.latency import measure_ws_overhead

        progress("WebSocket round trip through a loopback server")
        result.update(
            measure_ws_overhead(
                model,
                voc,
                realtime=rt,
                sample_rate=args.sample_rate,
                seconds=min(args.seconds, 5.0),
            )
        )
    result.pop("chunk_ms_all")
    result["pace_warning"] = latency_pace_warning(result)  # "" when it keeps up
    print(json.dumps(result, indent=2) if args.json else format_latency_table(result))
    return 0


def _cmd_bench_gpu(args: argparse.Namespace) -> int:
    from comostream.bench.gpu_check import run_gpu_check

    return run_gpu_check(config_from_args(args), args.checkpoint, args.out)


def _add_f0(bench_sub: Subparsers) -> None:
    from comostream.models.config import F0Config

    p = bench_sub.add_parser(
        "f0",
        parents=[config_parent],
        help="accuracy and cost of each F0 backend on the synthetic corpus",
        description=(
            "Raw pitch accuracy (within 50 cents), gross errors (> 50 cents) and octave errors "
            "as fractions of the frames voiced in both, voicing decision error, compute "
            "seconds per second of audio and lookahead (ms) for each backend, against the "
            "exact F0 of the synthetic corpus's held-out split; then a known-pitch suite made "
            "at run time (octave leaps, vibrato, breathy, low and high notes), and with --real "
            "real voices re-sung with WORLD (docs/models.md#f0-backends)."
        ),
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="corpus folder (default: synthesise a small one under out/bench-corpus once)",
    )
    p.add_argument("--backends", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--max-utterances", type=int, default=None, help="cap for a quick run")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by backend")
    p.add_argument(
        "--no-suite", action="store_true", help="skip the known-pitch suite (leaps, vibrato...)"
    )
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        metavar="DIR",
        help="also score on the re-sung real voices of a `comostream prep real DIR` corpus "
        "(its --split utterances with exact F0)",
    )
    config_options(p, "f0", F0Config, ["fmin", "fmax", "voicing_threshold"])
    runtime_options(p)
    p.set_defaults(handler=_cmd_bench_f0)


def _add_models(bench_sub: Subparsers) -> None:
    """``bench content|acoustic|vocoder``: one trained part at a time."""
    p = bench_sub.add_parser(
        "content",
        parents=[config_parent],
        help="singer information left and content kept by the content encoder (held-out singers)",
        description=(
            "On the singers of a parallel synthetic corpus that the encoder never saw: a linear "
            "singer probe on content frames vs on mel frames (vs chance; over all of them and "
            "on each pair alone), a log-F0 probe, cross-singer agreement of frame-aligned "
            "renditions, the decoder's reconstruction error, and compute per second of audio "
            "in streaming mode. With no arguments: the shipped model's encoder on the 15 "
            "synthetic singers it lacks (4 TTS singers and 11 recorded people of festival's "
            "voices), synthesised once under out/bench-corpus."
        ),
    )
    model_options(
        p,
        "a `train content` checkpoint (e.g. out/content/last.pt), or a model file (default: "
        "the shipped one): its built-in encoder on the --corpus singers the model lacks",
        vocoder=False,
        metavar="CKPT",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="parallel corpus (default: the one a content checkpoint was trained on; for the "
        "shipped model, every synthetic singer, synthesised once under out/bench-corpus)",
    )
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    runtime_options(p, threads_default="1")
    p.set_defaults(handler=_cmd_bench_content)

    p = bench_sub.add_parser(
        "acoustic",
        parents=[config_parent],
        help="one-step target vs N-step teacher: mel distance and compute",
        description=(
            "On fixed validation segments (same noise for both), the mean absolute log-mel "
            "distance to the ground truth and the compute per second of audio of the distilled "
            "one-step target and of the teacher's Heun sampler, measured in one run. The "
            "models and their settings come from the checkpoint; --config only sets the "
            "teacher's steps ([edm] teacher_steps) when --teacher-steps is not given."
        ),
    )
    model_options(
        p,
        "a distill training checkpoint (it holds the teacher too)",
        vocoder=False,
        required=True,
        metavar="CKPT",
    )
    p.add_argument("--data", type=Path, required=True, metavar="FEAT_DIR")
    p.add_argument("--split", default="valid", choices=SPLITS)
    p.add_argument("--items", type=int, default=16, help="segments of 256 frames (default 16)")
    p.add_argument(
        "--teacher-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="Heun steps (default: [edm] teacher_steps of --config, else of the checkpoint)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    runtime_options(p)
    p.set_defaults(handler=_cmd_bench_acoustic)

    p = bench_sub.add_parser(
        "vocoder",
        parents=[config_parent],
        help="vocoder resynthesis quality (MCD, F0 RMSE, PESQ-wb) and compute",
        description=(
            "Resynthesise the held-out lines (test split) of a feature folder from their mel "
            "and F0 and compare with the recordings: mel-cepstral distortion (dB), F0 RMSE "
            "(cents, harvest re-estimate with the config's [f0] range), PESQ-wb (needs `pip "
            "install .[eval]`), mel L1, and compute per second of audio on one thread, "
            "one-shot and streamed."
        ),
    )
    model_options(
        p,
        "a `train vocoder` checkpoint (or its export)",
        vocoder=False,
        required=True,
        metavar="CKPT",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FEAT_DIR",
        help="feature folder (default: the one the vocoder was trained on)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="recordings (default: the corpus the features were made from)",
    )
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--items", type=int, default=None, help="at most this many utterances")
    p.add_argument(
        "--block",
        type=positive_int,
        default=4,
        metavar="FRAMES",
        help=f"frames per streaming step for the compute figure ({FRAME_MS}; default 4)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also score the untrained model (pure harmonic-plus-noise from the mel)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    runtime_options(p)
    p.set_defaults(handler=_cmd_bench_vocoder)


def _add_engine(bench_sub: Subparsers) -> None:
    """``bench quality|latency|gpu``: the whole conversion chain."""
    from comostream.bench.corpus import REAL_LINES

    p = bench_sub.add_parser(
        "quality",
        parents=[config_parent],
        help="conversion quality on held-out lines: F0, singer similarity, MCD, DNSMOS",
        description=(
            "Convert every held-out line of every singer to every other singer (one-step "
            "target offline, the teacher with N steps when --distill is given, and the streaming "
            "schedule) and score F0 RMSE (cents) and voicing error against the source, "
            "Resemblyzer similarity to the target vs the source singer, DTW-aligned MCD against "
            "the target singer's own rendition, DNSMOS. Singer similarity and DNSMOS need "
            "`pip install .[eval]`. With no arguments: the shipped model on the synthetic "
            "benchmark corpus (made once; the first run takes a few minutes more) and, reported "
            "apart, on the real voices' held-out prompts (out/real when present, else "
            "out/bench-real, made once with `prep real --limit 40`; skipped with a message "
            "when the Debian packages cannot be had): each spoken and sung rendition to 2 "
            "singers of another person, DNSMOS of the conversions next to that of the "
            "targets' own recordings."
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FEAT_DIR",
        help="the model's feature folder (names the corpus)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="the corpus (default, without --data: the synthetic benchmark corpus of the "
        "configured singers, synthesised under out/bench-corpus once, as `bench f0` does)",
    )
    p.add_argument(
        "--distill",
        type=Path,
        default=None,
        metavar="CKPT",
        help="the distillation checkpoint, for the teacher column",
    )
    p.add_argument(
        "--teacher-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="Heun steps of the teacher column (default: [edm] teacher_steps of --distill)",
    )
    block_option(
        p,
        f"frames per model step of the streaming column ({FRAME_MS}); default: "
        "[realtime] block_frames",
    )
    noise_scale_option(p)
    p.add_argument(
        "--transpose",
        type=transpose_or_auto,
        default="auto",
        metavar="auto|N",
        help="semitones, or auto: to the target singer's register (default)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=SPLITS,
        help="the split whose lines and real prompts are converted (default test: held out of "
        "every stage; valid: the validation material, to choose settings on)",
    )
    p.add_argument("--max-lines", type=positive_int, default=None, metavar="N")
    p.add_argument(
        "--max-conversions",
        type=positive_int,
        default=None,
        metavar="N",
        help="at most N conversions of the held-out lines (the real part has --real-lines)",
    )
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        metavar="DIR",
        help="a `comostream prep real` corpus whose --split prompts are measured apart "
        "(default, without --data/--corpus: out/real, else the cache out/bench-real)",
    )
    p.add_argument("--no-real", action="store_true", help="leave the real held-out part out")
    p.add_argument(
        "--real-lines",
        type=positive_int,
        default=REAL_LINES,
        metavar="N",
        help=f"held-out real prompts to convert, in turn from each voice (default {REAL_LINES})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    model_options(p)
    runtime_options(p)
    p.set_defaults(handler=_cmd_bench_quality)

    p = bench_sub.add_parser(
        "latency",
        parents=[config_parent],
        help="latency and compute of the streaming engine (vs the window-recompute strategy)",
        description=(
            "Stream the bundled example through the engine in real-time-sized chunks and report "
            "the algorithmic latency, the end-to-end latency of an onset on a simulated "
            "real-time clock, per-chunk compute p50/p99 per stage, the real-time factor, the "
            "teacher's N-step cost vs the one-step target, and the cost of re-running the same "
            "models on 2.5 s of context per 250 ms block. Without --checkpoint the models have "
            "random weights of the configured sizes (compute does not depend on the weights; "
            "the end-to-end onset is then the untrained model's). Each step is announced on "
            "stderr; the report goes to stdout."
        ),
    )
    block_option(p)
    backend_option(p)
    p.add_argument(
        "--sample-rate",
        type=positive_int,
        default=48000,
        metavar="HZ",
        help="input/output rate, as a sound card's (default 48000)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="audio streamed (default 10)")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw a timeline of the per-chunk compute against the block duration (log axis)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--ws",
        action="store_true",
        help="also stream through a loopback WebSocket server and report its round "
        "trip overhead (ws_overhead_ms)",
    )
    p.add_argument(
        "--backends",
        type=backend_list,
        default=None,
        metavar="B[,B...]",
        help="the step backends measured side by side on the same stream (backends), the "
        "--backend one always among them; e.g. torch,onnxruntime leaves out inductor's "
        "compilation (about 30 s); default: all three",
    )
    p.add_argument(
        "--sweep",
        type=block_list,
        default=None,
        metavar="FRAMES[,FRAMES...]",
        help="also measure latency, RTF and the window-recompute ratio at these "
        "block sizes, e.g. 1,2,4,8 (block_sweep)",
    )
    model_options(
        p,
        "inference file from `comostream export`, e.g. the shipped model "
        "models/assets/default.ckpt (default: random weights of the configured sizes)",
    )
    runtime_options(p, streaming=True)
    p.set_defaults(handler=_cmd_bench_latency)

    p = bench_sub.add_parser(
        "gpu",
        parents=[config_parent],
        help="CUDA check: graph replay vs eager, chunk latency for 1-256 batched streams",
        description=(
            "On a machine with CUDA (a few minutes): the captured model step (content encoder, "
            "conditioner, one-step target, vocoder) replayed as a CUDA graph vs the same step "
            "run eagerly (max abs difference relative to the peak, 1 and 8 streams); the "
            "per-chunk latency (host->device copy, the step, device->host copy; p50/p99 over "
            "200 chunks, eager vs graph) for 1, 8, 64 and 256 streams of one block each; and "
            "how many streams fit in real time. Writes gpu_check.json and gpu_check.md to "
            "--out and prints the table; exit status 1 when graph and eager differ, 2 without "
            "CUDA."
        ),
    )
    model_options(
        p,
        "inference file from `comostream export` (default: random weights of the "
        "configured sizes; compute does not depend on the weights)",
        vocoder=False,
    )
    block_option(p, f"frames per chunk ({FRAME_MS}); default: [realtime] block_frames")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/gpu_check"),
        metavar="DIR",
        help="output folder (default out/gpu_check)",
    )
    p.set_defaults(handler=_cmd_bench_gpu)


def _cmd_bench_memory(args: argparse.Namespace) -> int:
    from comostream.bench.memory import format_memory_table, run_memory_bench

    cfg = config_from_args(args)  # checked here, before any child runs
    try:
        result = run_memory_bench(
            args.minutes,
            checkpoint=args.checkpoint,
            threads=args.threads or 1,
            block=cfg.realtime.block_frames
            if overridden(args, "realtime", "block_frames")
            else None,
            workdir=args.workdir,
            config=args.config,
            device=args.device,
        )
    except RuntimeError as exc:  # a child conversion failed: its own error message is inside
        raise CommandError(f"bench memory: {str(exc).strip()}") from None
    print(json.dumps(result, indent=2) if args.json else format_memory_table(result))
    return 0


def _minutes(text: str) -> list[float]:
    """argparse type: comma-separated minutes > 0, e.g. 1,10,30."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 600 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected minutes like 1,10,30 (each 0-600), got {text!r}"
        )
    return values


def _add_memory(bench_sub: Subparsers) -> None:
    """``bench memory``."""
    p = bench_sub.add_parser(
        "memory",
        parents=[config_parent],
        help="peak memory of `convert` for 1, 10 and 30 minute files",
        description=(
            "Generate a sung-like 44.1 kHz file of each length, convert it with `comostream "
            "convert` (offline, or with --block on the live schedule) in a child process of "
            "its own and report that child's peak resident set size (ru_maxrss) and wall "
            "time. Bounded memory shows as a flat peak. 30 minutes take about 8 minutes on "
            "one thread of a 2-core CPU."
        ),
    )
    p.add_argument(
        "--minutes",
        type=_minutes,
        default=[1.0, 10.0, 30.0],
        metavar="M,M,...",
        help="file lengths in minutes (default 1,10,30)",
    )
    block_option(
        p,
        f"convert on the live schedule in blocks of FRAMES frames ({FRAME_MS}) instead of offline",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the generated files go while measured (default: the temp folder)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    model_options(p, vocoder=False)
    runtime_options(p, "1; OMP_NUM_THREADS too")
    p.set_defaults(handler=_cmd_bench_memory)


def _cmd_bench_busy(args: argparse.Namespace) -> int:
    from comostream.bench.busy import CHECKS, format_busy_table, run_busy_check

    checks = tuple(args.checks.split(",")) if args.checks else tuple(CHECKS)

    def progress(what: str) -> None:
        print(f"bench busy: {what}", file=sys.stderr, flush=True)

    try:
        result = run_busy_check(args.busy, checks, log=progress)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CommandError(f"bench busy: {exc}") from None
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            f"bench busy: {' '.join(exc.cmd[2:])} ran past {exc.timeout:.0f} s"
        ) from None
    print(json.dumps(result, indent=2) if args.json else format_busy_table(result))
    return 0 if result["holds"] or not args.strict else 1


def _add_busy(bench_sub: Subparsers) -> None:
    """``bench busy``."""
    p = bench_sub.add_parser(
        "busy",
        help="do convert --block 2, serve + client and bench latency keep real time with "
        "their default options while other work keeps cores busy?",
        description=(
            "Start --busy processes that each spin one core (bounded: they end by themselves), "
            "then run `comostream convert --block 2`, `comostream serve` + `comostream client` "
            "(paced in real time) and `comostream bench latency`, each as a child process with "
            "its default options, on the bundled example and the shipped model. A check holds "
            "when its RTF stays below 0.8 and nothing is dropped. About 1-2 minutes."
        ),
    )
    p.add_argument(
        "--busy",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        metavar="CORES",
        help="cores kept busy meanwhile (default: all but one)",
    )
    p.add_argument(
        "--checks",
        default=None,
        metavar="NAME,...",
        help="a subset of convert,serve_client,bench_latency (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check misses real time")
    p.set_defaults(handler=_cmd_bench_busy)


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from comostream.bench.serve import format_serve_table, repeat_summary
    from comostream.models.shipped import require_model

    cfg = config_from_args(args)  # checked here, before the server starts
    checkpoint = require_model(args.checkpoint)
    block = cfg.realtime.block_frames if overridden(args, "realtime", "block_frames") else None
    backend = cfg.realtime.backend if overridden(args, "realtime", "backend") else None

    def progress(what: str) -> None:
        print(f"bench serve: {what}", file=sys.stderr, flush=True)

    results = []
    for i in range(args.repeat):
        if args.repeat > 1:
            progress(f"run {i + 1} of {args.repeat}")
        results.append(_serve_bench_once(args, checkpoint, block, backend, progress))
    if args.repeat == 1:
        print(json.dumps(results[0], indent=2) if args.json else format_serve_table(results[0]))
        return 0
    summary = repeat_summary(results)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for i, result in enumerate(results):
        print(f"run {i + 1} of {args.repeat}:\n{format_serve_table(result)}\n")
    first = summary["held_first_try"]
    held = ", ".join(
        f"{n}: {k}/{args.repeat} ({first[n]} at the first try)" for n, k in summary["held"].items()
    )
    print(
        f"real-time streams per run: {', '.join(map(str, summary['realtime_streams_each']))} "
        f"(median {summary['realtime_streams_median']:g}, least "
        f"{summary['realtime_streams_min']}); runs each N held in: {held}"
    )
    return 0


def _serve_bench_once(
    args: argparse.Namespace,
    checkpoint: Path,
    block: int | None,
    backend: str | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One whole ``bench serve`` measurement (its own server) for ``args``."""
    from comostream.bench.serve import run_serve_bench

    try:
        return run_serve_bench(
            args.streams,
            checkpoint=checkpoint,
            seconds=args.seconds,
            sample_rate=args.sample_rate,
            threads=args.threads or 1,
            device=args.device,
            vocoder=args.vocoder,
            config=args.config,
            block=block,
            batch=args.batch == "on",
            batch_wait_ms=args.batch_wait,
            backend=backend,
            processes=args.processes,
            stop_at_failure=not args.all,
            progress=progress,
        )
    except (RuntimeError, OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"bench serve: {exc}") from None


def _repeat_count(text: str) -> int:
    """argparse type: a number of runs, 1-100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a number of runs 1-100, got {text!r}")
    return value


def _stream_counts(text: str) -> list[int]:
    """argparse type: comma-separated stream counts >= 1, e.g. 1,2,4,8,16."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected stream counts like 1,2,4,8,16 (each 1-256), got {text!r}"
        )
    return values


def _add_serve(bench_sub: Subparsers) -> None:
    """``bench serve``."""
    from comostream.bench.serve import DEFAULT_STREAMS
    from comostream.cli.common import positive_seconds, processes_arg

    p = bench_sub.add_parser(
        "serve",
        parents=[config_parent],
        help="how many real-time streams one `comostream serve` holds",
        description=(
            "Start `comostream serve` as a child process on a free loopback port, then for each "
            "N of --streams drive N clients from this process (asyncio), each streaming the "
            "bundled example at the real-time rate of the audio for --seconds (block boundaries "
            "spread over one block), and report per N: dropped samples (sum and per-client "
            "max), round trip p50/p99 (send to reply, queueing included), the server's CPU "
            "(cores and per stream, from /proc) and its compute per block; and the largest N "
            "with zero drops and a round trip p99 below one block, every smaller N holding too "
            "(realtime_streams). An N that dropped nothing but came back late is measured "
            "once more and the second measurement is its row (the first p99 kept as "
            "first_try_rtt_ms_p99): one hiccup of the machine should not decide; a drop is "
            "never measured again. The Ns stop at the first that fails (unless --all), so the "
            "default list finds the capacity in bounded time. Progress goes to stderr, the "
            "report to stdout."
        ),
    )
    p.add_argument(
        "--streams",
        type=_stream_counts,
        default=list(DEFAULT_STREAMS),
        metavar="N,N,...",
        help="concurrent streams to measure, in this order, up to the first N that fails "
        f"(default {','.join(map(str, DEFAULT_STREAMS))})",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="measure every N of --streams, also after one fails",
    )
    p.add_argument(
        "--repeat",
        type=_repeat_count,
        default=1,
        metavar="RUNS",
        help="the whole measurement this many times in turn, each with a server of its own "
        "(default 1); then how many runs each N held in (and how many of those at its first "
        "measurement), and each run's real-time streams with their median and least (--json: "
        "realtime_streams_each, _median, _min, held, held_first_try, runs): a machine whose "
        "speed moves gives a distribution, not one figure",
    )
    p.add_argument(
        "--batch",
        choices=["on", "off"],
        default="on",
        help="the server's --batch: on (default) one batched model step for all sessions; "
        "off: one engine per session (the former path)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        metavar="MS",
        help="the server's --batch-wait (default: the server's, 0)",
    )
    p.add_argument(
        "--processes",
        type=processes_arg,
        default="auto",
        metavar="N|auto",
        help="the server's --processes (default auto: its own rule, for --max-streams the "
        "largest N); the server CPU counts them all",
    )
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=10.0,
        metavar="S",
        help="audio streamed by each client per N (default 10)",
    )
    p.add_argument(
        "--sample-rate",
        type=positive_int,
        default=48000,
        metavar="HZ",
        help="the clients' rate, as a sound card's (default 48000)",
    )
    block_option(p)
    backend_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    model_options(p)
    runtime_options(p, "1: one intra-op thread for the server, each session in its own thread")
    p.set_defaults(handler=_cmd_bench_serve)


def register(sub: Subparsers) -> None:
    """Add ``bench`` (with its measurements) to ``sub``."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks: F0 backends, content encoder, acoustic model, vocoder, conversion "
        "quality, latency, the CUDA check",
    )
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    _add_f0(bench_sub)
    _add_models(bench_sub)
    _add_engine(bench_sub)
    _add_memory(bench_sub)
    _add_serve(bench_sub)
    _add_busy(bench_sub)
    from comostream.cli.voice import add_bench_voice

    add_bench_voice(bench_sub)
