"""The value checks (check_finite=True, the default) inside torch.compile(fullgraph=True): each public
function then calls one opaque checked op (dcam::<function>_checked, dcam/ops/api.py) whose kernel is
the eager function with the check on. The outputs are eager's, bad input raises eager's error (type
and message), torch.library.opcheck passes on each op, and a CamConfig crosses the ops' schema
(CamConfig.from_op_args). torch.export: tests/ops/test_api.py."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import dcam
from dcam.errors import InputError
from dcam.ops import api

GRID = (3, 2)
CONFIG = dcam.CamConfig(akd_kernel=3)


def _outputs(result):
    """Every tensor of a RawMaps / Refined, or the weights tensor itself."""
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(getattr(result, f.name) for f in dataclasses.fields(result))


#: each public function with the check on, called with two tensors, and its bad inputs:
#: (which of the two, where in it, the value put there)
CALLS = {
    "pool_gradients": (lambda a, g: _outputs(dcam.pool_gradients(a, g, GRID)),
                       [(1, (1, 2, 0, 3), float("nan")), (0, (0, 4, 1), float("inf"))]),
    "channel_weights": (lambda a, g: _outputs(dcam.channel_weights(g, grad_relu=False)),
                        [(1, (0, 0, 5, 0), float("-inf"))]),
    "weighted_maps": (lambda a, w: _outputs(dcam.weighted_maps(a, w, GRID)),
                      [(1, (1, 1, 2), float("nan")), (0, (1, 0, 0), float("nan"))]),
    # raw maps and per-image steps; the first map of each image is given as degenerate when it starts above 0.5
    "refine": (lambda r, s: _outputs(dcam.refine(r, CONFIG, steps=s, image_size=64, degenerate=r[:, :, 0, 0] > 0.5)),
               [(0, (1, 2, 1, 1), float("nan")), (1, (1,), 0.0)]),
    "diffusion_cam": (lambda a, g: _outputs(dcam.diffusion_cam(a, g, GRID, CONFIG, steps=24, image_size=64,
                                                               repeat_ratio=0.1)),
                      [(1, (0, 2, 5, 1), float("nan")), (0, (1, 1, 2), float("nan"))]),
}


def _inputs(name, device):
    gen = torch.Generator().manual_seed(0)
    acts, grads = torch.randn(2, 6, 4, generator=gen), torch.randn(2, 3, 6, 4, generator=gen)
    if name == "weighted_maps":
        grads = dcam.channel_weights(grads)
    if name == "refine":
        acts, grads = dcam.pool_gradients(acts, grads, GRID).maps, torch.tensor([24.0, 40.0])
    return acts.to(device), grads.to(device)


def _compiled(fn):
    """``fn`` compiled whole (aot_eager), and the graphs dynamo made of it."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
    return torch.compile(fn, fullgraph=True, backend=backend), graphs


def _error(call, *args) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args)
    return info.value


@pytest.mark.parametrize("name", sorted(CALLS))
def test_compiled_with_the_check_the_functions_give_eager_outputs_and_errors(name, device):
    # the value checks did bool(tensor) on the host: fullgraph=True failed with torch's "Could not guard on
    # data-dependent expression", and the README asked for check_finite=False
    call, bad_inputs = CALLS[name]
    args = _inputs(name, device)
    compiled, graphs = _compiled(call)
    got, want = compiled(*args), call(*args)
    assert len(got) == len(want)
    for g, w in zip(got, want):  # the same kernel runs in both (the dispatcher's, by device)
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert len(graphs) == 1 and sum(f"dcam.{name}_checked" in t for t in targets) == 1, targets
    for which, where, value in bad_inputs:
        broken = list(args)
        broken[which] = broken[which].clone()
        broken[which][where] = value
        eager = _error(call, *broken)
        inside = _error(compiled, *broken)
        assert (type(inside), str(inside)) == (type(eager), str(eager))
    assert len(graphs) == 1  # (new values, no new graph)


