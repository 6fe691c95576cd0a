import sys

from dcam.benchmark import main

sys.exit(main(sys.argv[1:]))
