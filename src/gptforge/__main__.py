"""`python -m gptforge ...` (and `torchrun -m gptforge ...`) run the same CLI as `gptforge ...`."""

import sys

from gptforge.cli import main

sys.exit(main())
