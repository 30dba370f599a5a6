"""``python -m cilkit`` (and ``torchrun -m cilkit``)."""

import sys

from cilkit.cli.main import main

sys.exit(main())
