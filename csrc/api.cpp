// Small C API entry points: version, error strings, default configuration.
#include "dcam.h"

extern "C" const char* dcam_version(void) { return DCAM_VERSION_STRING; }

extern "C" const char* dcam_error_string(int code) {
    switch (code) {
        case DCAM_OK: return "ok";
        case DCAM_EINVAL_NULL: return "a required pointer argument is NULL";
        case DCAM_EINVAL_SHAPE: return "invalid size argument";
        case DCAM_EINVAL_DTYPE: return "unknown dtype";
        case DCAM_EINVAL_CONFIG: return "invalid refine configuration (akd_kernel must be 0 or odd >= 1, sicd 0..2)";
        case DCAM_ENOMEM: return "out of memory";
        default: return "unknown error code";
    }
}

extern "C" int dcam_refine_config_default(dcam_refine_config* cfg) {
    if (!cfg) return DCAM_EINVAL_NULL;
    static const float dacg[8] = {0.22f, 0.35f, 0.25f, 90.0f, 75.0f, 80.0f, 85.0f, 0.3f};
    static const float cba[5] = {0.15f, 0.15f, 0.2f, 0.015f, 0.5f};
    cfg->akd_kernel = 0;
    cfg->akd = 1;
    cfg->dacg = 1;
    cfg->cba = 1;
    cfg->sicd = DCAM_SICD_REFERENCE;
    for (int i = 0; i < 8; ++i) cfg->dacg_params[i] = dacg[i];
    for (int i = 0; i < 5; ++i) cfg->cba_params[i] = cba[i];
    return DCAM_OK;
}
