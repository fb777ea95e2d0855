"""PyTorch layers over GLQ's fused kernels (needs torch >= 2.4).

    from glq.torch import QuantizedLinear, replace_linears, load_hf_model
    layer = QuantizedLinear(glq.quantize_matrix(W, H, bits=2), bias)   # drop-in for nn.Linear
    model = load_hf_model("smollm2-glq4")       # Transformers model with GLQ linears
    replace_linears(hf_model, "smollm2-glq4")   # or swap them into a model you built

QuantizedLinear runs the fused CPU kernels on CPU tensors and the CUDA kernels on CUDA tensors
(when the extension was built with GLQ_CUDA=1), through the custom op torch.ops.glq.qmatmul, so
it works under torch.compile and inside CUDA graphs.
"""
from .layer import QuantizedLinear
from .hf import load_hf_model, replace_linears
from .ops import qmatmul

__all__ = ["QuantizedLinear", "load_hf_model", "qmatmul", "replace_linears"]
