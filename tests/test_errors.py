"""Bad input raises a clear Python exception naming the argument and the shapes; never a crash."""
import numpy as np
import pytest

import coreformer
from coreformer import ops

from conftest import randn

rng = np.random.default_rng(0)
X, W, B = randn(rng, 4, 8), randn(rng, 5, 8), randn(rng, 5)
Q = randn(rng, 1, 2, 3, 8)


@pytest.mark.parametrize("bad", [np.ones((2, 2), np.complex64), np.array([["a", "b"]]), np.array([None, 1.0]), None,
                                 "text"])
def test_non_numeric_is_type_error(bad):
    with pytest.raises(TypeError, match="x"):
        ops.linear(bad, W)
    with pytest.raises(TypeError):
        ops.softmax(bad)
    with pytest.raises(TypeError):
        ops.gelu(bad)


def test_ragged_list_is_value_error():
    with pytest.raises(ValueError):
        ops.relu([[1.0, 2.0], [3.0]])


def test_other_array_kinds_are_converted():
    # Exact ndarrays are read as they are; lists, subclasses and byte-swapped float32 go through
    # numpy's conversion first -- the same values either way.
    x = randn(rng, 4, 8)
    want = ops.linear(x, W, B)
    np.testing.assert_array_equal(ops.linear(x.astype(">f4"), W.astype(">f4"), B.astype(">f4")), want)
    np.testing.assert_array_equal(ops.linear(x.tolist(), W, B), want)
    np.testing.assert_array_equal(ops.linear(np.asmatrix(x), W, B), want)
    np.testing.assert_array_equal(ops.linear(np.ma.masked_array(x), W, B), want)
    np.testing.assert_array_equal(ops.scaled_dot_product_attention(Q.astype(">f4"), Q, Q),
                                  ops.scaled_dot_product_attention(Q, Q, Q))
    with pytest.raises(TypeError, match="float32"):  # a byte-swapped out cannot be written in place
        ops.relu(x, out=np.empty((4, 8), ">f4"))


def test_linear_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(5, 7\)"):
        ops.linear(X, randn(rng, 5, 7))
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        ops.linear(X, randn(rng, 8))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        ops.linear(X, W, randn(rng, 4))
    with pytest.raises(ValueError, match="residual"):
        ops.linear(X, W, residual=randn(rng, 4, 4))
    with pytest.raises(ValueError, match="scalar"):
        ops.linear(np.float32(1), W)


def test_linear_activation():
    with pytest.raises(ValueError, match="swish"):
        ops.linear(X, W, activation="swish")
    with pytest.raises(TypeError, match="activation"):
        ops.linear(X, W, activation=3)  # type: ignore[call-overload]


