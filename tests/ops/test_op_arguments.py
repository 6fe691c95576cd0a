"""Direct calls of the registered ops (torch.ops.dcam.*, README "Dispatch"): every kernel of each op (the
C++ one on CPU, Triton on CUDA, here in its interpreter, the reference default body of the other devices)
and its fake kernel (meta tensors, torch.compile, torch.export) refuse a malformed non-value argument with
one InputError line naming the op and the argument; the public functions' checks did not reach them, and
the kernels raised torch's or the extension's errors, naming nothing ("not enough values to unpack",
"invalid shape dimension -4", "shape '[2, 3]' is invalid for input of size 2", "invalid size argument").
Calls whose outputs are empty give the same zeros on every kernel."""
import re

import pytest
import torch

import dcam
import dcam.ops.api  # noqa: F401  (the ops, as a user's toolchain imports them)
from dcam.errors import InputError

K = torch._C.DispatchKey
R = torch.randn
CONFIG = dcam.CamConfig().op_args()
DACG, CBA = CONFIG["dacg_params"], CONFIG["cba_params"]


def _refine(**change):
    """The refine op's arguments for 2 images x 3 words of 4x5 maps, with some changed."""
    args = dict(raw=torch.rand(2, 3, 4, 5), degenerate=torch.zeros(2, 3, dtype=torch.bool),
                steps=torch.full((2,), 64.0), image_size=torch.full((2,), 512.0), repeat_ratio=torch.zeros(2),
                context_maps=None, context_weights=None, akd_kernel=0, akd=True, dacg=True, cba=True, sicd=1,
                dacg_params=DACG, cba_params=CBA)
    args.update(change)
    return tuple(args.values())


NO_SELF = torch.ones(2, 3, 3) - torch.eye(3)  # context weights with a zero diagonal

