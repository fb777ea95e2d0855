"""Hugging Face Transformers models (Llama family) with GLQ linears from a GLQ checkpoint."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .. import _glq
from .layer import QuantizedLinear


def _is_glq_tensor(name: str) -> bool:
    return ".glq_" in name


def replace_linears(model: torch.nn.Module, checkpoint, *, load_other_tensors: bool = True,
                    strict: bool = True) -> dict:
    """Swaps every linear that the GLQ checkpoint quantized for a QuantizedLinear.

    Module names are the checkpoint's Hugging Face names ("model.layers.3.mlp.down_proj",
    "lm_head"); each target must be an nn.Linear (or QuantizedLinear) of the same shape. With
    load_other_tensors, the checkpoint's 16-bit tensors (embeddings, norms, a kept lm_head) are
    copied into the model too, so that it computes exactly what the checkpoint describes; strict
    then requires every floating-point parameter and buffer of the model that is not part of a
    replaced linear to have been loaded. Returns {"replaced": [...], "loaded": [...]}.
    """
    path = os.fspath(checkpoint)
    linears = _glq.checkpoint_linears(path)
    replaced = []
    for name, q, bias in linears:
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"{path}: the model has no module '{name}' for the checkpoint's linear") from e
        if isinstance(old, torch.nn.Linear):
            shape = (old.out_features, old.in_features)
        elif isinstance(old, QuantizedLinear):
            shape = (old.out_features, old.in_features)
        else:
            raise ValueError(f"{path}: module '{name}' is a {type(old).__name__}, not a Linear")
        if shape != (q.rows, q.cols):
            raise ValueError(f"{path}: linear '{name}' is {q.rows}x{q.cols} in the checkpoint, "
                             f"{shape[0]}x{shape[1]} in the model")
        new = QuantizedLinear(q, bias)
        ref = old.bias if isinstance(old, torch.nn.Linear) else None
        if ref is not None and new.bias is None:
            raise ValueError(f"{path}: linear '{name}' has a bias in the model but none in the checkpoint")
        device = next((t.device for t in old.parameters()), None) or next((t.device for t in old.buffers()), None)
        if device is not None:
            new = new.to(device)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced.append(name)

    loaded = []
    if load_other_tensors:
        try:
            from safetensors import safe_open
        except ImportError as e:  # pragma: no cover - transformers depends on safetensors
            raise RuntimeError("replace_linears(load_other_tensors=True) needs the safetensors package") from e
        targets = dict(model.named_parameters(remove_duplicate=False))
        targets.update(dict(model.named_buffers(remove_duplicate=False)))
        linear_prefixes = set(replaced)
        with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
            for key in f.keys():
                if _is_glq_tensor(key):
                    continue
                prefix = key.rpartition(".")[0]
                if prefix in linear_prefixes:
                    continue  # a quantized linear's bias, already in its QuantizedLinear
                t = targets.get(key)
                if t is None:
                    if strict:
                        raise ValueError(f"{path}: tensor '{key}' has no place in the model")
                    continue
                src = f.get_tensor(key)
                if tuple(src.shape) != tuple(t.shape):
                    raise ValueError(f"{path}: tensor '{key}' is {tuple(src.shape)} in the checkpoint, "
                                     f"{tuple(t.shape)} in the model")
                with torch.no_grad():
                    t.copy_(src.to(device=t.device, dtype=t.dtype))
                loaded.append(key)
        if strict:
            covered = set(loaded)
            # A tied lm_head shares the embedding's tensor: it is loaded through the embedding.
            ptr_loaded = {targets[k].data_ptr() for k in loaded}
            missing = [n for n, t in targets.items()
                       if t.is_floating_point() and n not in covered and t.data_ptr() not in ptr_loaded
                       and not n.endswith("inv_freq") and not n.endswith("original_inv_freq")
                       and not any(n.startswith(p + ".") for p in linear_prefixes)]
            if missing:
                raise ValueError(f"{path}: the checkpoint holds no value for {missing[:8]}"
                                 f"{' ...' if len(missing) > 8 else ''}")
    return {"replaced": replaced, "loaded": loaded}


def load_hf_model(checkpoint, *, dtype: torch.dtype = torch.float32, device="cpu",
                  attn_implementation: Optional[str] = "eager"):
    """A Transformers causal LM built from a GLQ checkpoint alone: the architecture from its
    config.json, the 16-bit tensors from its model.safetensors, and QuantizedLinear layers for
    every quantized linear. The model is returned in eval mode on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.fspath(checkpoint)
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    if raw.get("quantization_config", {}).get("quant_method") != "glq":
        raise ValueError(f"{path}: not a GLQ checkpoint (quantization_config.quant_method is not 'glq')")
    config = AutoConfig.from_pretrained(path)
    # The GLQ layers are put in place below; Transformers must not look for a quantizer.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    replace_linears(model, path, load_other_tensors=True, strict=True)
    return model.to(device=device, dtype=dtype).eval()
