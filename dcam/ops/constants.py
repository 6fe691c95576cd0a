"""The numbers of the math contract, defined once (docs/ALGORITHM.md cites them).

The PyTorch reference and :class:`dcam.CamConfig` import them from here, the
Triton kernel receives them as ``constexpr`` arguments, and the C header
``csrc/include/dcam.h`` carries C copies (``DCAM_*``) that a test compares
with these values.
"""

# -- normalisation (sections 1 and 5)
EPS_NORM = 1e-8  # denominator guard of every min-max normalisation

# -- AKD adaptive kernel size (section 2): k = clamp(floor(BASE * f_step * f_std * f_size) | 1, MIN, MAX)
AKD_BASE = 3.0
AKD_STEP_SCALE = 16.0  # f_step = min(steps / 16, 2)
AKD_STEP_CAP = 2.0
AKD_STD_SCALE = 5.0  # f_std = min(5 * std(map), 2)
AKD_STD_CAP = 2.0
AKD_SIZE_SCALE = 512.0  # f_size = min(image height / 512, 1.5)
AKD_SIZE_CAP = 1.5
AKD_K_MIN = 3
AKD_K_MAX = 11

# -- DACG (section 3): defaults of CamConfig
DACG_STD = 0.22
DACG_MEAN_HIGH = 0.35
DACG_MEAN_LOW = 0.25
DACG_PERCENTILES = (90.0, 75.0, 80.0, 85.0)  # high_var, high_mean, low_mean, default
DACG_SIGMA = 0.3
ZETA_MIN = 1e-6  # lower bound of the gate threshold

# -- CBA (section 4): defaults of CamConfig
CBA_WEIGHTS = (0.15, 0.15, 0.2, 0.015)  # median of positives, P60 of all, mean of positives, max
CBA_FLOOR = 0.5

# -- SICD (section 6)
SICD_BASE = 0.05  # interference per unit of repeat ratio
SICD_SPIKE = 0.02  # interference added on outlier pixels
SICD_SPIKE_STDS = 2.0  # outliers: above mean + 2 std
SICD_ALPHA_MAX = 0.5  # cap of the reference-mode scale
SICD_RANGE_GUARD = 0.9  # the step is undone if it shrinks the range below this fraction
