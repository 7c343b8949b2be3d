from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import coreformer
from coreformer import ops

import reference as ref
from conftest import assert_close, randn


@pytest.mark.parametrize("sq,sk", [(1, 1), (1, 7), (7, 7), (63, 65), (65, 63), (1, 1000), (300, 520), (128, 128)])
@pytest.mark.parametrize("d,dv", [(64, 64), (7, 13), (1, 1), (80, 40)])
def test_sdpa_shapes(isa, rng, sq, sk, d, dv):
    q, k, v = randn(rng, 2, 3, sq, d), randn(rng, 2, 3, sk, d), randn(rng, 2, 3, sk, dv)
    assert_close(ops.scaled_dot_product_attention(q, k, v), ref.sdpa(q, k, v), atol_scale=5e-6)


@pytest.mark.parametrize("sq,sk", [(1, 1), (7, 7), (63, 65), (65, 65), (5, 300), (300, 300), (600, 257)])
def test_sdpa_causal_bottom_right(isa, rng, sq, sk):
    q, k, v = randn(rng, 1, 2, sq, 32), randn(rng, 1, 2, sk, 32), randn(rng, 1, 2, sk, 32)
    got = ops.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(got, ref.sdpa(q, k, v, is_causal=True), atol_scale=5e-6)
    if sq > sk:  # the first sq - sk queries see no key at all: zeros, not NaN
        assert np.all(got[..., : sq - sk, :] == 0)


def test_sdpa_causal_square_matches_torch_convention(rng):
    # Sq == Sk: bottom-right and top-left alignment agree (torch's is_causal).
    q, k, v = randn(rng, 1, 1, 9, 8), randn(rng, 1, 1, 9, 8), randn(rng, 1, 1, 9, 8)
    tril = np.tril(np.ones((9, 9), bool))
    assert_close(ops.scaled_dot_product_attention(q, k, v, is_causal=True),
                 ops.scaled_dot_product_attention(q, k, v, attn_mask=tril), atol_scale=1e-7)


MASK_SHAPES = [(1, 1, 1, 1), (2, 1, 1, 300), (1, 3, 70, 1), (70, 300), (300,), (2, 3, 70, 300), (3, 1, 300)]


@pytest.mark.parametrize("mshape", MASK_SHAPES)
def test_sdpa_bool_mask_broadcast(isa, rng, mshape):
    q, k, v = randn(rng, 2, 3, 70, 16), randn(rng, 2, 3, 300, 16), randn(rng, 2, 3, 300, 16)
    mask = rng.random(mshape) > 0.3
    assert_close(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask), ref.sdpa(q, k, v, attn_mask=mask),
                 atol_scale=5e-6)


@pytest.mark.parametrize("mshape", MASK_SHAPES)
def test_sdpa_float_mask_broadcast(isa, rng, mshape):
    q, k, v = randn(rng, 2, 3, 70, 16), randn(rng, 2, 3, 300, 16), randn(rng, 2, 3, 300, 16)
    mask = randn(rng, *mshape, scale=3.0)
    mask[mask < -3.5] = -np.inf
    assert_close(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask), ref.sdpa(q, k, v, attn_mask=mask),
                 atol_scale=5e-6)


def test_sdpa_fully_masked_rows_give_zeros(isa, rng):
    q, k, v = randn(rng, 2, 2, 40, 16), randn(rng, 2, 2, 600, 16), randn(rng, 2, 2, 600, 16)
    mask = rng.random((2, 1, 40, 600)) > 0.5
    mask[0, :, 3] = False          # row with nothing to attend
    mask[1, :, :, :] = False
    mask[1, :, 5, 599] = True      # a single key, in the last block
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    for m in (mask, fmask):
        got = ops.scaled_dot_product_attention(q, k, v, attn_mask=m)
        assert np.isfinite(got).all()
        assert np.all(got[0, :, 3] == 0) and np.all(got[1, :, 0] == 0)
        assert_close(got[1, :, 5], v[1, :, 599], atol_scale=1e-6)
        assert_close(got, ref.sdpa(q, k, v, attn_mask=mask), atol_scale=5e-6)



