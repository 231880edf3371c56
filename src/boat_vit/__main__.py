"""``python -m boat_vit COMMAND ...``: the same as the ``boat-vit`` command."""
import sys

from .cli import main

sys.exit(main())
