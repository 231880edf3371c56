"""``python -m boat_vit COMMAND ...`` (and ``torchrun ... -m boat_vit COMMAND ...``): the ``boat-vit`` command."""
import sys

from .cli import main

sys.exit(main())