def test_out_checks():
    with pytest.raises(ValueError, match=r"out has shape \(4, 4\).*\(4, 5\)"):
        ops.linear(X, W, out=np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        ops.linear(X, W, out=np.empty((4, 5)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.linear(X, W, out=np.empty((5, 4), np.float32).T)
    ro = np.empty((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.linear(X, W, out=ro)
    buf = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="overlaps"):  # linear never writes over its input
        ops.linear(buf, randn(rng, 4, 8), out=buf.reshape(-1)[:16].reshape(4, 4))


def test_partial_overlap_rejected_exact_alias_allowed():
    flat = np.zeros(33, np.float32)
    x = flat[:32].reshape(4, 8)
    with pytest.raises(ValueError, match="overlaps"):
        ops.gelu(x, out=flat[1:].reshape(4, 8))
    ops.gelu(x, out=x)


def test_sdpa_shapes():
    with pytest.raises(ValueError, match="query must be"):
        ops.scaled_dot_product_attention(randn(rng, 3, 8), randn(rng, 3, 8), randn(rng, 3, 8))
    with pytest.raises(ValueError, match="key's last axis"):
        ops.scaled_dot_product_attention(Q, randn(rng, 1, 2, 3, 7), randn(rng, 1, 2, 3, 8))
    with pytest.raises(ValueError, match="as many rows"):
        ops.scaled_dot_product_attention(Q, Q, randn(rng, 1, 2, 4, 8))
    with pytest.raises(ValueError, match="batch and head"):
        ops.scaled_dot_product_attention(Q, randn(rng, 1, 3, 3, 8), randn(rng, 1, 3, 3, 8))
    with pytest.raises(ValueError, match="same number of dimensions"):
        ops.scaled_dot_product_attention(Q, Q[0], Q)
    with pytest.raises(ValueError, match=r"attn_mask has shape \(2, 2\)"):
        ops.scaled_dot_product_attention(Q, Q, Q, attn_mask=np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="attn_mask"):
        ops.scaled_dot_product_attention(Q, Q, Q, attn_mask=np.ones((3, 3), np.int64))
    with pytest.raises(ValueError, match="scale"):
        ops.scaled_dot_product_attention(Q, Q, Q, scale=float("nan"))


def test_mha_shapes():
    x = randn(rng, 2, 3, 8)
    iw, ib, ow, ob = randn(rng, 24, 8), randn(rng, 24), randn(rng, 8, 8), randn(rng, 8)
    with pytest.raises(ValueError, match="divisible"):
        ops.multi_head_attention(x, x, x, 3, iw, ib, ow, ob)
    with pytest.raises(ValueError, match=r"in_weight must have shape \(24, 8\)"):
        ops.multi_head_attention(x, x, x, 2, randn(rng, 8, 8), ib, ow, ob)
    with pytest.raises(ValueError, match="in_bias"):
        ops.multi_head_attention(x, x, x, 2, iw, randn(rng, 8), ow, ob)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        ops.multi_head_attention(x, x, x, 2, iw, ib, ow, ob, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        ops.multi_head_attention(x, x, x, 2, iw, ib, ow, ob, attn_mask=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="num_heads"):
        ops.multi_head_attention(x, x, x, 0, iw, ib, ow, ob)
    with pytest.raises(ValueError, match="batch size"):
        ops.multi_head_attention(x, randn(rng, 3, 3, 8), randn(rng, 3, 3, 8), 2, iw, ib, ow, ob)


def test_additive_shapes():
    q, k, v = randn(rng, 2, 3, 4), randn(rng, 2, 5, 6), randn(rng, 2, 5, 7)
    wq, wk, vv = randn(rng, 9, 4), randn(rng, 9, 6), randn(rng, 9)
    ops.additive_attention(q, k, v, wq, wk, vv)
    with pytest.raises(ValueError, match="w_key must have shape"):
        ops.additive_attention(q, k, v, wq, randn(rng, 9, 4), vv)
    with pytest.raises(ValueError, match=r"v must have shape \(9,\)"):
        ops.additive_attention(q, k, v, wq, wk, randn(rng, 8))
    with pytest.raises(ValueError, match="values must have as many rows"):
        ops.additive_attention(q, k, randn(rng, 2, 4, 7), wq, wk, vv)
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.additive_attention(q, k, v, wq, wk, vv, mask=np.ones((2, 4), bool))


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ops.layer_norm(X, randn(rng, 7))
    with pytest.raises(ValueError, match="residual has shape"):
        ops.layer_norm(X, residual=randn(rng, 4, 7))
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm(X, eps=-1.0)
    with pytest.raises(ValueError, match="return_sum"):
        ops.layer_norm(X, return_sum=True)


def test_softmax_gelu_errors():
    with pytest.raises(IndexError, match="axis 2"):
        ops.softmax(X, axis=2)
    with pytest.raises(IndexError):
        ops.softmax(X, axis=-3)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(X, approximate="fast")


def test_embedding_errors():
    with pytest.raises(TypeError, match="integer"):
        ops.embedding(np.array([0.0, 1.0]), X)
    with pytest.raises(TypeError, match="integer"):
        ops.embedding(np.array([True]), X)
    with pytest.raises(ValueError, match="table must have 2 dimensions"):
        ops.embedding(np.array([0]), randn(rng, 8))


def test_positions_errors():
    with pytest.raises(ValueError, match="num_positions"):
        ops.sinusoidal_positions(-1, 4)
    with pytest.raises(ValueError, match="dim"):
        ops.sinusoidal_positions(4, 0)


def test_threads_errors():
    before = coreformer.get_num_threads()
    for bad in (0, -3, 4097, 100000, 2 ** 40):  # past the cap OpenMP would start thousands of threads per call
        with pytest.raises(ValueError, match="between 1 and 4096"):
            coreformer.set_num_threads(bad)
    with pytest.raises(ValueError, match="between 1 and 4096"):
        coreformer._core.set_num_threads(4097)  # the core checks too
    assert coreformer.get_num_threads() == before
    with pytest.raises(TypeError):
        coreformer.set_num_threads("2")  # type: ignore[arg-type]


def test_scalar_arguments_are_typed():
    # Counts and axes take integers (a float would be truncated silently: num_heads=2.5 ran as 2), flags
    # take bools (is_causal="no" read as True), scale and eps real numbers (a string reached pybind11 as
    # a RuntimeError); numpy's scalars are fine.
    x = randn(rng, 2, 5, 8)
    iw, ow = randn(rng, 24, 8), randn(rng, 8, 8)
    with pytest.raises(TypeError, match="num_heads must be an integer.*2.5"):
        ops.multi_head_attention(x, x, x, 2.5, iw, None, ow, None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="axis must be an integer"):
        ops.softmax(X, axis=1.0)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="num_positions must be an integer"):
        ops.sinusoidal_positions(4.5, 8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dim must be an integer"):
        ops.sinusoidal_positions(4, "8")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is_causal must be a bool.*'no'"):
        ops.scaled_dot_product_attention(Q, Q, Q, is_causal="no")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="scale must be a real number"):
        ops.scaled_dot_product_attention(Q, Q, Q, scale="0.5")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="scale must be a real number"):
        ops.scaled_dot_product_attention(Q, Q, Q, scale=np.ones(2))  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="eps must be a real number"):
        ops.layer_norm(X, eps="a")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="return_weights must be a bool"):
        ops.additive_attention(x, x, x, iw, iw, randn(rng, 24), return_weights="yes")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="approximate must be 'none' or 'tanh'"):
        ops.gelu(X, approximate=None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="dtype must be"):
        ops.pack_weight(W, np.float32)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache_length must be an integer"):
        ops.transformer_encoder_layer(x, 2, iw, None, ow, None, randn(rng, 16, 8), None, randn(rng, 8, 16), None,  # type: ignore[call-overload]
                                      None, None, None, None, cache_length=1.5)
    # numpy scalars and bools are what they say
    np.testing.assert_array_equal(ops.softmax(X, axis=np.int64(0)), ops.softmax(X, axis=0))
    np.testing.assert_array_equal(ops.sinusoidal_positions(np.int32(3), np.int64(8)), ops.sinusoidal_positions(3, 8))
    np.testing.assert_array_equal(ops.scaled_dot_product_attention(Q, Q, Q, is_causal=np.bool_(True), scale=np.float32(0.5)),  # type: ignore[call-overload]
                                  ops.scaled_dot_product_attention(Q, Q, Q, is_causal=True, scale=0.5))
    np.testing.assert_array_equal(ops.multi_head_attention(x, x, x, np.int64(2), iw, None, ow, None),
                                  ops.multi_head_attention(x, x, x, 2, iw, None, ow, None))


