"""``comostream serve|client|bridge``: WebSocket streaming (docs/protocol.md)."""

from __future__ import annotations

import argparse
import math
from importlib import resources
from pathlib import Path

from comostream.cli.common import (
    FRAME_MS,
    OUTPUT_FORMATS_HELP,
    CommandError,
    Subparsers,
    backend_option,
    block_frames_arg,
    block_option,
    config_from_args,
    config_parent,
    f0_option,
    index_rate_option,
    model_options,
    noise_scale_option,
    output_options,
    port_arg,
    positive_int,
    positive_seconds,
    processes_arg,
    runtime_options,
    runtime_threads,
    sound_device_arg,
    speaker_arg,
    transpose_or_auto,
    use_runtime,
)

__all__ = ["register"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from comostream.models.shipped import require_model
    from comostream.realtime.serve.config import ServerConfig, resolve_token
    from comostream.realtime.serve.processes import FactorySpec, auto_processes, serve_processes

    cfg = config_from_args(args)
    rt = cfg.realtime
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=resolve_token(args.token, args.token_file),
            max_streams=args.max_streams,
            idle_timeout_s=args.idle_timeout,
            max_queue_ms=rt.max_backlog_ms,
            allow_origins=tuple(args.allow_origin),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        config.ssl_context()  # unreadable or mismatched TLS files: an error before the model
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    checkpoint = require_model(args.checkpoint)
    if args.processes == "auto":
        processes = auto_processes(args.max_streams, args.device)
    else:
        processes = min(args.processes, args.max_streams)
    if processes > 1 and args.device != "cpu":
        raise CommandError("--processes: CPU serving only (use one process on a GPU)")
    device = use_runtime(args)  # the other processes of --processes set the same threads
    spec = FactorySpec(
        checkpoint=Path(checkpoint),
        vocoder=None if args.vocoder is None else Path(args.vocoder),
        device=device,
        threads=runtime_threads(args),
        realtime=rt,
        f0=cfg.f0,
        batch=args.batch == "on",
        max_batch=math.ceil(args.max_streams / processes),
        batch_wait_ms=args.batch_wait,
        index_rate=args.index_rate,
    )
    try:
        if processes > 1:
            return serve_processes(spec, config, processes)
        from comostream.realtime.serve.server import run_server

        return run_server(spec.build(), config)
    except OSError as exc:
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {exc}") from None


def _stream_errors() -> tuple[type[BaseException], ...]:
    from websockets.exceptions import WebSocketException

    from comostream.realtime.serve.client import ServerError

    return (ServerError, WebSocketException, OSError, TimeoutError)


def _client_token(args: argparse.Namespace) -> str | None:
    """The token a client sends: ``--token``, ``--token-file`` or ``COMOSTREAM_TOKEN``."""
    from comostream.realtime.serve.config import resolve_token

    try:
        return resolve_token(args.token, args.token_file)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _cmd_client(args: argparse.Namespace) -> int:
    from comostream.models.audio import output_format
    from comostream.models.mix import speaker_text
    from comostream.realtime.serve.client import stream_file

    fmt, subtype = output_format(args.output, args.subtype)  # before connecting
    try:
        r = stream_file(
            args.input,
            args.output,
            args.url,
            fast=args.fast,
            speaker=args.speaker,
            transpose=args.transpose,
            fmt=args.format,
            block=args.block,
            token=_client_token(args),
            subtype=subtype,
        )
    except _stream_errors() as exc:
        raise CommandError(f"{args.url}: {exc}") from None
    seconds = r.output.shape[0] / r.sample_rate
    print(
        f"wrote {args.output} ({fmt} {subtype}): {seconds:.2f} s as "
        f"{speaker_text(r.ready['speaker'])}; round trip p50 "
        f"{r.rtt_percentile(50):.1f} ms, p99 {r.rtt_percentile(99):.1f} ms; algorithmic "
        f"latency {r.ready['latency_ms']:.1f} ms; server compute p50 "
        f"{r.stats['compute_ms_p50']:.1f} ms per block; dropped {r.dropped_samples} samples"
    )
    return 0


def _cmd_bridge(args: argparse.Namespace) -> int:
    if args.list_devices:
        import sounddevice as sd

        print(sd.query_devices())
        return 0
    from comostream.realtime.serve.bridge import DeviceError, run_bridge

    try:
        s = run_bridge(
            args.url,
            args.input,
            args.output,
            sample_rate=args.sample_rate,
            block=args.block,
            seconds=args.seconds,
            speaker=args.speaker,
            transpose=args.transpose,
            token=_client_token(args),
        )
    except DeviceError as exc:
        raise CommandError(str(exc)) from None
    except _stream_errors() as exc:
        raise CommandError(f"{args.url}: {exc}") from None
    rtt = sorted(s.rtt_ms or [0.0])
    print(
        f"sent {s.sent_blocks} blocks; round trip p50 {rtt[len(rtt) // 2]:.1f} ms; "
        f"underruns {s.underruns}, server drops {s.dropped}, skipped {s.skipped} samples"
    )
    return 0


def _connection_parent() -> argparse.ArgumentParser:
    """The options of a connection to a `comostream serve` server (client, bridge)."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default="ws://127.0.0.1:8765/ws", help="server URL")
    conn.add_argument(
        "--speaker",
        type=speaker_arg,
        default=None,
        metavar="NAME",
        help="target singer, NAME or a mix NAME:WEIGHT,NAME:WEIGHT (default: the server's)",
    )
    conn.add_argument(
        "--transpose",
        type=transpose_or_auto,
        default=0.0,
        metavar="N",
        help="semitones within +-48, or auto: the server shifts the input's register (its first "
        "second of voicing) to the singer's, once (the model must store registers)",
    )
    conn.add_argument("--token", default=None, help="the server's token")
    conn.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the token from the first line of PATH; without --token or --token-file, "
        "the COMOSTREAM_TOKEN environment variable is used when set",
    )
    conn.add_argument(
        "--block",
        type=block_frames_arg,
        default=None,
        metavar="FRAMES",
        help=f"model frames per audio message ({FRAME_MS}; the samples follow "
        "from the audio's rate); default: the server's block",
    )
    return conn


def register(sub: Subparsers) -> None:
    """Add ``serve``, ``client`` and ``bridge`` to ``sub``."""
    from comostream.realtime.serve.processes import STREAMS_PER_PROCESS

    p = sub.add_parser(
        "serve",
        parents=[config_parent],
        help="WebSocket streaming server for DAW bridges and browsers",
        description=(
            "Serve the streaming engine over WebSocket (ws://HOST:PORT/ws, protocol in "
            f"{resources.files('comostream.docs') / 'protocol.md'}): one engine per connection, "
            "the due blocks of all connections converted together in one batched model step "
            "(--batch off: each connection's engine steps alone), bounded queues that drop the "
            "oldest "
            "blocks when a client or the server falls behind. Also serves a browser page at / "
            "(microphone -> server -> playback: singers, mix, transposition, recording), GET "
            "/singers and GET /health; HTTPS/WSS with --tls-cert/--tls-key (browsers on other "
            "machines need it for the microphone). SIGTERM closes sessions gracefully (close "
            "code 1001)."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other needs --token)",
    )
    p.add_argument("--port", type=port_arg, default=8765, help="TCP port (default 8765; 0: any)")
    index_rate_option(p)  # the sessions' default; a hello's index_rate overrides
    p.add_argument(
        "--token",
        default=None,
        help="secret every client must send in its hello (visible to local users in the "
        "process list: prefer --token-file or the COMOSTREAM_TOKEN environment variable)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the token from the first line of PATH (not both with --token); without "
        "either, the COMOSTREAM_TOKEN environment variable is used when set. GET /health "
        "shows stream counts only to 'Authorization: Bearer TOKEN'",
    )
    p.add_argument(
        "--max-streams",
        type=positive_int,
        default=8,
        metavar="N",
        help="concurrent streams; newcomers are refused with close code 4007",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="S",
        help="close a session that sends nothing for S seconds (default 30)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="browser origin allowed besides the server's own page (repeatable)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate: serve HTTPS/WSS (with --tls-key), so that browsers on other "
        "machines may use their microphone; e.g. a self-signed pair from openssl req -x509",
    )
    p.add_argument(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="the unencrypted PEM private key of --tls-cert",
    )
    p.add_argument(
        "--batch",
        choices=["on", "off"],
        default="on",
        help="on (default): one scheduler thread runs every session's blocks: their front ends, "
        "then their model blocks together in one batched step (traced for up to --max-streams "
        "streams, on --threads intra-op threads); off: each session runs its engine, model "
        "step included, in a thread of its own",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        metavar="MS",
        help="batched: how long a block may wait for other sessions' blocks before the "
        "scheduler's next cycle starts without them (default 0: as soon as a block is pending). "
        "Fewer, "
        "fuller steps cost less CPU on a busy machine; the wait adds to the round trip at "
        "light load",
    )
    p.add_argument(
        "--processes",
        type=processes_arg,
        default="auto",
        metavar="N|auto",
        help="serve from N processes on the one port (CPU only): one process converts on about "
        "one core, whatever the machine has (its interpreter lock), so more cores serve more "
        "streams with more processes. Each loads the model (about 0.9 GB each with torch's "
        "CUDA wheel) and admits its share of --max-streams; the first accepts the connections "
        "and hands each to the process with the fewest. auto (default): one per "
        f"{STREAMS_PER_PROCESS} of --max-streams, at most one per core; 1 on a GPU",
    )
    block_option(p)
    f0_option(p)
    noise_scale_option(p)
    backend_option(p)
    model_options(p)
    runtime_options(
        p,
        "1, for the whole process: the batched step runs on them, in the scheduler's thread, "
        "while the event loop handles the network; with --batch off each session runs "
        "its engine in a worker thread of its own, and more threads per session wait for each "
        "other at every small model step once several clients stream, and miss real time",
        streaming=True,
    )
    p.set_defaults(handler=_cmd_serve)

    conn = _connection_parent()
    p = sub.add_parser(
        "client",
        parents=[conn],
        help="stream a file through a `comostream serve` server",
        description=(
            "Stream IN to the server at real-time pace (or --fast), write the converted audio "
            "(at IN's rate, aligned to IN) and print the round-trip latency p50/p99. "
            + OUTPUT_FORMATS_HELP
        ),
    )
    p.add_argument("input", type=Path, metavar="IN", help="audio file (mono or stereo)")
    output_options(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="send as fast as the server answers (a few blocks in flight)",
    )
    p.add_argument(
        "--format",
        choices=["f32le", "s16le"],
        default="f32le",
        help="sample format on the wire (default f32le)",
    )
    p.set_defaults(handler=_cmd_client)

    p = sub.add_parser(
        "bridge",
        parents=[conn],
        help="sound devices <-> server (route a DAW send through it)",
        description=(
            "Stream an input device to the server and play the converted audio on an output "
            "device: route a DAW send to a virtual device, record or monitor the output."
        ),
    )
    p.add_argument(
        "--input",
        type=sound_device_arg,
        default=None,
        metavar="DEV",
        help="input device (index or name; default: the system's)",
    )
    p.add_argument(
        "--output",
        type=sound_device_arg,
        default=None,
        metavar="DEV",
        help="output device (index or name; default: the system's)",
    )
    p.add_argument(
        "--sample-rate",
        type=positive_int,
        default=48000,
        metavar="HZ",
        help="device sample rate (default 48000)",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.set_defaults(handler=_cmd_bridge)