#: (op, arguments, the error's text after "dcam::<op>: ")
BAD = [
    ("pool_gradients", (torch.tensor(1.0), torch.tensor(1.0), 1, 1, True, True),
     "acts must be [B, N, D], got shape ()"),
    ("pool_gradients", (R(2, 16, 8), R(3, 16, 8), 4, 4, True, True), "grads must be [B, T, N, D], got shape (3, 16, 8)"),
    ("pool_gradients", (R(2, 16, 8), R(2, 3, 16, 8), -4, -4, True, True), "(h, w) must be positive, got (-4, -4)"),
    ("pool_gradients", (R(2, 16, 8), R(2, 3, 16, 8), 4, 5, True, True),
     "(h, w) 4x5 = 20 tokens does not match the image-token span of 16 tokens"),
    ("pool_gradients", (R(2, 16, 0), R(2, 3, 16, 0), 4, 4, True, True),
     "acts has hidden size 0: a map is a mean over the D channels (D >= 1)"),
    ("pool_gradients", (R(2, 16, 8), R(1, 3, 16, 8), 4, 4, True, True), "grads has batch size 1 but acts has 2"),
    ("pool_gradients", (R(2, 16, 8), R(2, 3, 12, 8), 4, 4, True, True),
     "grads has 12 image tokens (dim 2) but acts has 16"),
    ("pool_gradients", (R(2, 16, 8), R(2, 3, 16, 6), 4, 4, True, True), "grads has hidden size 6 but acts has 8"),
    ("pool_gradients", (R(2, 16, 8), R(2, 3, 16, 8).double(), 4, 4, True, True),
     "acts and grads must share one dtype, got acts torch.float32 and grads torch.float64"),
    ("pool_gradients", (torch.ones(2, 16, 8, dtype=torch.int32), torch.ones(2, 3, 16, 8, dtype=torch.int32), 4, 4,
                        True, True), "acts must be a floating-point tensor"),
    ("channel_weights", (R(3, 16, 8), True, True), "grads must be [B, T, N, D], got shape (3, 16, 8)"),
    ("channel_weights", (torch.ones(2, 3, 16, 8, dtype=torch.int64), True, True),
     "grads must be a floating-point tensor"),
    ("channel_weights", (R(2, 3, 0, 8), True, True),
     "grads has no image tokens (shape (2, 3, 0, 8)): a channel weight is a mean over the N tokens (N >= 1)"),
    ("weighted_maps", (R(2, 16, 8), R(3, 8), 4, 4), "weights must be [B, T, D], got shape (3, 8)"),
    ("weighted_maps", (R(16, 8), R(1, 3, 8), 4, 4), "acts must be [B, N, D], got shape (16, 8)"),
    ("weighted_maps", (R(2, 16, 8), R(1, 3, 8), 4, 4), "weights has batch size 1 but acts has 2"),
    ("weighted_maps", (R(2, 16, 8), R(2, 3, 7), 4, 4), "weights has hidden size 7 but acts has 8"),
    ("weighted_maps", (R(2, 16, 8), R(2, 3, 8), 2, 4), "(h, w) 2x4 = 8 tokens does not match"),
    ("weighted_maps", (R(2, 16, 0), R(2, 3, 0), 4, 4), "acts has hidden size 0"),
    ("refine", _refine(raw=torch.rand(2, 3, 20)), "raw must be [B, T, h, w], got shape (2, 3, 20)"),
    ("refine", _refine(raw=torch.rand(2, 3, 0, 5)), "raw has no pixels (shape (2, 3, 0, 5)): a map needs h, w >= 1"),
    ("refine", _refine(degenerate=torch.zeros(2, dtype=torch.bool)), "degenerate must have shape (2, 3), got (2,)"),
    ("refine", _refine(degenerate=torch.zeros(2, 3)), "degenerate must be a bool tensor [B,T]"),
    ("refine", _refine(steps=torch.full((3,), 64.0)), "steps must be [B] = [2] (one per image), got shape (3,)"),
    ("refine", _refine(image_size=torch.tensor(512.0)), "image_size must be [B] = [2] (one per image), got shape ()"),
    ("refine", _refine(repeat_ratio=torch.zeros(2, dtype=torch.bool)),
     "repeat_ratio must be a tensor of real numbers, got torch.bool"),
    ("refine", _refine(akd_kernel=4), "akd_kernel must be 0 (adaptive) or an odd int >= 1, got 4"),
    ("refine", _refine(akd_kernel=-3), "akd_kernel must be 0 (adaptive) or an odd int >= 1, got -3"),
    ("refine", _refine(sicd=7), "sicd must be one of [0, 1, 2], got 7"),
    ("refine", _refine(dacg_params=DACG[:2]), "dacg_params must hold 8 numbers and cba_params 5, got 2 and 5"),
    ("refine", _refine(dacg_params=[9.0] + DACG[1:]), "dacg_params[0] (dacg_std) must be a finite number in [0, 1]"),
    ("refine", _refine(dacg_params=DACG[:7] + [0.0]), "dacg_params[7] (dacg_sigma) must be a finite number"),
    ("refine", _refine(cba_params=CBA[:4] + [2.0]), "cba_params[4] (cba_floor) must be a finite number in [0, 1]"),
    ("refine", _refine(sicd=2), "sicd=2 (context) needs context_weights [B,T,T]"),
    ("refine", _refine(context_weights=NO_SELF), "context_weights/context_maps are only used with sicd=2 (context), not sicd=1"),
    ("refine", _refine(sicd=2, context_weights=NO_SELF[:, :2]), "context_weights must have shape (2, 3, 3)"),
    ("refine", _refine(sicd=2, context_weights=NO_SELF, context_maps=torch.rand(2, 3, 5, 4)),
     "context_maps must have the shape of raw_maps (2, 3, 4, 5)"),
]
BAD_IDS = [f"{op}-{i}" for i, (op, _, _) in enumerate(BAD)]

#: the kernels of each op, reached through the dispatcher: the CPU one (C++ where built), the CUDA one
#: (Triton: its interpreter runs CPU tensors, tests/conftest.py), the reference (the default body, which
#: MPS, XPU and PrivateUse1 get); the fake kernel runs for meta tensors
KERNELS = {"cpu": K.CPU, "reference": K.PrivateUse1}
if "triton" in dcam.available_backends():
    KERNELS["triton"] = K.CUDA


def _message(op: str, text: str) -> str:
    return "^" + re.escape(f"dcam::{op}: {text}")


def _meta(args):
    return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("kernel", list(KERNELS) + ["fake"])
@pytest.mark.parametrize("op,args,text", BAD, ids=BAD_IDS)
def test_every_kernel_refuses_a_bad_argument_naming_it(op, args, text, kernel):
    overload = getattr(torch.ops.dcam, op).default
    with pytest.raises(InputError, match=_message(op, text)):
        if kernel == "fake":
            overload(*_meta(args))
        else:
            overload.redispatch(torch._C.DispatchKeySet(KERNELS[kernel]), *args)


@pytest.mark.parametrize("op,args,text", BAD, ids=BAD_IDS)
def test_a_direct_call_refuses_a_bad_argument_naming_it(op, args, text):
    # the op as a user calls it (the packet: the dispatcher picks the CPU kernel here)
    with pytest.raises(InputError, match=_message(op, text)):
        getattr(torch.ops.dcam, op)(*args)


