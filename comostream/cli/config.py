"""``comostream config``: the resolved configuration."""

from __future__ import annotations

import argparse

from comostream.cli.common import Subparsers, config_from_args, config_parent

__all__ = ["register"]


def _cmd_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).to_json())
    return 0


def register(sub: Subparsers) -> None:
    """Add ``config`` to ``sub``."""
    p = sub.add_parser(
        "config",
        parents=[config_parent],
        help="print the resolved configuration as JSON",
        description="Print configs/default.toml with --config's overrides applied, as JSON.",
    )
    p.set_defaults(handler=_cmd_config)