@pytest.mark.parametrize("sq", [1, 2, 40])  # the few-queries path and the blocked one
def test_sdpa_nan_gives_nan(isa, rng, sq):
    # NaN in gives NaN out, as in torch's flash path: a NaN query row (every score NaN, so the row's max
    # reads as -inf, the "nothing to attend" case) must not come back as zeros, nor in a later key block
    # (Sk = 600: three blocks); a NaN key makes every row NaN; fully masked rows stay zeros.
    q, k, v = randn(rng, 2, 2, sq, 16), randn(rng, 2, 2, 600, 16), randn(rng, 2, 2, 600, 16)
    q[0, 1, sq - 1, 5] = np.nan
    got = ops.scaled_dot_product_attention(q, k, v)
    assert np.isnan(got[0, 1, sq - 1]).all()
    finite = np.ones(got.shape[:3], bool)
    finite[0, 1, sq - 1] = False
    assert np.isfinite(got[finite]).all()
    assert_close(got[1], ref.sdpa(q[1], k[1], v[1]), atol_scale=5e-6)
    mask = np.ones((2, 1, sq, 600), bool)
    mask[0, :, sq - 1, :300] = False  # the NaN row sees nothing in the first key block
    mask[1, :, 0] = False             # a fully masked row: zeros
    got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert np.isnan(got[0, 1, sq - 1]).all()
    assert np.all(got[1, :, 0] == 0)
    k2 = k.copy()
    k2[1, 0, 450, 3] = np.nan
    assert np.isnan(ops.scaled_dot_product_attention(q, k2, v)[1, 0]).all()
    fmask = np.zeros((sq, 600), np.float32)
    fmask[0, :] = np.nan  # a float mask of NaN: NaN rows in every head
    assert np.isnan(ops.scaled_dot_product_attention(q, k, v, attn_mask=fmask)[:, :, 0]).all()

def test_sdpa_causal_and_mask_together(isa, rng):
    q, k, v = randn(rng, 2, 2, 100, 16), randn(rng, 2, 2, 300, 16), randn(rng, 2, 2, 300, 16)
    mask = rng.random((2, 1, 1, 300)) > 0.2
    assert_close(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True),
                 ref.sdpa(q, k, v, attn_mask=mask, is_causal=True), atol_scale=5e-6)


@pytest.mark.parametrize("scale", [0.01, 0.125, 1.0, 3.0])
def test_sdpa_scale(isa, rng, scale):
    q, k, v = randn(rng, 1, 2, 33, 24), randn(rng, 1, 2, 47, 24), randn(rng, 1, 2, 47, 24)
    assert_close(ops.scaled_dot_product_attention(q, k, v, scale=scale), ref.sdpa(q, k, v, scale=scale),
                 atol_scale=5e-6)


def test_sdpa_without_batch_axis(rng):
    q, k, v = randn(rng, 3, 10, 8), randn(rng, 3, 12, 8), randn(rng, 3, 12, 5)
    got = ops.scaled_dot_product_attention(q, k, v)
    assert got.shape == (3, 10, 5)
    assert_close(got, ref.sdpa(q, k, v), atol_scale=5e-6)


def test_sdpa_large_logits_stable(rng):
    q, k, v = randn(rng, 1, 1, 50, 16, scale=30), randn(rng, 1, 1, 700, 16, scale=30), randn(rng, 1, 1, 700, 16)
    got = ops.scaled_dot_product_attention(q, k, v)
    assert np.isfinite(got).all()
    # logits reach ~3e3, so float32 rounding of a logit alone is ~2e-4: the problem's own conditioning
    assert_close(got, ref.sdpa(q, k, v), atol_scale=1e-3)


