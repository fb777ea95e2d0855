"""torch.ops.glq.qmatmul: y (batch, rows) = x (batch, cols) · Wᵀ for a GLQ-quantized W.

The op takes the matrix by an integer handle (custom ops take tensors and plain values only) and
calls the C++ kernels with raw pointers: data_ptr() of x and y, and on CUDA the handle of
PyTorch's current stream. No PyTorch header is compiled into GLQ. The CUDA copy of a matrix is
made on its first use on a device (or by QuantizedLinear.prepare); run one warm-up forward before
capturing a CUDA graph, as PyTorch asks anyway, so that no device memory is allocated during
capture.

Autograd: the gradient with respect to x is dy · W, with W dequantized once per device and kept
(the codes themselves are constants: there is no gradient for them).
"""
from __future__ import annotations

import itertools
import threading
from typing import Dict

import torch

from .. import _glq


class _Entry:
    """A registered matrix with its per-device copies."""

    __slots__ = ("matrix", "cuda", "dense")

    def __init__(self, matrix: _glq.QuantizedMatrix):
        self.matrix = matrix
        self.cuda: Dict[int, object] = {}
        self.dense: Dict[torch.device, torch.Tensor] = {}

    def on_device(self, index: int):
        d = self.cuda.get(index)
        if d is None:
            if not _glq.has_cuda:
                raise RuntimeError("glq.torch: this glq build has no CUDA backend; reinstall with "
                                   "GLQ_CUDA=1 pip install . (docs/python.md)")
            d = _glq.CudaMatrix(self.matrix, index)
            self.cuda[index] = d
        return d

    def dense_on(self, device: torch.device) -> torch.Tensor:
        w = self.dense.get(device)
        if w is None:
            w = torch.from_numpy(self.matrix.dequantize()).to(device)
            self.dense[device] = w
        return w


_entries: Dict[int, _Entry] = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def register(matrix: _glq.QuantizedMatrix) -> int:
    """A handle for `matrix`, valid until unregister(handle)."""
    if not isinstance(matrix, _glq.QuantizedMatrix):
        raise TypeError(f"expected a glq.QuantizedMatrix, got {type(matrix).__name__}")
    with _lock:
        h = next(_ids)
        _entries[h] = _Entry(matrix)
    return h


def unregister(handle: int) -> None:
    with _lock:
        _entries.pop(handle, None)


def entry(handle: int) -> _Entry:
    e = _entries.get(handle)
    if e is None:
        raise ValueError(f"glq.qmatmul: no matrix is registered under handle {handle}")
    return e


@torch.library.custom_op("glq::qmatmul", mutates_args=())
def qmatmul(x: torch.Tensor, handle: int, rows: int) -> torch.Tensor:
    e = entry(handle)
    m = e.matrix
    if x.dtype != torch.float32:
        raise ValueError(f"glq.qmatmul: x must be float32, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != m.cols:
        raise ValueError(f"glq.qmatmul: x must have shape (batch, {m.cols}), got {tuple(x.shape)}")
    if rows != m.rows:
        raise ValueError(f"glq.qmatmul: rows {rows} does not match the matrix ({m.rows})")
    if not x.is_contiguous():
        raise ValueError("glq.qmatmul: x must be contiguous")
    batch = x.shape[0]
    y = torch.empty((batch, rows), dtype=torch.float32, device=x.device)
    if batch == 0:
        return y
    if x.device.type == "cpu":
        _glq.qmatmul_ptr(m, x.data_ptr(), y.data_ptr(), batch)
    elif x.device.type == "cuda":
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        d = e.on_device(index)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        d.qmatmul_ptr(x.data_ptr(), y.data_ptr(), batch, stream)
    else:
        raise ValueError(f"glq.qmatmul: tensors on {x.device.type} are not supported (cpu, cuda)")
    return y


@qmatmul.register_fake
def _qmatmul_fake(x: torch.Tensor, handle: int, rows: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], rows))


def _setup_context(ctx, inputs, output):
    _, handle, _ = inputs
    ctx.handle = handle


def _backward(ctx, grad_y: torch.Tensor):
    w = entry(ctx.handle).dense_on(grad_y.device)  # (rows, cols)
    return grad_y.to(w.dtype) @ w, None, None


qmatmul.register_autograd(_backward, setup_context=_setup_context)