def _split(args):
    """(the tensors, a function of them that calls the op with the other arguments as constants)."""
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def with_tensors(op, *tensors):
        full = list(args)
        for i, t in zip(where, tensors):
            full[i] = t
        return getattr(torch.ops.dcam, op)(*full)
    return [args[i] for i in where], with_tensors


@pytest.mark.parametrize("op,args,text", BAD, ids=BAD_IDS)
def test_compile_and_export_refuse_a_bad_argument_at_trace_time(op, args, text):
    tensors, call = _split(args)
    # torch.export (non-strict, the default) raises the fake kernel's InputError itself
    module = type("Call", (torch.nn.Module,), {"forward": lambda self, *t: call(op, *t)})()
    with pytest.raises(InputError, match=_message(op, text)):
        torch.export.export(module, tuple(tensors))
    # torch.compile: dynamo wraps every error of a fake kernel in its TorchRuntimeError; the InputError is
    # the cause it names (raised at trace time: the kernel never ran)
    compiled = torch.compile(lambda *t: call(op, *t), fullgraph=True, backend="eager", dynamic=False)
    with pytest.raises(Exception) as info:
        compiled(*tensors)
    chain, todo = [], [info.value]
    while todo:
        error = todo.pop()
        if error is not None and error not in chain:
            chain.append(error)
            todo += [error.__cause__, error.__context__]
    assert any(isinstance(e, InputError) and re.match(_message(op, text), str(e)) for e in chain), chain


def test_tensors_on_two_devices_are_refused_naming_them():
    # (meta is the one other device of a CPU-only machine: the dispatcher runs the fake kernel for the pair)
    with pytest.raises(InputError, match=re.escape("dcam::pool_gradients: all tensors must be on one device, got "
                                                   "acts=cpu, grads=meta (grads differs)")):
        torch.ops.dcam.pool_gradients(R(2, 16, 8), R(2, 3, 16, 8, device="meta"), 4, 4, True, True)
    with pytest.raises(InputError, match=re.escape("dcam::refine: all tensors must be on one device")):
        torch.ops.dcam.refine(*_refine(steps=torch.full((2,), 64.0, device="meta")))


@pytest.mark.parametrize("kernel", list(KERNELS) + ["fake"])
def test_channel_weights_of_no_channel_are_empty_on_every_kernel(kernel):
    # D = 0: no weight to compute, as with no image (B = 0) or no word (T = 0); the C++ kernel refused it
    # ("dcam_channel_weights: invalid size argument") where the reference and Triton gave [B, T, 0]
    grads = R(2, 3, 16, 0)
    op = torch.ops.dcam.channel_weights.default
    if kernel == "fake":
        weights, flag = op(grads.to("meta"), True, True)
    else:
        weights, flag = op.redispatch(torch._C.DispatchKeySet(KERNELS[kernel]), grads, True, True)
        assert flag.item() is False
    assert (tuple(weights.shape), weights.dtype, tuple(flag.shape)) == ((2, 3, 0), torch.float32, ())
    torch.library.opcheck(op, (grads, True, True))


def test_no_map_of_no_channel_is_computed_either():
    # B = 0 with D = 0: empty maps on every kernel, no "hidden size 0" error (no map is a mean over the
    # channels); the C++ kernel refused them ("invalid size argument")
    for kernel in KERNELS.values():
        key = torch._C.DispatchKeySet(kernel)
        maps, degenerate, flag = torch.ops.dcam.pool_gradients.default.redispatch(key, R(0, 16, 0), R(0, 3, 16, 0),
                                                                                  4, 4, True, True)
        assert [tuple(t.shape) for t in (maps, degenerate, flag)] == [(0, 3, 4, 4), (0, 3), ()], kernel
        assert not flag.item()
        maps, degenerate = torch.ops.dcam.weighted_maps.default.redispatch(key, R(2, 16, 0), R(2, 0, 0), 4, 4)
        assert [tuple(t.shape) for t in (maps, degenerate)] == [(2, 0, 4, 4), (2, 0)], kernel


