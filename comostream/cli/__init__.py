"""The command-line face of comostream: ``comostream <command> ...``.

This package only parses arguments and dispatches; each command's work lives in the package that
owns it. Each module holds one group of commands, their options beside their handlers, and
registers them through its ``register(sub)``; :data:`COMMAND_GROUPS` lists them in the order
``--help`` shows them. Shared spellings (``--config``, ``--block``, ``--checkpoint``,
``--threads``, ``--device``, ``--speaker``, ...) are defined once in :mod:`.common`. Heavy
imports (torch, numba, ...) happen inside the handlers, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from comostream.cli import bench, config, convert, live, prep, stream, train, voice
from comostream.cli.common import CommandError, config_from_args, user_errors
from comostream.version import __version__

__all__ = ["COMMAND_GROUPS", "CommandError", "build_parser", "config_from_args", "main"]

COMMAND_GROUPS = (
    convert,  # demo, convert
    live,  # live
    stream,  # serve, client, bridge
    prep,  # prep synth|features|gta
    train,  # train teacher|distill|finetune|content|vocoder|recipe, export
    voice,  # voice add|list|remove|rename
    bench,  # bench f0|content|acoustic|vocoder|quality|latency|gpu
    config,  # config
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command and option)."""
    parser = argparse.ArgumentParser(
        prog="comostream",
        description=(
            "Real-time streaming singing-voice conversion (consistency-distilled diffusion). "
            "Run 'comostream COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"comostream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a C tool's status is when its reader goes away


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``comostream`` console script. When the reader of stdout goes away
    (``comostream config | head``) the command stops quietly with status 141, as C tools do."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a pipe closed early shows here, not at interpreter exit
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush finds no broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured)
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from comostream.models.config import ConfigError

    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"comostream: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("comostream: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        print(f"comostream: error: {exc}", file=sys.stderr)
        return 1
