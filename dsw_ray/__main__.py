"""``python -m dsw_ray run JOB.yaml``: the CLI without its console script (what `ray job submit`
runs from a shipped working directory)."""

import sys

from dsw_ray.cli import main

sys.exit(main())
