import os
import sys

# benchmarks import the installed package; make `bench` importable as a package too
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
