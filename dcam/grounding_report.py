"""``python -m dcam.grounding_report [--n 50] [--probes full,masked,remask] [--layers 0,1,2] [--json FILE]``

The grounding rate of the maps per probe mode and per layer on grounded-shapes
test images with two or more objects (see
:func:`dcam.cli_explain.grounding_report`, where the code lives).
"""
import sys

from .cli_explain import main


if __name__ == "__main__":
    sys.exit(main(["grounding"] + sys.argv[1:]))
