"""``python -m dcam``: the ``dcam`` command (also what ``torchrun -m dcam`` runs)."""
import sys

from dcam.cli import main

sys.exit(main())