HUGE_BOOL = np.broadcast_to(True, (2 ** 31, 2 ** 31))  # 4 EiB once copied: numpy cannot allocate it
HUGE_FLOAT = np.broadcast_to(np.float64(1), (2 ** 29, 2 ** 30))  # 2 EiB as float32
HUGE_IDS = np.broadcast_to(np.int64(0), (2 ** 31, 8))  # int64 zero-strided: the int32/64 copy is 128 GiB+


@pytest.mark.parametrize("call", [
    lambda: ops.scaled_dot_product_attention(Q, Q, Q, HUGE_BOOL),
    lambda: ops.multi_head_attention(X[None], X[None], X[None], 2, randn(rng, 24, 8), None, randn(rng, 8, 8), None,
                                     attn_mask=HUGE_BOOL),
    lambda: ops.multi_head_attention(X[None], X[None], X[None], 2, randn(rng, 24, 8), None, randn(rng, 8, 8), None,
                                     key_padding_mask=HUGE_BOOL),
    lambda: ops.additive_attention(X[None], X[None], X[None], W, W, randn(rng, 5), mask=HUGE_BOOL),
    lambda: ops.additive_attention(X[None], X[None], X[None], W, W, randn(rng, 5),
                                   mask=np.broadcast_to(np.int8(1), (2 ** 31, 2 ** 31))),
    lambda: ops.embedding(HUGE_IDS.astype(np.int64, copy=False), randn(rng, 3, 4)),
    lambda: ops.embedding(np.broadcast_to(np.int16(0), (2 ** 28, 2 ** 31)), randn(rng, 3, 4)),
    lambda: ops.linear(HUGE_FLOAT, W),
    lambda: ops.linear(X, HUGE_FLOAT),
    lambda: ops.gelu(HUGE_FLOAT),
    lambda: ops.softmax(HUGE_FLOAT),
    lambda: ops.layer_norm(HUGE_FLOAT),
    lambda: ops.embedding([0], HUGE_FLOAT),
    lambda: ops.pack_weight(HUGE_FLOAT.astype(np.float32, copy=False)[::-1]),
    lambda: ops.transformer_encoder_layer(X[None], 2, HUGE_FLOAT, None, W, None, W, None, W, None, None, None, None,
                                          None),
], ids=["sdpa-mask", "mha-mask", "mha-padding", "additive-mask", "additive-int-mask", "embedding-ids",
        "embedding-int16-ids", "linear-x", "linear-weight", "gelu", "softmax", "layer_norm", "embedding-table",
        "pack_weight", "encoder-layer"])
