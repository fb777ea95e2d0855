"""The Python API over the compiled module: models, quantization, matrices."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Optional, Sequence, Union

from . import _glq

PathLike = Union[str, "os.PathLike[str]"]


def quantize_matrix(W, H=None, bits: int = 2, *, seed: int = 0x5EED, rht: bool = True,
                    ldlq: bool = True, damp: float = 0.01) -> _glq.QuantizedMatrix:
    """Quantizes a weight matrix W (rows, cols) = (out, in) to `bits` (2, 3 or 4) per weight.

    H (cols, cols) is the proxy Hessian E[x xᵀ] of the layer's inputs (None: the identity, i.e.
    plain weight MSE). rows and cols must be multiples of 8. A C-contiguous float32 array is read
    in place; any other array of real numbers is converted to float32 once (docs/python.md).
    The result's `.report` holds the proxy loss and relative weight error.
    """
    return _glq.quantize_matrix(W, H, bits, seed, rht, ldlq, damp)


def checkpoint_linears(path: PathLike):
    """[(name, QuantizedMatrix, bias or None)] of a GLQ checkpoint directory, in model order."""
    return _glq.checkpoint_linears(os.fspath(path))


class Model:
    """A model on GLQ's CPU engine: a GGUF file, a Hugging Face directory or a GLQ checkpoint.

    Calls release the GIL while they compute; calls on one Model from several threads run one
    after the other.
    """

    def __init__(self, native: "_glq.Model"):
        self._m = native

    # ---- facts ------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._m.path

    @property
    def config(self) -> dict:
        return self._m.config

    @property
    def parameter_count(self) -> int:
        return self._m.parameter_count

    def describe(self) -> str:
        return self._m.describe()

    def __repr__(self) -> str:
        return repr(self._m)

    # ---- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: Optional[bool] = None, parse_special: bool = True) -> list:
        """Token ids of `text`; add_bos None follows the tokenizer's default."""
        return self._m.tokenize(text, add_bos, parse_special)

    def detokenize(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._m.detokenize(list(ids), skip_special).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """messages: [{"role": "user", "content": "..."}, ...] rendered in the model's format."""
        return self._m.apply_chat_template([(m["role"], m["content"]) for m in messages],
                                           add_generation_prompt)

    # ---- running ----------------------------------------------------------------------------
    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 0.0, *,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 repetition_window: int = 64, seed: int = 0x5EED, chat: bool = False,
                 stop_at_eos: bool = True,
                 stream: Optional[Callable[[str], None]] = None) -> str:
        """The continuation of `prompt` (the prompt itself is not repeated).

        temperature 0 is greedy. chat=True wraps the prompt as a user message in the model's
        chat template. stream(piece) receives the text as it is produced.
        """
        text = prompt
        if chat:
            text = self.apply_chat_template([{"role": "user", "content": prompt}], True)
        ids = self._m.tokenize(text, False if chat else None, True)
        pending = bytearray()
        pieces = []
        known = self._m.tokenizer_vocab_size  # ids of a padded vocabulary beyond it have no text

        def on_token(tok: int) -> bool:
            if self._m.is_stop(tok) and stop_at_eos:
                return True
            if tok < known:
                pending.extend(self._m.detokenize([tok], True))
            # Emit only whole UTF-8 characters; hold back an unfinished one.
            cut = _utf8_complete_prefix(pending)
            if cut:
                piece = bytes(pending[:cut]).decode("utf-8", errors="replace")
                del pending[:cut]
                pieces.append(piece)
                if stream is not None:
                    stream(piece)
            return True

        self._m.generate_tokens(ids, max_tokens, temperature, top_k, top_p, repetition_penalty,
                                repetition_window, seed, stop_at_eos, on_token)
        if pending:
            piece = bytes(pending).decode("utf-8", errors="replace")
            pieces.append(piece)
            if stream is not None:
                stream(piece)
        return "".join(pieces)

    def generate_tokens(self, prompt_ids: Sequence[int], max_tokens: int = 64,
                        temperature: float = 0.0, *, top_k: int = 0, top_p: float = 1.0,
                        repetition_penalty: float = 1.0, repetition_window: int = 64,
                        seed: int = 0x5EED, stop_at_eos: bool = True) -> list:
        """New token ids after `prompt_ids` (the stop token, when one ends it, included)."""
        return self._m.generate_tokens(list(prompt_ids), max_tokens, temperature, top_k, top_p,
                                       repetition_penalty, repetition_window, seed, stop_at_eos,
                                       None)

    def perplexity(self, text: Union[str, "os.PathLike[str]", None] = None, *,
                   path: Optional[PathLike] = None, ctx: int = 1024, max_tokens: int = 0,
                   progress: Union[bool, Callable[[int, int], None]] = False) -> dict:
        """Perplexity on a text, with the protocol of `glq perplexity` (docs/python.md).

        `text` is the text itself; a pathlib.Path (or path=...) names a UTF-8 file instead.
        max_tokens > 0 keeps only the first max_tokens tokens. Returns ppl, nll_mean, tokens
        (scored), tokens_evaluated, windows, ctx and seconds.
        """
        if text is not None and path is not None:
            raise ValueError("perplexity: pass either text or path, not both")
        if path is None and text is not None and not isinstance(text, str):
            path = text
        if path is not None:
            with open(os.fspath(path), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        if text is None:
            raise ValueError("perplexity: no text given")
        cb = None
        if progress is True:
            cb = _window_bar
        elif callable(progress):
            cb = progress
        return self._m.perplexity_text(text, ctx, max_tokens, cb)

    def logits(self, ids: Sequence[int], all: bool = False):
        """Logits after `ids` from an empty cache: (vocab,) for the last token, (n, vocab) with all."""
        return self._m.logits(list(ids), all)

    def linear(self, layer: int, kind: str):
        """The weight of a layer's linear ("q_proj", ..., "down_proj"): a QuantizedMatrix when
        quantized, else a dense (rows, cols) float32 array."""
        return self._m.linear(layer, kind)


def load(path: PathLike) -> Model:
    """Loads a GGUF file, a Hugging Face checkpoint directory or a GLQ checkpoint directory."""
    return Model(_glq.load(os.fspath(path)))


def quantize(model_path: PathLike, bits: float = 2, calib: Optional[PathLike] = None,
             out: Optional[PathLike] = None, *, calib_seqs: int = 0, seq_len: int = 512,
             seed: int = 0x5EED, damp: Optional[float] = None, rht: bool = True, ldlq: bool = True,
             keep_head_16bit: bool = True, dtype_16bit: str = "float16", resume: bool = True,
             overwrite: bool = False, finetune_epochs: int = 0, finetune_lr: float = 1e-3,
             finetune_windows: int = -1, finetune_bias: bool = False, finetune_stage_gains: bool = False,
             finetune_extra_only: bool = False,
             progress: Union[bool, Callable[[dict], None]] = True) -> dict:
    """Quantizes a model (GGUF file or Hugging Face directory) into a GLQ checkpoint at `out`.

    bits: 2, 3, 4 or a fractional average such as 2.5 (per-linear widths are then allocated).
    calib: a UTF-8 text file; calib_seqs windows of seq_len tokens are drawn from it (0: by width,
    as `glq quantize` chooses: 64 at 3 bits, 32 otherwise).
    damp: relative Hessian damping (None: by width, as `glq quantize` chooses: 0.05 below 4 bits,
    0.01 at 4 bits).
    finetune_epochs: after quantizing, tune the row and norm gains end to end toward the
    unquantized model's next-token distributions for this many epochs (0: off; the report then
    has a "finetune" entry with the held-out KL before and after); finetune_lr: Adam's step;
    finetune_windows: training windows besides the calibration's (-1: 3 per calibration window);
    finetune_bias: the tuning also fits an output bias per row of every quantized linear;
    finetune_stage_gains: a gain per stage of each row of a two-stage (3- or 4-bit) linear;
    finetune_extra_only: train on the extra windows alone, not on the calibration windows.
    progress: True prints progress to stderr, a callable receives each event as a dict
    ({"event": "note"|"step"|"layer", ...}), False is silent. Ctrl-C stops the run; the layers
    already done stay in OUT.partial/ and a later call with the same settings resumes there.
    Returns the report: per-linear errors and sizes, bits per weight, seconds.
    """
    if calib is None:
        raise ValueError("quantize: calib (a text file) is required")
    if out is None:
        raise ValueError("quantize: out (the checkpoint directory to write) is required")
    cb = None
    if progress is True:
        cb = _QuantizeBar()
    elif callable(progress):
        cb = progress
    return _glq.quantize(os.fspath(model_path), os.fspath(calib), os.fspath(out), float(bits),
                         calib_seqs, seq_len, seed, -1.0 if damp is None else float(damp), rht, ldlq,
                         keep_head_16bit, dtype_16bit, resume, overwrite, int(finetune_epochs),
                         float(finetune_lr), int(finetune_windows), bool(finetune_bias),
                         bool(finetune_stage_gains), bool(finetune_extra_only), cb)


# ---- helpers ----------------------------------------------------------------------------------

def _utf8_complete_prefix(buf: bytearray) -> int:
    """Length of the longest prefix of buf that does not end inside a UTF-8 character."""
    n = len(buf)
    i = n - 1
    # Walk back over at most 3 continuation bytes to the lead byte of the last character.
    while i >= 0 and n - i <= 4 and (buf[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0:
        return n
    lead = buf[i]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else \
        4 if lead >> 3 == 0b11110 else 1
    return n if n - i >= need else i


def _window_bar(done: int, total: int) -> None:
    width = 40
    filled = done * width // total if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} windows")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


class _QuantizeBar:
    """Prints the pipeline's progress events to stderr."""

    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self, e: dict) -> None:
        t = time.monotonic() - self.t0
        kind = e["event"]
        if kind == "note":
            sys.stderr.write(f"glq: {e['message']}\n")
        elif kind == "step":
            eta = f", eta {e['eta_s']:.0f} s" if e["eta_s"] >= 0 else ""
            sys.stderr.write(f"\r[{t:7.1f} s] {e['what']} ({e['done']}/{e['total']}){eta}   ")
            if e["done"] == e["total"]:
                sys.stderr.write("\n")
        elif kind == "layer":
            worst = max((l["proxy_loss"] for l in e["linears"]), default=0.0)
            eta = f", eta {e['eta_s']:.0f} s" if e["eta_s"] >= 0 else ""
            sys.stderr.write(f"[{t:7.1f} s] layer {e['layer'] + 1}/{e['total']} in {e['seconds']:.1f} s, "
                             f"worst proxy loss {worst:.4g}{eta}\n")
        sys.stderr.flush()