def test_compiled_errors_are_the_eager_ones_by_hand(device):
    # the messages of the cases above, written out for two of them
    call, _ = CALLS["refine"]
    raw, steps = _inputs("refine", device)
    compiled, _ = _compiled(call)
    raw[0, 1, 2, 0] = float("nan")
    error = _error(compiled, raw, steps)
    assert type(error) is dcam.errors.NonFiniteError
    assert str(error) == "raw_maps contains 1 NaN/Inf value(s); pass check_finite=False to skip this check"
    raw[0, 1, 2, 0] = 0.5
    with pytest.raises(InputError, match=r"^steps must lie in \(0, inf\), got \[24.0, -1.0\]$"):
        compiled(raw, torch.tensor([24.0, -1.0], device=device))


def test_config_round_trips_through_the_op_args():
    configs = [dcam.CamConfig(), CONFIG, dcam.CamConfig(sicd="context", grad_relu=False, akd=False),
               dcam.CamConfig(akd_kernel=7, dacg=False, cba=False, sicd="off", dacg_std=0.1, dacg_mean_high=0.9,
                              dacg_mean_low=0.05, dacg_percentiles=(1, 2.5, 50, 99.5), dacg_sigma=2.25,
                              cba_weights=(0, 1, 2, 3), cba_floor=1.0)]
    for config in configs:
        assert dcam.CamConfig.from_op_args(config.op_args(), config.grad_relu) == config
    # by hand: the codes of op_args' docstring
    args = dict(akd_kernel=5, akd=True, dacg=False, cba=True, sicd=2,
                dacg_params=[0.1, 0.6, 0.2, 91.0, 76.0, 81.0, 86.0, 0.5], cba_params=[1.0, 2.0, 3.0, 4.0, 0.25])
    assert dcam.CamConfig.from_op_args(args, grad_relu=False) == dcam.CamConfig(
        akd_kernel=5, dacg=False, sicd="context", grad_relu=False, dacg_std=0.1, dacg_mean_high=0.6,
        dacg_mean_low=0.2, dacg_percentiles=(91, 76, 81, 86), dacg_sigma=0.5, cba_weights=(1, 2, 3, 4),
        cba_floor=0.25)
    assert dcam.CamConfig.from_op_args(dict(args, akd_kernel=0)).akd_kernel == "adaptive"
    with pytest.raises(InputError, match="dacg_params must hold 8 numbers"):
        dcam.CamConfig.from_op_args(dict(args, dacg_params=[0.1]))


def test_opcheck_every_checked_op(device):
    a, g = _inputs("pool_gradients", device)
    w = dcam.channel_weights(g)
    raw = dcam.pool_gradients(a, g, GRID)
    per_image = [torch.tensor(v, device=device) for v in ([24.0, 40.0], [64.0, 64.0], [0.0, 0.2])]
    no_self = (torch.rand(2, 3, 3) * (1 - torch.eye(3))).to(device)  # SICD context weights: zero diagonal
    context = api._config_args(dcam.CamConfig(sicd="context"))
    ops = torch.ops.dcam
    cases = [
        (ops.pool_gradients_checked, (a, g, *GRID, True, "auto")),
        (ops.pool_gradients_checked, (a[0], g[0], *GRID, False, "torch")),  # [N,D] / [T,N,D]: a batch of one
        (ops.channel_weights_checked, (g, False, "auto")),
        (ops.weighted_maps_checked, (a, w, *GRID, "auto")),
        (ops.refine_checked, (raw.maps, None, *per_image, None, None, *api._config_args(CONFIG), "auto")),
        (ops.refine_checked, (raw.maps, raw.degenerate, *per_image, raw.maps, no_self, *context, "torch")),
        (ops.diffusion_cam_checked, (a, g, *GRID, *per_image, None, True, *api._config_args(CONFIG), "auto")),
    ]
    for op, args in cases:
        torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("check", [True, False])
def test_the_first_dcam_call_of_a_process_may_be_compiled(check, tmp_path):
    # a compiled first call failed whatever check_finite said: the C++ backend is loaded on first use under a
    # lock, which dynamo cannot enter ("Unsupported context manager")
    script = ("import torch, dcam.ops as O\n"
              "a, g = torch.randn(16, 8), torch.randn(2, 16, 8)\n"
              f"f = torch.compile(lambda a, g: O.pool_gradients(a, g, (4, 4), check_finite={check}).maps, "
              "fullgraph=True, backend='aot_eager')\n"
              "print(tuple(f(a, g).shape))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 2, 4, 4)"