def test_sdpa_empty(rng):
    assert ops.scaled_dot_product_attention(np.zeros((1, 2, 0, 4), np.float32), randn(rng, 1, 2, 3, 4),
                                            randn(rng, 1, 2, 3, 4)).shape == (1, 2, 0, 4)
    # no key at all: zeros, on the few-queries, many-heads and blocked paths (the last two once divided by 0)
    for b, h, sq in [(1, 2, 3), (1, 2, 5), (2, 12, 100), (1, 1, 300)]:
        for causal in (False, True):
            got = ops.scaled_dot_product_attention(randn(rng, b, h, sq, 4), np.zeros((b, h, 0, 4), np.float32),
                                                   np.zeros((b, h, 0, 6), np.float32), is_causal=causal,
                                                   attn_mask=np.ones((sq, 0), bool))
            assert got.shape == (b, h, sq, 6) and np.all(got == 0)


def test_sdpa_matches_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q, k, v = randn(rng, 2, 4, 130, 64), randn(rng, 2, 4, 130, 64), randn(rng, 2, 4, 130, 64)
    mask = rng.random((2, 1, 130, 130)) > 0.1
    for kw_ours, kw_torch in [({}, {}), ({"is_causal": True}, {"is_causal": True}),
                              ({"attn_mask": mask}, {"attn_mask": torch.from_numpy(mask)})]:
        t = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **kw_torch)
        np.testing.assert_allclose(ops.scaled_dot_product_attention(q, k, v, **kw_ours), t.numpy(), rtol=1e-4,
                                   atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(sq=st.integers(1, 80), sk=st.integers(1, 300), d=st.integers(1, 70), causal=st.booleans(),
       masked=st.booleans())
def test_sdpa_hypothesis(sq, sk, d, causal, masked):
    rng = np.random.default_rng(sq * 100003 + sk * 101 + d)
    q, k, v = randn(rng, 1, 2, sq, d), randn(rng, 1, 2, sk, d), randn(rng, 1, 2, sk, d)
    mask = (rng.random((1, 2, sq, sk)) > 0.4) if masked else None
    assert_close(ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal),
                 ref.sdpa(q, k, v, attn_mask=mask, is_causal=causal), atol_scale=5e-6)


@pytest.mark.parametrize("sq", [1, 2])
@pytest.mark.parametrize("sk", [1, 5, 300, 1000])
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float", "causal+bool"])
def test_sdpa_few_queries(isa, rng, sq, sk, kind):
    # Decoding against a KV cache: Sq <= 2 takes the path that reads K and V in place.
    q, k, v = randn(rng, 2, 3, sq, 24), randn(rng, 2, 3, sk, 24), randn(rng, 2, 3, sk, 40)
    mask = None
    if "bool" in kind:
        mask = rng.random((2, 1, sq, sk)) > 0.3
        mask[0, 0, 0, :] = False  # a row with nothing to attend
    elif kind == "float":
        mask = randn(rng, 2, 3, 1, sk, scale=2)
        mask[1, :, :, : sk // 2] = -np.inf
    causal = "causal" in kind
    got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert np.isfinite(got).all()
    assert_close(got, ref.sdpa(q, k, v, attn_mask=mask, is_causal=causal), atol_scale=5e-6)
    if "bool" in kind:
        assert np.all(got[0, 0, 0] == 0)


@pytest.mark.parametrize("sq,sk", [(1, 9), (2, 300), (7, 7), (65, 130)])  # few-queries and blocked paths
@pytest.mark.parametrize("kv_shape", [(1, 6), (2, 1), (1, 1)])
def test_sdpa_key_value_broadcast_and_grouped_query(isa, rng, sq, sk, kv_shape):
    # as torch: key/value with size-1 batch or head axes broadcast (read in place, zero strides), and
    # enable_gqa lets H_kv heads serve H / H_kv query heads each (repeat_interleave order)
    q = randn(rng, 2, 6, sq, 16)
    k, v = randn(rng, *kv_shape, sk, 16), randn(rng, *kv_shape, sk, 8)
    mask = rng.random((2, 1, sq, sk)) > 0.3
    for causal in (False, True):
        want = ref.sdpa(q, np.broadcast_to(k, (2, 6, sk, 16)), np.broadcast_to(v, (2, 6, sk, 8)), mask, causal)
        got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        assert_close(got, want, atol_scale=5e-6)
    kg, vg = randn(rng, 2, 3, sk, 16), randn(rng, 2, 3, sk, 8)
    want = ref.sdpa(q, np.repeat(kg, 2, axis=1), np.repeat(vg, 2, axis=1), is_causal=True)
    assert_close(ops.scaled_dot_product_attention(q, kg, vg, is_causal=True, enable_gqa=True), want, atol_scale=5e-6)
    with pytest.raises(ValueError, match="batch and head axes"):  # without enable_gqa, as torch
        ops.scaled_dot_product_attention(q, kg, vg)
    with pytest.raises(ValueError, match="query's 6 heads must be a multiple of key's 4"):
        ops.scaled_dot_product_attention(q, randn(rng, 2, 4, sk, 16), randn(rng, 2, 4, sk, 8), enable_gqa=True)
    with pytest.raises(TypeError, match="enable_gqa"):
        ops.scaled_dot_product_attention(q, kg, vg, enable_gqa="yes")  # type: ignore[call-overload]


@pytest.mark.parametrize("sq,sk", [(1, 9), (7, 7), (65, 130)])
def test_sdpa_strided_views_read_and_written_in_place(isa, rng, sq, sk):
    # heads split out of a packed (B, S, 3, H, Dh) projection, a prefix of a larger KV cache, and
    # an out that is a (B, S, H, Dh) buffer seen as (B, H, S, Dh): the layouts the models use
    B, H, Dh, cap = 2, 3, 16, sk + 11
    qkv = randn(rng, B, sq, 3, H, Dh)
    q = qkv[:, :, 0].transpose(0, 2, 1, 3)
    kc, vc = randn(rng, B, H, cap, Dh), randn(rng, B, H, cap, Dh)
    k, v = kc[:, :, :sk], vc[:, :, :sk]
    mask = rng.random((B, 1, 1, sk)) < 0.8
    buf = np.full((B, sq, H, Dh), np.nan, np.float32)
    got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True, out=buf.transpose(0, 2, 1, 3))
    want = ref.sdpa(q, k, v, attn_mask=mask, is_causal=True)
    assert_close(got, want)
    assert_close(buf.transpose(0, 2, 1, 3), want)


