"""`python -m cogvlm_lite` runs the `cogvlm-lite` command."""

import sys

from .cli import main

sys.exit(main())
