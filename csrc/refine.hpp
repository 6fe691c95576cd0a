// The refinement driver behind dcam_refine, for the Python extension dcam._C. Internal: not
// part of the C API (libdcam.so exports dcam_refine only).
#pragma once

#include <cstdint>

#include "common.hpp"
#include "dcam.h"

namespace dcam {

// dcam_refine, with check_values false for the torch op dcam::refine: the per-image values
// (steps, image_size, repeat_ratio) and the context weights are then not range-checked, and a
// value out of range is computed with as the PyTorch reference computes with it (the op checks
// what needs no values on every device; the values are checked by the public functions only, see
// README "Backends and dispatch"). The maps must still be finite (DCAM_EINVAL_VALUE).
DCAM_INTERNAL int refine_maps(const float* raw, const uint8_t* degenerate, const float* steps,
                              const float* image_size, const float* repeat_ratio, const float* context_maps,
                              const float* context_weights, int64_t B, int64_t T, int64_t h, int64_t w,
                              const dcam_refine_config* cfg, float* maps_out, int32_t* kernel_size,
                              int32_t* dacg_strategy, float* dacg_threshold, float* cba_threshold,
                              float* sicd_alpha, bool check_values);

}  // namespace dcam