def test_arrays_that_cannot_be_copied_raise_memory_error(call):
    # The copy (to C order, float32, bool or int64) does not fit in memory: MemoryError, as numpy says.
    # Masks and ids segfaulted (pybind11's array_t::ensure swallows numpy's error and returns null,
    # which was then read); floats raised "RuntimeError: Internal error: error_already_set called while
    # Python error indicator not set".
    with pytest.raises(MemoryError):
        call()


def test_misaligned_arrays_are_copied_not_read_in_place():
    # A float32 or int64 view at an odd byte offset reached the kernels as it was: misaligned loads
    # (undefined behaviour; UBSan in pack_a, pack_b_transposed, the GEMM store, softmax). Now copied.
    def odd(a):
        raw = bytearray(a.nbytes + 1)
        b = np.ndarray(a.shape, a.dtype, raw, offset=1)
        b[...] = a
        assert b.ctypes.data % a.itemsize
        return b
    x, w, b = randn(rng, 9, 33), randn(rng, 17, 33), randn(rng, 17)
    np.testing.assert_array_equal(ops.linear(odd(x), odd(w), odd(b)), ops.linear(x, w, b))
    np.testing.assert_array_equal(ops.softmax(odd(x)), ops.softmax(x))
    np.testing.assert_array_equal(ops.layer_norm(odd(x), odd(x[0]), odd(x[1])), ops.layer_norm(x, x[0], x[1]))
    q = randn(rng, 1, 2, 5, 8)
    np.testing.assert_array_equal(ops.scaled_dot_product_attention(odd(q), odd(q), odd(q)),
                                  ops.scaled_dot_product_attention(q, q, q))
    ids = np.array([[2, 0, 1]], np.int64)
    np.testing.assert_array_equal(ops.embedding(odd(ids), odd(w)), ops.embedding(ids, w))
    np.testing.assert_array_equal(ops.pack_weight(odd(w)).unpack(), w)
    with pytest.raises(ValueError, match="out must be aligned"):  # written in place: cannot be copied
        ops.relu(x, out=odd(np.zeros_like(x)))


def test_objects_numpy_cannot_convert_are_type_errors():
    # A torch tensor that requires grad refuses numpy(): a TypeError naming the argument, the cause kept.
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.ones(5, 8))
    with pytest.raises(TypeError, match="weight: cannot convert a Parameter") as info:
        ops.linear(X, w)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(TypeError, match="bias"):
        ops.linear(X, W, torch.nn.Parameter(torch.ones(5)))
    # the plain torch tensors convert, and give what numpy arrays give
    np.testing.assert_array_equal(ops.linear(torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(B)),
                                  ops.linear(X, W, B))


def test_num_heads_beyond_the_features():
    # E = 0 divides by any head count: B * num_heads overflowed int64 in the mask checks (UBSan)
    x = np.zeros((2, 3, 0), np.float32)
    e = np.zeros((0, 0), np.float32)
    with pytest.raises(ValueError, match="num_heads"):
        ops.multi_head_attention(x, x, x, 2 ** 62, e, None, e, None, attn_mask=np.ones((6, 3, 3), bool))
    with pytest.raises(ValueError, match="must not exceed"):
        ops.multi_head_attention(X[None], X[None], X[None], 16, randn(rng, 24, 8), None, randn(rng, 8, 8), None)


def test_device_index_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        coreformer.tensor(np.ones(3), device="cuda:99999999999")  # IndexError: stoi before
