// pybind11 module dcam._C: thin numpy wrappers around the C API in dcam.h.
// No torch headers: the Python layer (dcam/backends/cpp.py) hands numpy views of
// contiguous CPU tensors in and wraps the fresh numpy outputs with torch.from_numpy.
// The GIL is released around the compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <new>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "../akd.hpp"  // internal: the AKD test hook (dcam::set_akd_path)
#include "../refine.hpp"  // internal: dcam_refine without its per-image value checks
#include "dcam.h"

namespace py = pybind11;

namespace {

// What dcam/ops/cpp.py expects of this module (its INTERFACE_VERSION): bump both when the Python side
// comes to need something an older build lacks (version 1: NonFiniteMapsError;
// version 2: channel_weights_into). An editable install whose
// extension was not rebuilt is then reported stale at import, not met as an AttributeError mid-call.
constexpr int kInterfaceVersion = 2;

// An allocation failure of the kernels: pybind11 raises MemoryError with what() (not a
// ValueError: running out of memory is no argument's fault).
class OutOfMemory : public std::bad_alloc {
   public:
    explicit OutOfMemory(std::string msg) : msg_(std::move(msg)) {}
    const char* what() const noexcept override { return msg_.c_str(); }

   private:
    std::string msg_;
};

// NaN/Inf in the maps refine_maps was given: raised as dcam._C.NonFiniteMapsError (a ValueError),
// a type of its own so that dcam/ops/cpp.py can name the argument without reading the message.
class NonFiniteMaps : public std::invalid_argument {
   public:
    using std::invalid_argument::invalid_argument;
};

void check(int code, const char* what) {
    if (code == DCAM_ENOMEM) throw OutOfMemory(std::string(what) + ": " + dcam_error_string(code));
    if (code != DCAM_OK) throw std::invalid_argument(std::string(what) + ": " + dcam_error_string(code));
}

void require_contiguous(const py::array& a, const char* name) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
}

// A float32 C-contiguous array with the given shape (checked, no copy).
const float* f32(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
    if (!a.dtype().is(py::dtype::of<float>())) throw std::invalid_argument(std::string(name) + " must be float32");
    require_contiguous(a, name);
    if (a.ndim() != static_cast<py::ssize_t>(shape.size()))
        throw std::invalid_argument(std::string(name) + " has the wrong number of dimensions");
    for (size_t i = 0; i < shape.size(); ++i)
        if (a.shape(i) != shape[i]) throw std::invalid_argument(std::string(name) + " has the wrong shape");
    return static_cast<const float*>(a.data());
}

dcam_dtype dtype_of(const py::array& a) {
    const py::dtype dt = a.dtype();
    if (dt.is(py::dtype::of<float>())) return DCAM_F32;
    if (dt.kind() == 'f' && dt.itemsize() == 2) return DCAM_F16;
    if ((dt.kind() == 'i' || dt.kind() == 'u') && dt.itemsize() == 2) return DCAM_BF16;  // bfloat16 bits
    throw std::invalid_argument("dtype must be float32, float16, or int16/uint16 (bfloat16 bits)");
}

py::tuple pool_gradients(const py::array& acts, const py::array& grads, bool grad_relu, bool check_grads) {
    if (acts.ndim() != 3 || grads.ndim() != 4) throw std::invalid_argument("acts must be [B,N,D], grads [B,T,N,D]");
    require_contiguous(acts, "acts");
    require_contiguous(grads, "grads");
    const dcam_dtype dt = dtype_of(acts);
    if (dtype_of(grads) != dt || acts.dtype().kind() != grads.dtype().kind())
        throw std::invalid_argument("acts and grads must have the same dtype");
    const int64_t B = acts.shape(0), N = acts.shape(1), D = acts.shape(2), T = grads.shape(1);
    if (grads.shape(0) != B || grads.shape(2) != N || grads.shape(3) != D)
        throw std::invalid_argument("grads shape does not match acts");
    py::array_t<float> maps({B, T, N});
    py::array_t<bool> deg({B, T});
    const void* a = acts.data();
    const void* g = grads.data();
    float* mo = maps.mutable_data();
    uint8_t* dg = reinterpret_cast<uint8_t*>(deg.mutable_data());
    int rc;
    int32_t nonfinite = 0;
    {
        py::gil_scoped_release nogil;
        rc = check_grads ? dcam_pool_gradients_checked(a, g, dt, B, T, N, D, grad_relu ? 1 : 0, mo, dg, &nonfinite)
                         : dcam_pool_gradients(a, g, dt, B, T, N, D, grad_relu ? 1 : 0, mo, dg);
    }
    check(rc, "dcam_pool_gradients");
    return py::make_tuple(maps, deg, nonfinite != 0);
}

