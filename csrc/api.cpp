// Small C API entry points: version, error strings, default configuration.
#include "dcam.h"

extern "C" const char* dcam_version(void) { return DCAM_VERSION_STRING; }

extern "C" const char* dcam_error_string(int code) {
    switch (code) {
        case DCAM_OK: return "ok";
        case DCAM_EINVAL_NULL: return "a required pointer argument is NULL";
        case DCAM_EINVAL_SHAPE: return "invalid size argument";
        case DCAM_EINVAL_DTYPE: return "unknown dtype";
        case DCAM_EINVAL_CONFIG:
            return "invalid refine configuration (akd_kernel must be 0 or odd >= 1, sicd 0..2, dacg_params and "
                   "cba_params in their ranges)";
        case DCAM_ENOMEM: return "out of memory";
        case DCAM_EINVAL_VALUE:
            return "invalid value (raw and context maps must be finite, steps and image_size finite and > 0, "
                   "repeat_ratio in [0, 1], context_weights finite and >= 0, 0 on the diagonal, with finite "
                   "row sums)";
        default: return "unknown error code";
    }
}

extern "C" int dcam_refine_config_default(dcam_refine_config* cfg) {
    if (!cfg) return DCAM_EINVAL_NULL;
    static const double percentiles[4] = DCAM_DACG_PERCENTILES;
    static const double cba_weights[4] = DCAM_CBA_WEIGHTS;
    const double dacg[8] = {DCAM_DACG_STD,  DCAM_DACG_MEAN_HIGH, DCAM_DACG_MEAN_LOW, percentiles[0],
                            percentiles[1], percentiles[2],      percentiles[3],     DCAM_DACG_SIGMA};
    const double cba[5] = {cba_weights[0], cba_weights[1], cba_weights[2], cba_weights[3], DCAM_CBA_FLOOR};
    cfg->akd_kernel = 0;
    cfg->akd = 1;
    cfg->dacg = 1;
    cfg->cba = 1;
    cfg->sicd = DCAM_SICD_REFERENCE;
    for (int i = 0; i < 8; ++i) cfg->dacg_params[i] = static_cast<float>(dacg[i]);
    for (int i = 0; i < 5; ++i) cfg->cba_params[i] = static_cast<float>(cba[i]);
    return DCAM_OK;
}
