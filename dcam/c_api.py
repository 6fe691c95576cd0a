"""The plain C API of an installed dcam, for C programs (no Python, no torch at run time).

setup.py builds, beside the Python extension ``dcam._C``, a shared library of the
same C++ sources without the Python bindings, ``dcam/lib/libdcam.so``, which
exports the functions of the header ``dcam.h`` (``dcam/include/dcam.h`` in a
wheel; in a checkout built in place, ``python setup.py build_ext --inplace`` or
``pip install -e .``, the header is read where it lives, ``csrc/include/``).
Where to find them::

    python -m dcam.c_api --cflags --libs
    # -I<include folder> -L<library folder> -ldcam -Wl,-rpath,<library folder>
    gcc prog.c $(python -m dcam.c_api --cflags --libs) -o prog

or, from Python, :func:`include_dir` and :func:`library_dir`. The rpath lets the
program find ``libdcam.so`` where dcam is installed when it runs. The library is
optional as ``dcam._C`` is (an install without a C++17 compiler with OpenMP
skips it): then :func:`library_dir` and ``--libs`` refuse with a RuntimeError
saying so.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional

# the installed dcam package; a checkout's csrc/ is beside it
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
HEADER = "dcam.h"
LIBRARY = "libdcam.dylib" if sys.platform == "darwin" else "libdcam.so"
_REBUILD = ("reinstall dcam where a C++17 compiler with OpenMP is on the path (`pip install --no-cache-dir "
            "--force-reinstall --no-deps <the dcam folder or sdist you installed from>`; in a checkout "
            "`python setup.py build_ext --inplace` or `pip install -e .`)")


def include_dir() -> str:
    """The folder holding ``dcam.h``: the installed copy (a wheel), else the
    checkout's ``csrc/include`` (an editable install or an in-place build)."""
    for folder in (os.path.join(_PACKAGE, "include"), os.path.join(os.path.dirname(_PACKAGE), "csrc", "include")):
        if os.path.isfile(os.path.join(folder, HEADER)):
            return folder
    raise RuntimeError(f"dcam's C header {HEADER} is not installed (neither {os.path.join(_PACKAGE, 'include')} "
                       f"nor a checkout's csrc/include holds it); {_REBUILD}")


def library_dir() -> str:
    """The folder holding ``libdcam.so`` (link with ``-L<it> -ldcam``)."""
    folder = os.path.join(_PACKAGE, "lib")
    if not os.path.isfile(os.path.join(folder, LIBRARY)):
        raise RuntimeError(f"dcam's C library {LIBRARY} was not built (no {os.path.join(folder, LIBRARY)}; the "
                           f"install had no C++17 compiler with OpenMP, or it failed); {_REBUILD}")
    return folder


def cflags() -> List[str]:
    """Compiler flags of a C program using dcam.h."""
    return [f"-I{include_dir()}"]


def libs() -> List[str]:
    """Linker flags: the library, and an rpath so that the program finds it when it runs."""
    folder = library_dir()
    return [f"-L{folder}", "-ldcam", f"-Wl,-rpath,{folder}"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcam.c_api",
                                     description="Print the flags that compile and link a C program against "
                                                 "dcam's C API (dcam.h, libdcam.so), as pkg-config does.")
    parser.add_argument("--cflags", action="store_true", help="the include flag (-I<folder of dcam.h>)")
    parser.add_argument("--libs", action="store_true",
                        help="the link flags (-L<folder> -ldcam -Wl,-rpath,<folder>)")
    args = parser.parse_args(argv)
    if not (args.cflags or args.libs):
        parser.error("give --cflags, --libs or both")
    try:
        flags = (cflags() if args.cflags else []) + (libs() if args.libs else [])
    except RuntimeError as exc:  # not built: nothing to print, one line saying why
        print(f"python -m dcam.c_api: {exc}", file=sys.stderr)
        return 1
    print(" ".join(shlex.quote(flag) for flag in flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
