"""dcam_error_string names what the code it describes refuses. dcam_refine refuses a NaN or
infinite raw map with DCAM_EINVAL_VALUE (dcam.h), but the string of that code listed only
steps, image_size, repeat_ratio and context_weights: a service logging it sent its reader
to arguments that were fine. Called through ctypes on setup.py's libdcam.so."""
import ctypes
import os
import sys

import numpy as np
import pytest

import dcam.c_api

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="libdcam.so (Linux)")

DCAM_EINVAL_VALUE = 6  # dcam.h


@pytest.fixture(scope="module")
def lib():
    try:
        folder = dcam.c_api.library_dir()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    lib = ctypes.CDLL(os.path.join(folder, dcam.c_api.LIBRARY))
    lib.dcam_error_string.restype = ctypes.c_char_p
    lib.dcam_error_string.argtypes = [ctypes.c_int]
    return lib


class RefineConfig(ctypes.Structure):
    _fields_ = [("akd_kernel", ctypes.c_int), ("akd", ctypes.c_int), ("dacg", ctypes.c_int), ("cba", ctypes.c_int),
                ("sicd", ctypes.c_int), ("dacg_params", ctypes.c_float * 8), ("cba_params", ctypes.c_float * 5)]


def _refine_rc(lib, raw):
    cfg = RefineConfig()
    assert lib.dcam_refine_config_default(ctypes.byref(cfg)) == 0
    p = ctypes.c_void_p
    lib.dcam_refine.argtypes = [p] * 7 + [ctypes.c_int64] * 4 + [p] * 7
    steps = np.array([32.0], np.float32)
    size = np.array([64.0], np.float32)
    ratio = np.array([0.1], np.float32)
    out = np.empty_like(raw)
    return lib.dcam_refine(raw.ctypes.data, None, steps.ctypes.data, size.ctypes.data, ratio.ctypes.data, None,
                           None, 1, 1, raw.shape[2], raw.shape[3], ctypes.addressof(cfg), out.ctypes.data, None, None,
                           None, None, None)


def test_a_nan_raw_map_is_refused_with_a_string_that_names_the_maps(lib):
    raw = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert _refine_rc(lib, raw) == 0
    raw[0, 0, 1, 2] = np.nan
    assert _refine_rc(lib, raw) == DCAM_EINVAL_VALUE
    message = lib.dcam_error_string(DCAM_EINVAL_VALUE).decode()
    assert "maps must be finite" in message, message