def test_sdpa_weights_over_the_whole_exponent_range(isa):
    # Two keys scored x and 0 against values e0 and e1: the output row is the softmax weights themselves,
    # (1 / (1 + e^-x), e^-x / (1 + e^-x)), so the small weight checks the kernel's exp across its range
    # (scores are taken to log2 units inside). float32 rounding of x * scale alone costs ~|x| * 6e-8
    # relative; weights below 2^-125 (x > 86.6) may flush to 0.
    x = np.concatenate([np.linspace(0, 90, 2001), [1e-3, 0.5, 20.0, 86.0]]).astype(np.float32)
    q = x.reshape(1, 1, -1, 1)
    k = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    v = np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)
    got = ops.scaled_dot_product_attention(q, k, v, scale=1.0)[0, 0]
    xd = x.astype(np.float64)
    small = np.exp(-xd) / (1 + np.exp(-xd))
    assert_close(got[:, 0], 1 / (1 + np.exp(-xd)), atol_scale=1e-7)
    normal = small > 2.0 ** -125
    rel = np.abs(got[normal, 1] - small[normal]) / small[normal]
    assert np.all(rel <= 3e-7 + 1.5e-7 * xd[normal]), (rel.max(), x[normal][rel.argmax()])
    assert np.all(got[~normal, 1] <= 2.0 ** -125)
    # past the flush the weight is exactly 0, and no weight is ever a denormal (slow on some CPUs)
    assert np.all(got[x >= 88.0, 1] == 0) and np.all((got[:, 1] == 0) | (got[:, 1] >= np.finfo(np.float32).tiny))


