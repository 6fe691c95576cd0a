"""``python -m bench``: the operators' timing table (same as ``dcam bench``)."""
import sys

from dcam.cli import main

sys.exit(main(["bench"] + sys.argv[1:]))
