"""Triton kernels of Diffusion-CAM (sources in the repository's top-level
``kernels/`` folder; launchers in :mod:`dcam.ops.triton_launch`).

- ``pool``: gradient pooling into raw maps (docs/ALGORITHM.md section 1);
- ``refine``: the whole refinement, one program per map (sections 2-7).

Why this indirection: a top-level ``kernels`` package would shadow the PyPI
package of that name (which transformers probes for) whenever the repository
root is on ``sys.path``. So ``kernels/`` has no ``__init__.py`` (from the
repository root ``import kernels`` finds at most an empty namespace, which
transformers ignores, and each kernel module refuses to be imported under any
name but ``dcam.kernels.*``), and this package points its search path at it.
A wheel copies the kernel files here instead (see setup.py).
"""
import os as _os

_SOURCES = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))),
                         "kernels")
if not _os.path.exists(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "refine.py")) and \
        _os.path.exists(_os.path.join(_SOURCES, "refine.py")):  # a source checkout or an editable install
    __path__.append(_SOURCES)