# Many small heads (B*H >= 4 x threads, a head's packed K and V <= 256 KiB) take the per-head path:
# each thread runs a contiguous range of heads and fetches the next head's rows meanwhile. 15 heads
# split unevenly over 2 and 3 threads; Q comes from a (B, S, H, D) buffer, as the models hand it over.
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sq,sk,causal", [(7, 7, False), (65, 63, True), (128, 300, False), (300, 128, True)])
def test_sdpa_many_small_heads(isa, rng, threads, sq, sk, causal):
    B, H = 3, 5
    q = randn(rng, B, sq, H, 32).transpose(0, 2, 1, 3)
    k, v = randn(rng, B, H, sk, 32), randn(rng, B, H, sk, 24)
    mask = rng.random((B, 1, sq, sk)) > 0.2
    before = coreformer.get_num_threads()
    coreformer.set_num_threads(threads)
    try:
        got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    finally:
        coreformer.set_num_threads(before)
    assert_close(got, ref.sdpa(q, k, v, attn_mask=mask, is_causal=causal), atol_scale=5e-6)


def test_sdpa_strided_out_errors(rng):
    q = randn(rng, 1, 2, 5, 8)
    buf = np.empty((1, 5, 2, 8), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        ops.scaled_dot_product_attention(q, q, q, out=q)
    with pytest.raises(ValueError, match="contiguous last axis"):
        ops.scaled_dot_product_attention(q, q, q, out=np.empty((1, 2, 8, 5), np.float32).transpose(0, 1, 3, 2))
    with pytest.raises(ValueError, match="repeated"):
        ops.scaled_dot_product_attention(q, q, q, out=np.broadcast_to(buf[:, :1].transpose(0, 2, 1, 3), (1, 2, 5, 8)))
    with pytest.raises(ValueError, match="read-only"):
        ro = buf.transpose(0, 2, 1, 3)
        ro.flags.writeable = False
        ops.scaled_dot_product_attention(q, q, q, out=ro)


@pytest.mark.parametrize("sq", [1, 2, 3, 50, 300])
@pytest.mark.parametrize("sk", [5, 300, 700])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal"])
def test_sdpa_masked_keys_contribute_nothing(isa, rng, sq, sk, mask_kind):
    # One rule on every path: a masked key adds nothing, whatever its key and value rows hold. A NaN in
    # a masked value row was ignored with <= 2 queries and made every row NaN with >= 3 (the tiled
    # path's P.V GEMM computed 0 * NaN).
    q, k, v = randn(rng, 2, 2, sq, 16), randn(rng, 2, 2, sk, 16), randn(rng, 2, 2, sk, 16)
    bad = [1, 2, sk - 1]
    keep = np.ones((sq, sk), bool)
    kwargs: dict[str, Any]
    if mask_kind == "causal":  # the last keys are in every query's future (bottom-right: query i sees i + sk - sq)
        bad = [sk - 1] if sq > 1 else []
        keep = np.tril(np.ones((sq, sk), bool), sk - sq)
        kwargs = {"is_causal": True}
    else:
        keep[:, bad] = False
        kwargs = {"attn_mask": keep if mask_kind == "bool" else np.where(keep, 0, -np.inf).astype(np.float32)}
    clean_k, clean_v = k.copy(), v.copy()
    k[:, :, bad[:1]] = np.nan
    v[:, :, bad[1:2]] = np.nan
    v[:, :, bad[2:]] = np.inf
    v[:, :, bad[:1]] = -np.inf
    got = ops.scaled_dot_product_attention(q, k, v, **kwargs)
    # causal: the rows that see the bad key do see it (NaN), the others must not
    rows_clean = ~keep[:, bad].any(1) if bad else np.ones(sq, bool)
    want = ops.scaled_dot_product_attention(q, clean_k, clean_v, **kwargs)
    assert_close(got[:, :, rows_clean], want[:, :, rows_clean], atol_scale=1e-6)
    assert_close(want, ref.sdpa(q, clean_k, clean_v, keep), atol_scale=5e-6)
    # a visible NaN value still reaches every row that attends to it
    v2 = clean_v.copy()
    v2[0, 1, 0, 3] = np.nan
    out = ops.scaled_dot_product_attention(q, clean_k, v2, **kwargs)
    sees0 = keep[:, 0]
    assert np.isnan(out[0, 1, sees0, 3]).all() and np.isnan(out).sum() == sees0.sum()