py::tuple channel_weights(const py::array& grads, bool grad_relu, bool check_grads) {
    if (grads.ndim() != 4) throw std::invalid_argument("grads must be [B,T,N,D]");
    require_contiguous(grads, "grads");
    const dcam_dtype dt = dtype_of(grads);
    const int64_t B = grads.shape(0), T = grads.shape(1), N = grads.shape(2), D = grads.shape(3);
    py::array_t<float> weights({B, T, D});
    const void* g = grads.data();
    float* wo = weights.mutable_data();
    int rc;
    int32_t nonfinite = 0;
    {
        py::gil_scoped_release nogil;
        rc = dcam_channel_weights(g, dt, B, T, N, D, grad_relu ? 1 : 0, wo, check_grads ? &nonfinite : nullptr);
    }
    check(rc, "dcam_channel_weights");
    return py::make_tuple(weights, nonfinite != 0);
}

// One chunk of a stream of gradients into the rows of the caller's weight table (dcam/ops/streaming.py):
// the chunk is passed by address (a contiguous CPU tensor's data_ptr(), with its dtype's code and its
// sizes), not as a numpy view: right after a chunk has streamed tens of MB through the caches, each
// torch or numpy operation of the Python layer costs tens of microseconds, paid per chunk. The caller
// keeps the tensor alive and checked its layout; the table (float32 [B, table_tokens, D]) is checked here.
bool channel_weights_into(const py::array& table, int64_t first_token, uintptr_t grads, int dtype, int64_t tokens,
                          int64_t N, bool grad_relu, bool check_grads) {
    if (table.ndim() != 3) throw std::invalid_argument("table must be [B,T,D]");
    const int64_t B = table.shape(0), table_tokens = table.shape(1), D = table.shape(2);
    float* w = const_cast<float*>(f32(table, "table", {B, table_tokens, D}));
    if (!table.writeable()) throw std::invalid_argument("table must be writeable");
    const void* g = reinterpret_cast<const void*>(grads);
    const dcam_dtype dt = static_cast<dcam_dtype>(dtype);
    int rc;
    int32_t nonfinite = 0;
    {
        py::gil_scoped_release nogil;
        rc = dcam_channel_weights_into(g, dt, B, tokens, N, D, grad_relu ? 1 : 0, w, table_tokens, first_token,
                                       check_grads ? &nonfinite : nullptr);
    }
    check(rc, "dcam_channel_weights_into");
    return nonfinite != 0;
}

py::tuple weighted_maps(const py::array& acts, const py::array& weights) {
    if (acts.ndim() != 3 || weights.ndim() != 3) throw std::invalid_argument("acts must be [B,N,D], weights [B,T,D]");
    require_contiguous(acts, "acts");
    const dcam_dtype dt = dtype_of(acts);
    const int64_t B = acts.shape(0), N = acts.shape(1), D = acts.shape(2), T = weights.shape(1);
    const float* w = f32(weights, "weights", {B, T, D});
    py::array_t<float> maps({B, T, N});
    py::array_t<bool> deg({B, T});
    const void* a = acts.data();
    float* mo = maps.mutable_data();
    uint8_t* dg = reinterpret_cast<uint8_t*>(deg.mutable_data());
    int rc;
    {
        py::gil_scoped_release nogil;
        rc = dcam_weighted_maps(a, dt, w, B, T, N, D, mo, dg);
    }
    check(rc, "dcam_weighted_maps");
    return py::make_tuple(maps, deg);
}