@pytest.mark.skipif("cpp" not in dcam.available_backends(), reason="the C++ extension is not built")
def test_the_cpu_kernel_refuses_a_hidden_size_past_the_cpp_limit():
    # 2**24 + 1 channels (half precision: 32 MB): the extension's ValueError named no argument
    grads = torch.zeros(1, 1, 1, 2 ** 24 + 1, dtype=torch.float16)
    with pytest.raises(InputError, match=re.escape("dcam::channel_weights: grads: hidden size 16777217 is past the "
                                                   "C++ backend's 2**24")):
        torch.ops.dcam.channel_weights(grads, True, False)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_integer_steps_and_image_sizes_refine_as_their_floats(kernel):
    # they were refused as "must be a floating-point tensor" by the op's new checks; the op took them before
    # and dcam.refine takes them
    overload = torch.ops.dcam.refine.default
    keys = torch._C.DispatchKeySet(KERNELS[kernel])
    raw = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    want = overload.redispatch(keys, *_refine(raw=raw, steps=torch.tensor([24.0, 64.0]),
                                              image_size=torch.tensor([300.0, 512.0])))
    got = overload.redispatch(keys, *_refine(raw=raw, steps=torch.tensor([24, 64]),
                                             image_size=torch.tensor([300, 512], dtype=torch.int32)))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    with pytest.raises(InputError, match=_message("refine", "steps must be a tensor of real numbers, got torch.bool")):
        overload.redispatch(keys, *_refine(steps=torch.tensor([True, False])))


#: per-image values and context weights outside the ranges dcam.refine takes (README: values are checked by
#: the public functions only; a direct op call computes with them as the reference does)
OUT_OF_RANGE = {
    "steps=0": dict(steps=torch.tensor([0.0, 64.0])),
    "image_size=-512": dict(image_size=torch.tensor([-512.0, 512.0])),
    "repeat_ratio=2": dict(repeat_ratio=torch.tensor([2.0, 0.5])),
    "context_weights_diagonal": dict(sicd=2, context_weights=torch.ones(2, 3, 3)),
    # Triton differed here: a negative alpha (the reference's is 0 unless sum(m * I) > 0), finite maps where
    # the reference's are NaN (its range test kept the map unchanged on a NaN range; a GPU drops NaN in max)
    "repeat_ratio=-0.3": dict(repeat_ratio=torch.tensor([-0.3, 0.5])),
    "repeat_ratio=nan": dict(repeat_ratio=torch.tensor([float("nan"), 0.5])),
    "context_weights_nan": dict(sicd=2, context_weights=torch.where(NO_SELF == 1, float("nan"), NO_SELF)),
}


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_per_image_values_out_of_range_are_computed_with_on_every_kernel(kernel, case):
    # the C++ kernel raised a bare ValueError naming neither op nor argument ("dcam_refine: invalid value
    # (...)") where the reference and Triton kernels returned maps
    from dcam.ops.reference import refine_reference

    raw = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    args = _refine(raw=raw, **OUT_OF_RANGE[case])
    got = torch.ops.dcam.refine.default.redispatch(torch._C.DispatchKeySet(KERNELS[kernel]), *args)
    want = refine_reference(*args)
    for name, g, w in zip(("maps", "kernel_size", "dacg_strategy", "dacg_threshold", "cba_threshold", "sicd_alpha"),
                          got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0, equal_nan=True, msg=f"{case} {kernel}: {name}")
    assert got[0][0].isnan().all() == case.endswith("nan")  # NaN in, NaN maps out: not a plausible map
    if case == "steps=0":  # by hand: f_step = min(0 / 16, 2) = 0, k = floor(0) = 0 -> 1 (odd) -> 3 (K_MIN)
        assert got[1][0].tolist() == [3, 3, 3]
    # dcam.refine, which checks values, refuses them naming the argument
    kw = {k: v for k, v in OUT_OF_RANGE[case].items() if k != "sicd"}
    cfg = dcam.CamConfig(sicd="context" if case.startswith("context") else "reference")
    with pytest.raises(InputError, match="^" + next(iter(kw))):
        dcam.refine(raw, config=cfg, backend="torch", **kw)


@pytest.mark.skipif("cpp" not in dcam.available_backends(), reason="the C++ extension is not built")
def test_the_cpu_kernel_refuses_nonfinite_maps_naming_them():
    # the one value the C++ kernel still reads as an error (it cannot give the reference's NaN maps): it was
    # a ValueError listing the per-image value ranges, "dcam_refine: invalid value (steps and image_size ...)"
    raw = torch.rand(2, 3, 4, 5)
    raw[1, 2, 0, 0] = float("nan")
    with pytest.raises(InputError, match=_message("refine", "raw holds NaN or Inf, which the C++ kernel refuses")):
        torch.ops.dcam.refine(*_refine(raw=raw))
    ctx = torch.rand(2, 3, 4, 5)
    ctx[0, 0, 3, 4] = float("inf")
    with pytest.raises(InputError, match=_message("refine", "context_maps holds NaN or Inf, which the C++")):
        torch.ops.dcam.refine(*_refine(sicd=2, context_maps=ctx, context_weights=NO_SELF))
