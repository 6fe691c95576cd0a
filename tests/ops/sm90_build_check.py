"""Ahead-of-time check of the Triton launchers and kernels, run by
test_triton.py::test_launchers_trace_and_build_for_sm90 in a fresh Python
WITHOUT Triton's interpreter (so the kernels are real JITFunctions):

1. make_fx traces each launcher (fake tensors) into nothing but allocations
   and triton_kernel_wrapper_mutation nodes: no host sync, no data-dependent
   Python, what triton_op + torch.compile need;
2. every launch the launchers make (recorded, not run) is compiled for an
   H100 (sm_90) down to a cubin with triton's bundled ptxas.

No GPU is needed for either. Prints "traced N" and "compiled N" (or "SKIP ..."
when triton has no NVIDIA backend).
"""
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from dcam.kernels import refine as refine_kernels  # noqa: E402
from dcam.ops import triton_launch as TL  # noqa: E402
from dcam.ops.config import CamConfig  # noqa: E402

assert type(refine_kernels._refine_kernel).__name__ == "JITFunction"
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton.backends.nvidia  # noqa: F401
except ImportError as exc:
    print("SKIP no nvidia backend:", exc); sys.exit(0)

def refine_args(T, h, w, cfg, dtype=torch.float32):
    o = cfg.op_args()
    raw = torch.rand(2, T, h, w).to(dtype)
    return (raw, torch.zeros(2, T, dtype=torch.bool), torch.ones(2), torch.ones(2), torch.ones(2), None,
            torch.rand(2, T, T) * (1 - torch.eye(T)), o["akd_kernel"], o["akd"], o["dacg"], o["cba"], o["sicd"],
            o["dacg_params"],
            o["cba_params"])

# allocations, the kernels, and (pooling) the device-side flag: zeros when unchecked,
# the max of the per-program flags when checked, and the identical-rows test of the states
# (maps constant by construction are degenerate: compare, reduce, mask); nothing that syncs
allowed = {"aten.empty.memory_format", "triton_kernel_wrapper_mutation", "aten.zeros.default",
           "aten.amax.default", "aten._to_copy.default", "aten.eq.Tensor", "aten.all.dim", "aten.slice.Tensor",
           "aten.unsqueeze.default", "aten.masked_fill_.Scalar", "aten.bitwise_or.Tensor"}
a, g = torch.randn(2, 64, 32), torch.randn(2, 3, 64, 32, dtype=torch.bfloat16)
calls = [(lambda a, g: TL.pool_gradients_triton(a, g, 8, 8, True), (a, g)),
         (lambda a, g: TL.pool_gradients_triton(a, g, 8, 8, False), (a, g)),
         (lambda a, g: TL.pool_gradients_triton(a, g, 8, 8, True, True), (a, g)),
         (lambda g: TL.channel_weights_triton(g, False, True), (g,)),
         (lambda a, w: TL.weighted_maps_triton(a, w, 8, 8), (a, torch.randn(2, 3, 32))),
         (lambda *x: TL.refine_triton(*x), refine_args(3, 8, 8, CamConfig())),
         (lambda *x: TL.refine_triton(*x), refine_args(3, 8, 8, CamConfig(sicd="context", akd_kernel=5)))]
for fn, args in calls:
    gm = make_fx(fn, tracing_mode="fake")(*args)
    got = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert got <= allowed and "triton_kernel_wrapper_mutation" in got, got
print("traced", len(calls))

TT = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.bool: "*i1",
      torch.int32: "*i32"}
launches = []
class Recorder:
    def __init__(self, fn): self.fn = fn
    def __getitem__(self, grid):
        return lambda *args, **kw: launches.append((self.fn, args, kw))
TL.wrap_triton = Recorder
a, g = torch.randn(2, 576, 64, dtype=torch.bfloat16), torch.randn(2, 4, 576, 64, dtype=torch.bfloat16)
TL.pool_gradients_triton(a, g, 24, 24, True)
TL.pool_gradients_triton(a.float(), g.half(), 24, 24, False)
TL.pool_gradients_triton(a, g, 24, 24, True, True)
TL.weighted_maps_triton(a, torch.randn(2, 4, 64), 24, 24)  # signed product on bf16 activations
# the tensors are on the CPU here, but what is compiled must be what runs on a GPU: the
# GPU's tile sizes (CPU tensors would get the interpreter's, 64x larger, which no GPU runs
# and which take LLVM minutes instead of seconds to compile)
TL.refine_triton(*refine_args(4, 24, 24, CamConfig()), tile=TL.TILE_GPU)
TL.refine_triton(*refine_args(4, 27, 20, CamConfig(sicd="context", akd_kernel=7, dacg=False), torch.float16),
                 tile=TL.TILE_GPU)
TL.refine_triton(*refine_args(2, 1, 1, CamConfig(akd=False, sicd="off")), tile=TL.TILE_GPU)
assert len(launches) == 14, len(launches)
target = GPUTarget("cuda", 90, 32)
for fn, args, kw in launches:
    kw = dict(kw); num_warps = kw.pop("num_warps")
    bound = dict(zip(fn.arg_names, args)); bound.update(kw)
    sig, consts = {}, {}
    for i, name in enumerate(fn.arg_names):
        v = bound[name]
        if i in fn.constexprs:
            sig[name] = "constexpr"; consts[name] = v
        elif isinstance(v, torch.Tensor):
            sig[name] = TT[v.dtype]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if abs(v) < 2**31 else "i64"
        else:
            sig[name] = "fp32"
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                       options={"num_warps": num_warps})
    assert k.asm.get("cubin"), fn.__name__
print("compiled", len(launches))
