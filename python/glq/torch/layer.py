"""QuantizedLinear: a drop-in for torch.nn.Linear whose weight is a GLQ QuantizedMatrix."""
from __future__ import annotations

import weakref
from typing import Optional

import numpy as np
import torch

from .. import _glq
from . import ops


class QuantizedLinear(torch.nn.Module):
    """y = x Wᵀ + b with W held as GLQ codes (never expanded on the forward path).

    Inputs of any float dtype and any leading shape (..., in_features) are accepted; the
    product is computed in float32 by the GLQ kernels (CPU or CUDA, following the input's
    device) and returned in the input's dtype. The bias is a buffer that moves with .to().
    """

    def __init__(self, matrix: _glq.QuantizedMatrix, bias=None):
        super().__init__()
        if not isinstance(matrix, _glq.QuantizedMatrix):
            raise TypeError(f"QuantizedLinear: expected a glq.QuantizedMatrix, got {type(matrix).__name__}")
        self.matrix = matrix
        self.in_features = matrix.cols
        self.out_features = matrix.rows
        if bias is not None:
            b = torch.as_tensor(np.asarray(bias) if not isinstance(bias, torch.Tensor) else bias)
            b = b.detach().to(torch.float32).reshape(-1).clone()
            if b.numel() != matrix.rows:
                raise ValueError(f"QuantizedLinear: bias has {b.numel()} values, expected {matrix.rows}")
            self.register_buffer("bias", b)
        else:
            self.register_buffer("bias", None)
        self._register()

    def _register(self) -> None:
        self._handle = ops.register(self.matrix)
        self._finalizer = weakref.finalize(self, ops.unregister, self._handle)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int = 2, H=None, **options) -> "QuantizedLinear":
        """Quantizes an nn.Linear's weight (H: the (in, in) Hessian proxy, None for identity)."""
        w = linear.weight.detach().to(torch.float32).cpu().contiguous().numpy()
        if isinstance(H, torch.Tensor):
            H = H.detach().to(torch.float32).cpu().contiguous().numpy()
        q = _glq.quantize_matrix(w, H, bits, options.get("seed", 0x5EED), options.get("rht", True),
                                 options.get("ldlq", True), options.get("damp", 0.01))
        bias = None if linear.bias is None else linear.bias.detach().cpu()
        return cls(q, bias)

    @classmethod
    def from_checkpoint(cls, path, name: str) -> "QuantizedLinear":
        """The linear `name` ("model.layers.0.self_attn.q_proj") of a GLQ checkpoint directory."""
        for n, q, b in _glq.checkpoint_linears(str(path)):
            if n == name:
                return cls(q, b)
        raise ValueError(f"{path}: the checkpoint has no quantized linear named '{name}'")

    # ---- running ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.to(torch.float32)
        x2 = x2.contiguous()
        y = ops.qmatmul(x2, self._handle, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def prepare(self, device, max_batch: int = 1) -> "QuantizedLinear":
        """Uploads the codes to a CUDA device and reserves scratch for up to max_batch rows, so
        that a CUDA graph can be captured without allocations (a warm-up forward does the same)."""
        device = torch.device(device)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            ops.entry(self._handle).on_device(index).reserve(max_batch)
        return self

    def dequantize_weight(self) -> torch.Tensor:
        """The dense weight (out_features, in_features) float32 on the CPU (for checks)."""
        return torch.from_numpy(self.matrix.dequantize())

    @property
    def bits(self) -> int:
        return self.matrix.bits

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits={self.matrix.bits}")

    # ---- pickling (torch.save of a whole module) ---------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_handle", None)
        state.pop("_finalizer", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._register()
