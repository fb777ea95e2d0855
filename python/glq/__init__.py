"""GLQ: E8-lattice weight quantization for LLMs, from Python.

    import glq
    glq.quantize("model.gguf", bits=2, calib="text.txt", out="model-glq2")
    m = glq.load("model-glq2")
    print(m.generate("The capital of France is", max_tokens=20))
    q = glq.quantize_matrix(W, H, bits=2)        # NumPy float32 (rows, cols) and (cols, cols)
    y = q.matvec(x)                              # fused CPU kernels, W never materialised

PyTorch layers live in `glq.torch` (imported only when asked for). docs/python.md has the rest.
"""
from . import _glq
from ._glq import QuantizedMatrix, cpu_isa, num_threads
from .api import Model, load, quantize, quantize_matrix, checkpoint_linears

__version__ = _glq.__version__
has_cuda = bool(_glq.has_cuda)

__all__ = [
    "Model",
    "QuantizedMatrix",
    "checkpoint_linears",
    "cpu_isa",
    "has_cuda",
    "load",
    "num_threads",
    "quantize",
    "quantize_matrix",
]
