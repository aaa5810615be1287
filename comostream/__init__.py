"""comostream: real-time streaming singing-voice conversion (consistency-distilled diffusion).

Everything installs under this one namespace. In the repository the parts keep their top-level
folders and are mapped here by ``pyproject.toml`` (``[tool.setuptools] package-dir``):

* :mod:`comostream.models` (``models/``): networks, features, the conversion chain; inference only;
* :mod:`comostream.realtime` (``realtime/``): the streaming runtime, and its applications in
  :mod:`comostream.realtime.live`, :mod:`comostream.realtime.serve`,
  :mod:`comostream.realtime.files`;
* :mod:`comostream.training` (``training/``): corpora, features, trainers (never imported by the
  above);
* :mod:`comostream.bench` (``bench/``): the ``comostream bench ...`` measurements;
* :mod:`comostream.configs` (``configs/``), :mod:`comostream.docs` (``docs/``): shipped data;
* :mod:`comostream.cli` (``comostream/cli/``): the command line, a module per command group.

Importing the package is cheap: torch loads only when a command needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

from comostream.version import __version__

__all__ = ["__version__", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``comostream`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    from comostream.cli import main as cli_main

    return cli_main(argv)
