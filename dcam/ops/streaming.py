"""The first half of pooling for gradients that arrive in chunks of tokens: each chunk's
channel weights go into one weight table of all tokens, made once, which
:func:`~dcam.ops.api.weighted_maps` then takes whole.

    stream = WeightStream(batch=1, tokens=64, hidden=4096, grad_relu=True)
    for chunk in chunks:               # grads [B, k, N, D], tokens in order
        stream.add(chunk)              # = channel_weights(chunk), written into the table
    maps = weighted_maps(acts, stream.weights, grid)

The explainer's Diffusion-CAM (dcam/methods/diffusion_cam.py) reduces a probe's
gradients this way, and ``dcam bench``'s streamed case times this object, so the
bench measures what the explainer runs.

Why an object: right after a chunk has streamed tens of MB of gradients through the
caches, every Python and torch operation is cold (measured on a 2-core box: a tensor's
``dim()`` ~9 us, a numpy view ~30-50 us, ``torch.from_numpy`` ~24 us, a ``torch.cat`` of the
eight tables ~220 us once), and one ``channel_weights`` call per chunk paid a dozen of them:
x1.13 of one ``pool_gradients`` call at T=64 N=576 D=4096 in chunks of 8. Here the table,
the backend and the sizes are checked once, when the stream is made; on the C++ backend a
chunk then costs a few attribute reads and one call of the extension, which writes the
chunk's rows of the table in place (``dcam_channel_weights_into`` of the C API) and returns
the NaN/Inf flag as a Python bool. Any other chunk (another backend, a non-contiguous or
float64 chunk, a [k, N, D] one) goes through :func:`~dcam.ops.api.channel_weights` with every
check, and its weights are copied into the table: the same weights, bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from . import api
from . import validation as V

#: dcam_dtype of the chunks the extension takes by address
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")
    return value


class WeightStream:
    """The channel weights of ``tokens`` tokens of ``batch`` images, added chunk by chunk
    in token order (:meth:`add`), as one float32 table ``[batch, tokens, hidden]``
    (:attr:`weights`, once every token was added).

    grad_relu, backend, check_finite: as in :func:`dcam.channel_weights`, for every chunk
    (with check_finite, a chunk holding NaN/Inf is refused with its InputError and not
    counted as added). device: where the table lives, the chunks' device."""

    def __init__(self, batch: int, tokens: int, hidden: int, grad_relu: bool = True, backend: str = "auto",
                 device="cpu", check_finite: bool = True):
        self.batch, self.tokens, self.hidden = _size("batch", batch), _size("tokens", tokens), _size("hidden", hidden)
        V.check_bool("grad_relu", grad_relu)
        V.check_bool("check_finite", check_finite)
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise InputError(f"device: not a torch device: {device!r}") from None
        self.backend = api.check_backend(backend, device, hidden=hidden, hidden_of="grads")
        self.grad_relu, self.check_finite = grad_relu, check_finite
        self._table = torch.empty(batch, tokens, hidden, dtype=torch.float32, device=device)
        self.added = 0  # tokens whose weights are in the table (the first `added`)
        self._ext = None
        if api.runs_cpp(self.backend, device):
            from .cpp import _C, _require

            _require()
            self._ext, self._table_np = _C, self._table.numpy()

    @property
    def device(self) -> torch.device:
        return self._table.device

    def add(self, grads: Tensor) -> None:
        """The next chunk: grads ``[batch, k, N, D]`` (or ``[k, N, D]`` with batch 1) of
        tokens ``added .. added + k - 1``; their channel weights go into the table."""
        ext, shape = self._ext, grads.shape if type(grads) is Tensor else None
        code = _DTYPE_CODE.get(grads.dtype) if shape is not None else None
        if (ext is not None and code is not None and len(shape) == 4 and shape[0] == self.batch
                and shape[3] == self.hidden and shape[1] > 0 and shape[2] > 0 and grads.is_cpu
                and grads.is_contiguous()):
            first, k = self.added, shape[1]
            if k > self.tokens - first:
                self._refuse_overflow(k)
            try:
                address = grads.data_ptr()
            except RuntimeError:  # no storage of its own (a functorch wrapper): the checked path says why
                self._add_checked(grads)
                return
            args = (self._table_np, first, address, code, k, shape[2], self.grad_relu, self.check_finite)
            if torch.autograd._profiler_enabled():  # a trace names the pass as the op would (one cheap check)
                with torch.profiler.record_function("dcam::channel_weights"):
                    bad = ext.channel_weights_into(*args)
            else:
                bad = ext.channel_weights_into(*args)
            if bad:  # (a checked pass only: the errors of channel_weights)
                api._raise_if_grads_nonfinite(grads, True)
                api._raise_if_weights_overflowed(self._table[:, first:first + k])
            self.added = first + k
            return
        self._add_checked(grads)

    def _add_checked(self, grads) -> None:
        """Any chunk: :func:`dcam.channel_weights` with its checks, copied into the table."""
        w = api.channel_weights(grads, self.grad_relu, self.backend, self.check_finite)
        if w.shape[0] != self.batch or w.shape[2] != self.hidden:
            raise InputError(f"grads: a chunk of {w.shape[0]} image(s) and hidden size {w.shape[2]} does not fit "
                             f"the stream's table of {self.batch} and {self.hidden}")
        if w.device != self.device:
            raise InputError(f"grads: on {w.device}, the stream's table on {self.device}")
        k = w.shape[1]
        if k > self.tokens - self.added:
            self._refuse_overflow(k)
        self._table[:, self.added:self.added + k] = w
        self.added += k

    def _refuse_overflow(self, k: int):
        raise InputError(f"grads: a chunk of {k} token(s) after {self.added} added passes the stream's "
                         f"{self.tokens} tokens")

    @property
    def weights(self) -> Tensor:
        """float32 ``[batch, tokens, hidden]``: the channel weights of every token."""
        if self.added != self.tokens:
            raise InputError(f"grads: {self.added} of the stream's {self.tokens} tokens were added")
        return self._table


__all__ = ["WeightStream"]
