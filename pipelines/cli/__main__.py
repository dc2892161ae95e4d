"""`python -m pipelines.cli`: the `sagan` command (torchrun launches its ranks this way)."""

import sys

from pipelines.cli.main import main

sys.exit(main())
