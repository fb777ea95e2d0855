"""QuantizedMatrix and quantize_matrix on NumPy arrays, against the C++ library's own results."""
import pickle

import numpy as np
import pytest

import glq

SHAPES = [(24, 40), (152, 104), (8, 8), (72, 48)]


def random_matrix(rows, cols, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def correlated_hessian(cols, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((4 * cols, cols)) @ (np.eye(cols) + 0.3 * rng.standard_normal((cols, cols)))
    return (X.T @ X / X.shape[0]).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_matvec_matches_dequantized_product(bits, shape):
    rows, cols = shape
    W = random_matrix(rows, cols, seed=rows + bits)
    q = glq.quantize_matrix(W, correlated_hessian(cols), bits=bits)
    assert (q.rows, q.cols, q.bits) == (rows, cols, bits)
    D = q.dequantize()
    assert D.shape == (rows, cols) and D.dtype == np.float32
    rng = np.random.default_rng(5)
    for batch in (1, 19):
        x = rng.standard_normal((batch, cols)).astype(np.float32)
        ref = x.astype(np.float64) @ D.T.astype(np.float64)
        scale = np.abs(ref).max()
        # The plain codec reference: only float summation order differs.
        np.testing.assert_allclose(q.matvec(x, method="reference"), ref, atol=2e-5 * scale, rtol=0)
        # The fused kernels round the transformed activations to 16-bit fixed point.
        y = q.matvec(x)
        assert y.shape == (batch, rows) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, atol=1e-3 * scale, rtol=0)
    y1 = q.matvec(x[0])
    assert y1.shape == (rows,)
    np.testing.assert_allclose(y1, q.matvec(x[:1])[0], rtol=0, atol=1e-6 * np.abs(y1).max())


def test_every_supported_isa_agrees():
    q = glq.quantize_matrix(random_matrix(111 - 7, 96), bits=3)  # 104 x 96
    x = np.random.default_rng(2).standard_normal((5, 96)).astype(np.float32)
    results = {}
    for isa in ("scalar", "avx2", "avx512"):
        try:
            results[isa] = q.matvec(x, isa=isa)
        except RuntimeError as e:  # this CPU lacks the ISA
            assert "unsupported" in str(e).lower() or "support" in str(e).lower()
    assert "scalar" in results
    for isa, y in results.items():
        np.testing.assert_allclose(y, results["scalar"], atol=1e-4 * np.abs(y).max(), rtol=0, err_msg=isa)


def test_report_proxy_loss_matches_dequantized_weights():
    rows, cols = 64, 88
    W = random_matrix(rows, cols, seed=3)
    H = correlated_hessian(cols)
    q = glq.quantize_matrix(W, H, bits=2)
    r = q.report
    E = (W - q.dequantize()).astype(np.float64)
    Hd = H.astype(np.float64)
    proxy = np.trace(E @ Hd @ E.T) / np.trace(W.astype(np.float64) @ Hd @ W.T.astype(np.float64))
    rel = np.linalg.norm(E) / np.linalg.norm(W)
    assert r["relative_weight_error"] == pytest.approx(rel, rel=1e-3)
    assert r["proxy_loss"] == pytest.approx(proxy, rel=2e-2)
    assert 0 < r["proxy_loss"] < 0.2
    # Loaded or unpacked matrices carry no report.
    assert glq.QuantizedMatrix.unpack(q.pack()).report is None


def test_more_bits_smaller_error():
    W = random_matrix(48, 64, seed=4)
    errs = [glq.quantize_matrix(W, bits=b).report["relative_weight_error"] for b in (2, 3, 4)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_storage_bytes(bits):
    rows, cols = 40, 56
    q = glq.quantize_matrix(random_matrix(rows, cols), bits=bits)
    code_bytes = {"e8p16-v1": 2, "e8r8-v1": 1}
    expected = sum(rows * (cols // 8) * code_bytes[c] + 4 * rows for c in q.codebooks)
    expected += (rows + 7) // 8 + (cols + 7) // 8
    assert q.storage_bytes == expected
    assert q.bits_per_weight == pytest.approx(8 * expected / (rows * cols))
    assert len(q.codebooks) == {2: 1, 3: 2, 4: 2}[bits]


def test_pack_and_pickle_round_trip():
    q = glq.quantize_matrix(random_matrix(32, 48), bits=3, seed=11)
    for q2 in (glq.QuantizedMatrix.unpack(q.pack()), pickle.loads(pickle.dumps(q))):
        assert (q2.rows, q2.cols, q2.bits) == (32, 48, 3)
        np.testing.assert_array_equal(q2.dequantize(), q.dequantize())
        assert q2.pack() == q.pack()


def test_float32_input_is_read_in_place_and_out_is_written_in_place():
    q = glq.quantize_matrix(random_matrix(24, 40), bits=2)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    out = np.empty((3, 24), dtype=np.float32)
    y = q.matvec(x, out=out)
    assert y is out
    np.testing.assert_array_equal(out, q.matvec(x))
    # A 1-D out for a 1-D x.
    out1 = np.zeros(24, dtype=np.float32)
    assert q.matvec(x[1], out=out1) is out1
    np.testing.assert_allclose(out1, out[1], rtol=0, atol=1e-6 * np.abs(out1).max())


def test_other_real_arrays_are_converted():
    q = glq.quantize_matrix(random_matrix(24, 40), bits=2)
    x = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float32)
    want = q.matvec(x)
    tol = dict(rtol=0, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(q.matvec(x.astype(np.float64)), want, **tol)
    np.testing.assert_allclose(q.matvec(np.asfortranarray(x)), want, **tol)
    np.testing.assert_allclose(q.matvec(x.tolist()), want, **tol)
    wide = np.zeros((4, 80), dtype=np.float32)
    wide[:, ::2] = x
    np.testing.assert_allclose(q.matvec(wide[:, ::2]), want, **tol)  # a strided view
    xi = np.arange(40, dtype=np.int32) - 20
    np.testing.assert_allclose(q.matvec(xi), q.matvec(xi.astype(np.float32)), rtol=0, atol=1e-3)
    big_endian = x.astype(">f4")
    np.testing.assert_allclose(q.matvec(big_endian), want, **tol)
    # W given as float64 quantizes like its float32 copy.
    W = random_matrix(16, 24)
    np.testing.assert_array_equal(glq.quantize_matrix(W.astype(np.float64), bits=2).dequantize(),
                                  glq.quantize_matrix(W, bits=2).dequantize())


def test_errors_are_value_errors_with_the_message():
    q = glq.quantize_matrix(random_matrix(24, 40), bits=2)
    with pytest.raises(ValueError, match="41 columns"):
        q.matvec(np.zeros(41, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        q.matvec(np.zeros((2, 3, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        q.matvec(np.zeros(40, dtype=np.complex64))
    with pytest.raises(ValueError, match="dtype"):
        q.matvec(np.zeros(40, dtype=bool))
    with pytest.raises(ValueError):
        q.matvec("not an array")
    with pytest.raises(ValueError, match="out has shape"):
        q.matvec(np.zeros((2, 40), dtype=np.float32), out=np.zeros((2, 23), dtype=np.float32))
    with pytest.raises(ValueError, match="float32"):
        q.matvec(np.zeros(40, dtype=np.float32), out=np.zeros(24, dtype=np.float64))
    with pytest.raises(ValueError, match="method"):
        q.matvec(np.zeros(40, dtype=np.float32), method="fast")
    with pytest.raises(ValueError, match="isa|scalar"):
        q.matvec(np.zeros(40, dtype=np.float32), isa="neon")
    with pytest.raises(ValueError, match="multiples of 8"):
        glq.quantize_matrix(np.zeros((7, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        glq.quantize_matrix(np.zeros(64, dtype=np.float32))
    with pytest.raises(ValueError, match="H must have shape"):
        glq.quantize_matrix(random_matrix(8, 16), np.eye(8, dtype=np.float32))
    with pytest.raises(ValueError):
        glq.quantize_matrix(random_matrix(8, 16), bits=5)
    W = random_matrix(8, 16)
    W[3, 4] = np.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        glq.quantize_matrix(W)
    with pytest.raises(RuntimeError):
        glq.QuantizedMatrix.unpack(b"not a packed matrix")


def test_gil_is_released_during_long_calls():
    """While one thread quantizes, another keeps running Python code: the longest pause seen by
    the second thread is much shorter than the call (a call holding the GIL would stall it)."""
    import threading
    import time
    W = random_matrix(512, 768, seed=8)
    H = correlated_hessian(768)
    done = threading.Event()
    span = {}

    def work():
        t0 = time.perf_counter()
        glq.quantize_matrix(W, H, bits=4)
        span["call"] = time.perf_counter() - t0
        done.set()

    t = threading.Thread(target=work)
    last = time.perf_counter()
    longest = 0.0
    t.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    t.join()
    assert span["call"] > 0.05, "the call is too short to tell"
    assert longest < 0.5 * span["call"], (longest, span["call"])


def test_concurrent_products_agree():
    import threading
    q = glq.quantize_matrix(random_matrix(256, 512), bits=4)
    x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    want = q.matvec(x)
    results = [None, None]

    def work(i):
        for _ in range(5):
            results[i] = q.matvec(x)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, want)
