"""The benchmark: this gateway side by side with what users would otherwise run.

Run it with ``make bench`` or ``bash bench/run.sh [flags]`` (which installs nginx, wrk and the
bench's own LiteLLM venv first). See bench/README.md for what each contender and scenario is.

Every figure is the median of ``--runs`` runs (3) with min-max; ratios are against the bare
relay and the upstream measured in the same invocation. The table goes to stdout and to
``bench/.work/results-<date>.md``; progress goes to stderr.

This file is the entry point only: the harness is the package ``bench/harness/``, one module
per concept (see its ``__init__.py``).
"""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