py::tuple refine(const py::array& raw, const py::array& degenerate, const py::array& steps,
                 const py::array& image_size, const py::array& repeat_ratio, const py::object& context_maps,
                 const py::object& context_weights, int akd_kernel, bool akd, bool dacg, bool cba, int sicd,
                 const std::vector<double>& dacg_params, const std::vector<double>& cba_params) {
    if (raw.ndim() != 4) throw std::invalid_argument("raw must be [B,T,h,w]");
    const int64_t B = raw.shape(0), T = raw.shape(1), h = raw.shape(2), w = raw.shape(3);
    const float* r = f32(raw, "raw", {B, T, h, w});
    if (degenerate.itemsize() != 1 || degenerate.ndim() != 2 || degenerate.shape(0) != B || degenerate.shape(1) != T)
        throw std::invalid_argument("degenerate must be a bool/uint8 [B,T] array");
    require_contiguous(degenerate, "degenerate");
    const uint8_t* dg = static_cast<const uint8_t*>(degenerate.data());
    const float* st = f32(steps, "steps", {B});
    const float* is = f32(image_size, "image_size", {B});
    const float* rr = f32(repeat_ratio, "repeat_ratio", {B});
    const float* cm = nullptr;
    const float* cw = nullptr;
    py::array cm_arr, cw_arr;  // keep alive
    if (!context_maps.is_none()) {
        cm_arr = py::reinterpret_borrow<py::array>(context_maps);
        cm = f32(cm_arr, "context_maps", {B, T, h, w});
    }
    if (!context_weights.is_none()) {
        cw_arr = py::reinterpret_borrow<py::array>(context_weights);
        cw = f32(cw_arr, "context_weights", {B, T, T});
    }
    if (dacg_params.size() != 8 || cba_params.size() != 5)
        throw std::invalid_argument("dacg_params must have 8 values and cba_params 5");
    dcam_refine_config cfg;
    cfg.akd_kernel = akd_kernel;
    cfg.akd = akd;
    cfg.dacg = dacg;
    cfg.cba = cba;
    cfg.sicd = sicd;
    for (int i = 0; i < 8; ++i) cfg.dacg_params[i] = static_cast<float>(dacg_params[i]);
    for (int i = 0; i < 5; ++i) cfg.cba_params[i] = static_cast<float>(cba_params[i]);
    if (sicd == DCAM_SICD_CONTEXT && !cw) throw std::invalid_argument("sicd='context' needs context_weights");

    py::array_t<float> maps({B, T, h, w});
    py::array_t<int32_t> ks({B, T}), strat({B, T});
    py::array_t<float> dthr({B, T}), cthr({B, T}), alpha({B, T});
    float* mo = maps.mutable_data();
    int32_t* kp = ks.mutable_data();
    int32_t* sp = strat.mutable_data();
    float* dp = dthr.mutable_data();
    float* cp = cthr.mutable_data();
    float* ap = alpha.mutable_data();
    int rc;
    {
        py::gil_scoped_release nogil;
        // the op's kernel: per-image values unchecked, as on every device (dcam.refine checks them)
        rc = dcam::refine_maps(r, dg, st, is, rr, cm, cw, B, T, h, w, &cfg, mo, kp, sp, dp, cp, ap, false);
    }
    // with the per-image values unchecked, only NaN/Inf maps give it (dcam/ops/cpp.py names the argument)
    if (rc == DCAM_EINVAL_VALUE) throw NonFiniteMaps("dcam_refine: NaN or Inf in the maps");
    check(rc, "dcam_refine");
    return py::make_tuple(maps, ks, strat, dthr, cthr, alpha);
}

void set_akd_path(int path) {
    if (path < static_cast<int>(dcam::AkdPath::kAuto) || path > static_cast<int>(dcam::AkdPath::kSort))
        throw std::invalid_argument("_set_akd_path: path must be 0 (auto), 1 (networks), 2 (bitsets) or 3 (sort)");
    dcam::set_akd_path(static_cast<dcam::AkdPath>(path));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "Diffusion-CAM C++ CPU backend (numpy in/out; see csrc/include/dcam.h)";
    m.attr("INTERFACE_VERSION") = kInterfaceVersion;
    py::register_exception<NonFiniteMaps>(m, "NonFiniteMapsError", PyExc_ValueError);
    m.def("version", &dcam_version);
    m.def("_set_akd_path", &set_akd_path, py::arg("path"),
          "testing only: 0 automatic, 1 sorting networks, 2 rank bitsets, 3 per-window sort");
    m.def("pool_gradients", &pool_gradients, py::arg("acts"), py::arg("grads"), py::arg("grad_relu"),
          py::arg("check_grads") = false,
          "acts [B,N,D], grads [B,T,N,D] (float32 / float16 / int16 holding bfloat16 bits) -> "
          "(maps float32 [B,T,N], degenerate bool [B,T], grads_nonfinite bool: with check_grads, whether "
          "the pass met NaN/Inf in grads, see dcam_pool_gradients_checked; else False)");
    m.def("channel_weights", &channel_weights, py::arg("grads"), py::arg("grad_relu"), py::arg("check_grads") = false,
          "grads [B,T,N,D] (float32 / float16 / int16 holding bfloat16 bits) -> (weights float32 [B,T,D], "
          "grads_nonfinite bool as in pool_gradients)");
    m.def("channel_weights_into", &channel_weights_into, py::arg("table"), py::arg("first_token"), py::arg("grads"),
          py::arg("dtype"), py::arg("tokens"), py::arg("N"), py::arg("grad_relu"), py::arg("check_grads"),
          "weights float32 [B,T_all,D] table, first token, address of contiguous grads [B,tokens,N,D] of dtype "
          "code (0 float32, 1 float16, 2 bfloat16) -> grads_nonfinite bool (as in channel_weights); writes "
          "table[:, first_token:first_token+tokens]");
    m.def("weighted_maps", &weighted_maps, py::arg("acts"), py::arg("weights"),
          "acts [B,N,D] (as in pool_gradients), weights float32 [B,T,D] -> (maps float32 [B,T,N], "
          "degenerate bool [B,T])");
    m.def("refine", &refine, py::arg("raw"), py::arg("degenerate"), py::arg("steps"), py::arg("image_size"),
          py::arg("repeat_ratio"), py::arg("context_maps"), py::arg("context_weights"), py::arg("akd_kernel"),
          py::arg("akd"), py::arg("dacg"), py::arg("cba"), py::arg("sicd"), py::arg("dacg_params"),
          py::arg("cba_params"),
          "raw float32 [B,T,h,w] ... -> (maps, kernel_size i32, dacg_strategy i32, dacg_threshold, "
          "cba_threshold, sicd_alpha) as numpy arrays");
}
