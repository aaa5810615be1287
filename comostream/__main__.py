"""``python -m comostream ...``: the same as the ``comostream`` command."""

import sys

from comostream.cli import main

sys.exit(main())
