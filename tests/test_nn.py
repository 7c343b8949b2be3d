"""coreformer.nn against torch.nn on the same weights, the KV cache against the full forward,
state dicts and safetensors round trips."""
import numpy as np
import pytest

from coreformer import nn, ops
from coreformer import safetensors as st

import reference as ref
from conftest import assert_close, randn

torch = pytest.importorskip("torch")


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def randomise(module, seed=0):
    """torch initialises biases and norms to 0/1: give every parameter random values so a swapped
    name or a missed bias shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 1.0 / p.shape[-1] ** 0.5))
    return module.eval()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_matches_torch(rng, norm_first, activation):
    d, h, ff, layers = 48, 4, 67, 2
    tl = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation=activation, batch_first=True,
                                          norm_first=norm_first, layer_norm_eps=1e-6)
    te = randomise(torch.nn.TransformerEncoder(tl, layers, norm=torch.nn.LayerNorm(d, eps=1e-6),
                                               enable_nested_tensor=False))
    ours = nn.TransformerEncoder(layers, d, h, ff, activation=activation, norm_first=norm_first, layer_norm_eps=1e-6)
    ours.load_state_dict(te.state_dict())
    x = randn(rng, 3, 13, d)
    pad = np.zeros((3, 13), bool)
    pad[1, 9:] = True
    pad[2, 1:] = True
    with torch.no_grad():
        want = te(t(x), src_key_padding_mask=t(pad)).numpy()
        want_nopad = te(t(x)).numpy()
        causal = torch.nn.Transformer.generate_square_subsequent_mask(13)
        want_causal = te(t(x), mask=causal, is_causal=True).numpy()
    got = ours(x, src_key_padding_mask=pad)
    assert rel_err(got[~pad], want[~pad]) < 1e-5
    assert rel_err(ours(x), want_nopad) < 1e-5
    assert rel_err(ours(x, is_causal=True), want_causal) < 1e-5


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_norms_with_different_eps(rng, norm_first):
    # each norm keeps its own eps in the fused op, as in torch
    d, h, ff = 32, 4, 40
    tl = randomise(torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True, norm_first=norm_first))
    tl.norm2.eps = 1e-2
    ours = nn.TransformerEncoderLayer(d, h, ff, norm_first=norm_first)
    ours.load_state_dict(tl.state_dict())
    ours.norm2.eps = 1e-2
    x = randn(rng, 2, 9, d)
    with torch.no_grad():
        want = tl(t(x)).numpy()
    assert rel_err(ours(x), want) < 1e-5
    ours.norm2.eps = ours.norm1.eps
    assert rel_err(ours(x), want) > 1e-4  # the eps matters at this size: the test can tell them apart


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_decoder_matches_torch_and_cache_matches_full(rng, norm_first, packed):
    d, h, ff, layers, s_src, s_tgt = 32, 4, 50, 2, 11, 9
    tl = torch.nn.TransformerDecoderLayer(d, h, ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    td = randomise(torch.nn.TransformerDecoder(tl, layers, norm=torch.nn.LayerNorm(d)), seed=1)
    ours = nn.TransformerDecoder(layers, d, h, ff, norm_first=norm_first)
    if packed:  # packed before loading: loading repacks
        ours.pack_weights()
    ours.load_state_dict(td.state_dict())
    tgt, mem = randn(rng, 2, s_tgt, d), randn(rng, 2, s_src, d)
    mpad = np.zeros((2, s_src), bool)
    mpad[0, 7:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(s_tgt)
    with torch.no_grad():
        want = td(t(tgt), t(mem), tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=t(mpad)).numpy()
    full = ours(tgt, mem, tgt_is_causal=True, memory_key_padding_mask=mpad)
    assert rel_err(full, want) < 1e-5
    # incremental: 4 positions, then one at a time, against the full forward
    cache = ours.new_cache(2, capacity=4)  # smaller than needed: the cache must grow
    steps = [ours(tgt[:, :4], mem, tgt_is_causal=True, memory_key_padding_mask=mpad, cache=cache)]
    for i in range(4, s_tgt):
        steps.append(ours(tgt[:, i:i + 1], mem, tgt_is_causal=True, memory_key_padding_mask=mpad, cache=cache))
    assert rel_err(np.concatenate(steps, axis=1), full) < 1e-5
    assert cache[0][0].length == s_tgt and cache[0][1].length == s_src


def test_layers_without_bias_match_torch(rng):
    # torch's bias=False drops the LayerNorms' biases too: ours kept them, so torch's state dicts did
    # not load (missing norm1.bias, ...) and ours saved tensors torch would not take
    d, h, ff = 32, 4, 40
    x, mem = randn(rng, 2, 9, d), randn(rng, 2, 7, d)
    te = randomise(torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True, bias=False), 2,
        norm=torch.nn.LayerNorm(d, bias=False), enable_nested_tensor=False))
    td = randomise(torch.nn.TransformerDecoder(
        torch.nn.TransformerDecoderLayer(d, h, ff, dropout=0.0, batch_first=True, norm_first=True, bias=False), 2,
        norm=torch.nn.LayerNorm(d, bias=False)), seed=1)
    enc = nn.TransformerEncoder(2, d, h, ff, bias=False)
    dec = nn.TransformerDecoder(2, d, h, ff, norm_first=True, bias=False)
    for ours, theirs in ((enc, te), (dec, td)):
        ours.load_state_dict(theirs.state_dict())
        assert set(ours.state_dict()) == set(theirs.state_dict())
    with torch.no_grad():
        assert rel_err(enc(x), te(t(x)).numpy()) < 1e-5
        assert rel_err(dec(x, mem, tgt_is_causal=True),
                       td(t(x), t(mem), tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(9),
                          tgt_is_causal=True).numpy()) < 1e-5
    ln = nn.LayerNorm(d, bias=False)
    assert ln.bias is None and set(ln.state_dict()) == {"weight"}
    emb = nn.Embedding(10, 4, padding_idx=-1)  # torch's: the row starts as zeros
    assert emb.padding_idx == 9 and not emb.weight[9].any() and emb.weight[:9].any()
    with pytest.raises(IndexError, match="padding_idx 10"):
        nn.Embedding(10, 4, padding_idx=10)
    with pytest.raises(TypeError, match="bias"):
        nn.LayerNorm(d, bias="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("packed", [False, True])
def test_multi_head_attention_cache_with_padding(rng, packed):
    d, h = 24, 3  # K/V rows of the packed in_proj start at 24: not a panel boundary, so copied
    mha = nn.MultiHeadAttention(d, h)
    mha.load_state_dict(randomise(torch.nn.MultiheadAttention(d, h, batch_first=True)).state_dict())
    if packed:
        mha.pack_weights()
    x = randn(rng, 2, 6, d)
    pad = np.zeros((2, 6), bool)
    pad[0, :2] = True  # left padding
    full = mha(x, is_causal=True, key_padding_mask=pad)
    cache = mha.new_cache(2, 6)
    a = mha(x[:, :3], is_causal=True, key_padding_mask=pad[:, :3], cache=cache)
    b = mha(x[:, 3:], is_causal=True, key_padding_mask=pad, cache=cache)
    got = np.concatenate([a, b], axis=1)
    keep = np.ones((2, 6), bool)
    keep[0, :2] = False  # rows with every key masked: torch-style NaN there, ours zeros+bias
    assert rel_err(got[keep], full[keep]) < 1e-5


def test_additive_attention_and_feed_forward(rng):
    aa = nn.AdditiveAttention(5, 7, 9)
    q, k, v = randn(rng, 2, 3, 5), randn(rng, 2, 4, 7), randn(rng, 2, 4, 6)
    mask = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], bool)
    out, w = aa(q, k, v, mask=mask, return_weights=True)
    want_out, want_w = ref.additive(q, k, v, aa.w_query, aa.w_key, aa.v, mask)
    assert_close(out, want_out, rtol=1e-5, atol_scale=1e-5)
    assert_close(w, want_w, rtol=1e-5, atol_scale=1e-5)
    ff = nn.FeedForward(8, 20, activation="gelu")
    x = randn(rng, 3, 8)
    h = ref.gelu(ref.f64(x) @ ref.f64(ff.linear1.weight).T + ff.linear1.bias)
    assert_close(ff(x, residual=x), h @ ref.f64(ff.linear2.weight).T + ff.linear2.bias + x, rtol=1e-5,
                 atol_scale=1e-5)


def test_positional_layers(rng):
    pe = nn.SinusoidalPositionalEncoding(16, max_len=4)
    x = randn(rng, 2, 6, 16)
    assert_close(pe(x, offset=3), x + ops.sinusoidal_positions(9, 16)[3:])  # grows past max_len
    lp = nn.LearnedPositionalEmbedding(8, 16)
    assert_close(lp(x, offset=2), x + lp.weight[2:8])
    with pytest.raises(ValueError, match="outside the model's 8 positions"):
        lp(x, offset=3)
    ids = np.array([[0, 1, 2, 0, 1, 2]] * 2)
    assert_close(lp(x, position_ids=ids), x + lp.weight[ids])
    with pytest.raises(ValueError, match="offset"):
        pe(x, offset=-1)


def test_state_dict_errors_and_safetensors_round_trip(tmp_path, rng):
    enc = nn.TransformerEncoder(1, 16, 2, 24)
    sd = enc.state_dict()
    assert "layers.0.self_attn.in_proj_weight" in sd and "norm.bias" in sd
    bad = dict(sd)
    bad.pop("layers.0.linear1.bias")
    bad["layers.0.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="missing tensors: layers.0.linear1.bias.*unexpected tensors: layers.0.extra"):
        enc.load_state_dict(bad)
    wrong = dict(sd)
    wrong["norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"norm.weight has shape \(5,\), expected \(16,\)"):
        enc.load_state_dict(wrong)
    with pytest.raises(TypeError, match="real numeric"):
        enc.load_state_dict({**sd, "norm.weight": np.array(["a"] * 16)})
    enc.save(tmp_path / "enc.safetensors")
    other = nn.TransformerEncoder(1, 16, 2, 24).load(tmp_path / "enc.safetensors")
    x = randn(rng, 2, 5, 16)
    np.testing.assert_array_equal(other(x), enc(x))
    loaded = st.load_file(tmp_path / "enc.safetensors")
    assert not loaded["norm.weight"].flags.writeable  # mapped, not copied
    assert "linear1" in repr(enc)


def test_safetensors_reads_what_the_reference_writes_and_rejects_corrupt_files(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors: dict[str, np.ndarray] = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int64),
               "h": np.linspace(-2, 2, 7).astype(np.float16)}
    path = tmp_path / "x.safetensors"
    safetensors_numpy.save_file(tensors, str(path))
    got = st.load_file(path)
    np.testing.assert_array_equal(got["a"], tensors["a"])
    np.testing.assert_array_equal(got["b"], tensors["b"])
    assert got["h"].dtype == np.float32
    np.testing.assert_array_equal(got["h"], tensors["h"].astype(np.float32))
    st.save_file(tensors, tmp_path / "y.safetensors")
    back = safetensors_numpy.load_file(str(tmp_path / "y.safetensors"))
    np.testing.assert_array_equal(back["a"], tensors["a"])
    # bf16 widens to float32
    torch_st = pytest.importorskip("safetensors.torch")
    bf = torch.linspace(-3, 3, 9).to(torch.bfloat16)
    torch_st.save_file({"w": bf}, str(tmp_path / "bf.safetensors"))
    np.testing.assert_array_equal(st.load_file(tmp_path / "bf.safetensors")["w"], bf.float().numpy())
    data = path.read_bytes()
    for name, blob, match in [("short", data[:4], "no header"), ("cut", data[:-8], "truncated"),
                              ("header", data[:8] + b"{nonsense" + data[17:], "corrupt header"),
                              ("len", (10**9).to_bytes(8, "little") + data[8:], "runs past the end")]:
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=match):
            st.load_file(p)
    with pytest.raises(FileNotFoundError):
        st.load_file(tmp_path / "absent.safetensors")


def test_pack_weights_follows_the_weights(rng):
    lin = nn.Linear(40, 33, activation="gelu")
    x = randn(rng, 5, 40)
    plain = lin(x)
    assert lin.weights_dtype is None
    assert lin.pack_weights() is lin and lin.weights_dtype == "float32"
    assert_close(lin(x), plain, atol_scale=1e-6)
    # assigning or loading a weight repacks it: the packed copy never goes stale
    lin.weight = randn(rng, 33, 40)
    assert_close(lin(x), ref.linear(x, lin.weight, lin.bias, "gelu"), atol_scale=1e-5)
    w2 = randn(rng, 33, 40)
    lin.load_state_dict({"weight": w2, "bias": lin.bias})
    assert_close(lin(x), ref.linear(x, w2, lin.bias, "gelu"), atol_scale=1e-5)
    # the state dict keeps the float32 arrays, also when packed in bfloat16
    lin.pack_weights("bfloat16")
    assert lin.weights_dtype == "bfloat16" and lin.state_dict()["weight"] is w2
    w_bf16 = ops.pack_weight(w2, "bfloat16").unpack()
    assert not np.array_equal(w_bf16, w2)
    assert_close(lin(x), ref.linear(x, w_bf16, lin.bias, "gelu"), atol_scale=1e-5)
    lin.unpack_weights()
    assert lin.weights_dtype is None
    # contiguous=False keeps a float32 view as it is (what a model packs from without a copy)
    w_t = np.ascontiguousarray(w2.T)
    lin.load_state_dict({"weight": w_t.T, "bias": lin.bias}, contiguous=False)
    assert lin.weight.base is w_t
    assert_close(lin(x), ref.linear(x, w2, lin.bias, "gelu"), atol_scale=1e-5)
    assert_close(lin(x), ref.linear(x, w2, lin.bias, "gelu"), atol_scale=1e-5)
    with pytest.raises(ValueError, match="dtype must be 'float32', 'bfloat16' or 'int8', got 'float16'"):
        lin.pack_weights("float16")


def test_encoder_packed_bfloat16_is_close_and_float32_exactish(rng):
    enc = nn.TransformerEncoder(2, 64, 4, 96, activation="gelu")
    x = randn(rng, 2, 9, 64)
    pad = np.zeros((2, 9), bool)
    pad[1, 6:] = True
    plain = enc(x, src_key_padding_mask=pad)
    assert rel_err(enc.pack_weights("float32")(x, src_key_padding_mask=pad), plain) < 1e-5
    err = rel_err(enc.pack_weights("bfloat16")(x, src_key_padding_mask=pad), plain)
    assert 1e-5 < err < 2e-2  # bfloat16 weights: visibly different, still close
    assert enc.weights_dtype == "bfloat16"
    err = rel_err(enc.pack_weights("int8")(x, src_key_padding_mask=pad), plain)
    assert 1e-5 < err < 3e-2
    assert enc.weights_dtype == "int8"


def test_parameters_and_children_read_as_attributes_stay_current(rng):
    # Module mirrors its parameters and children into the instance dict (plain attribute reads in the
    # forward); every way a weight changes must show through the attribute and the state dict alike.
    lin = nn.Linear(4, 3)
    w1, w2, w3 = randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 3, 4)
    lin.weight = w1
    assert lin.weight is w1 and lin.state_dict()["weight"] is w1
    lin.load_state_dict({"weight": w2, "bias": np.zeros(3, np.float32)})
    assert lin.weight is lin.state_dict()["weight"] and np.array_equal(lin.weight, w2)
    lin._params["weight"] = w3  # what a model's _after_load does to share a fused matrix
    assert lin.weight is w3
    x = randn(rng, 2, 4)
    assert_close(lin(x), x @ w3.T)
    lin.bias = None
    assert lin.bias is None and "bias" not in lin.state_dict()
    parent = nn.Module()
    parent.child = lin
    assert parent.child is lin and "child.weight" in parent.state_dict()
    parent.child = randn(rng, 5)          # a child replaced by a parameter
    assert isinstance(parent.child, np.ndarray) and "child" in parent.state_dict()
    assert "child.weight" not in parent.state_dict()
    del parent._params["child"]
    with pytest.raises(AttributeError):
        _ = parent.child


def test_members_mirror_survives_bulk_edits(rng):
    lin = nn.Linear(4, 3)
    w = randn(rng, 3, 4)
    lin._params |= {"weight": w}
    assert lin.weight is w
    name, _ = lin._params.popitem()
    assert name not in lin.__dict__
    lin._params.clear()
    assert "weight" not in lin.__dict__ and lin.state_dict() == {}


def test_layer_sizes_are_integers(rng):
    # A float size was truncated silently (Linear(8.5, 4) built an 8-input layer); torch refuses it too.
    with pytest.raises(TypeError, match="in_features must be an integer"):
        nn.Linear(8.5, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_heads must be an integer"):
        nn.MultiHeadAttention(8, 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eps must be a real number"):
        nn.LayerNorm(8, eps="small")  # type: ignore[arg-type]
    # torch's LayerNorm((E,)) form is the same layer; several sizes are not supported
    x = randn(rng, 3, 8)
    np.testing.assert_array_equal(nn.LayerNorm((8,))(x), nn.LayerNorm(8)(x))
    assert nn.LayerNorm([np.int64(8)]).normalized_shape == 8
    with pytest.raises(ValueError, match="normalized_shape must be one size"):
        nn.LayerNorm((2, 8))  # type: ignore[arg-type]


def test_kv_cache_and_stack_arguments(rng):
    mha = nn.MultiHeadAttention(8, 2)
    x = randn(rng, 2, 5, 8)
    # a cache made for another batch, head count or head size: ValueError naming both shapes, not numpy's
    # broadcast message from inside the append
    for b, h, dh in ((1, 2, 4), (2, 4, 2), (2, 2, 5)):
        with pytest.raises(ValueError, match=rf"KV cache holds \(B, H, S, Dh\) = \({b}, {h}, S, {dh}\).*\(2, 2, 5, 4\)"):
            mha(x, cache=nn.KVCache(b, h, dh, 3))
    with pytest.raises(ValueError, match="KV cache num_heads must be >= 1, got 0"):
        nn.KVCache(1, 0, 4, 3)
    with pytest.raises(ValueError, match="KV cache batch must be >= 0, got -1"):
        nn.KVCache(-1, 2, 4, 3)
    with pytest.raises(ValueError, match="num_layers must be >= 0, got -1"):
        nn.TransformerEncoder(-1, 8, 2)
    with pytest.raises(TypeError, match="num_layers must be an integer"):
        nn.TransformerDecoder(2.0, 8, 2)  # type: ignore[arg-type]
    c = nn.KVCache(2, 2, 4, 3)  # the right cache still grows past its capacity
    mha(x[:, :2], cache=c)
    mha(x[:, 2:], cache=c)
    assert c.length == 5 and c.capacity >= 5


@pytest.mark.parametrize("packed", [None, "float32", "int8"])
def test_modules_pickle_and_deepcopy(rng, packed):
    # pickling a layer failed inside the parameter mirror ('_Members' object has no attribute 'owner');
    # a copy must compute the same, keep attributes and state dict in step, and repack what is assigned
    import copy
    import pickle
    enc = nn.TransformerEncoder(2, 8, 2, dim_feedforward=16)
    if packed:
        enc.pack_weights(packed)
    x = randn(rng, 2, 5, 8)
    want = enc(x)
    for back in (pickle.loads(pickle.dumps(enc)), copy.deepcopy(enc)):
        np.testing.assert_array_equal(back(x), want)
        assert back.weights_dtype == enc.weights_dtype
        lin = back.layers[0].linear1
        assert lin.weight is lin.state_dict()["weight"]
        lin.weight = np.zeros_like(lin.weight)  # the copy's own weight, repacked; the original untouched
        assert not np.array_equal(back(x), want)
        np.testing.assert_array_equal(enc(x), want)


@pytest.mark.parametrize("field,value", [("dtype", ["F32"]), ("dtype", {"x": 1}), ("shape", [3, 4.0]),
                                         ("shape", [2 ** 62, 2 ** 62, 4]), ("shape", [3, True, 4]), ("shape", "34"),
                                         ("data_offsets", ["0", "48"]), ("data_offsets", [0, 48, 96]),
                                         ("data_offsets", [0.0, 48.0]), (None, [1, 2]), (None, "F32")])
def test_safetensors_corrupt_entries_are_value_errors(tmp_path, field, value):
    # A header entry of the wrong JSON type raised TypeError (a list as dtype, string offsets) or
    # OverflowError (a float dimension of 1e30) from inside the parser; a shape whose element count
    # overflows int64 could wrap around to one that fits its bytes. All SafetensorsError (ValueError).
    import json
    import struct
    path = tmp_path / "x.safetensors"
    st.save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4)}, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if field is None:
        header["a"] = value
    else:
        header["a"][field] = value
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    with pytest.raises(st.SafetensorsError, match="'a'"):
        st.load_file(path)


def test_assigning_a_parameter_keeps_it_a_float32_parameter(rng, tmp_path):
    # A torch tensor (or a list) assigned to a parameter became a plain attribute: the forward used it,
    # while state_dict() and save() kept the old array. Anything assigned to a parameter is now a float32
    # array in both; a float64 array too (it was kept float64 and saved as F64).
    torch = pytest.importorskip("torch")
    lin = nn.Linear(4, 3)
    x = randn(rng, 2, 4)
    lin.weight = torch.ones(3, 4)
    assert isinstance(lin.weight, np.ndarray) and lin.weight.dtype == np.float32
    assert lin.state_dict()["weight"] is lin.weight
    np.testing.assert_allclose(lin(x), x.sum(1, keepdims=True) + lin.bias, rtol=1e-6)
    lin.bias = [0.0, 1.0, 2.0]  # type: ignore[assignment]
    np.testing.assert_array_equal(lin.state_dict()["bias"], np.array([0, 1, 2], np.float32))
    lin.weight = np.full((3, 4), 2.0)  # float64
    assert lin.weight.dtype == np.float32
    lin.save(tmp_path / "l.safetensors")
    assert st.load_file(tmp_path / "l.safetensors")["weight"].dtype == np.float32
    with pytest.raises(TypeError, match="weight must be a real numeric array"):
        lin.weight = np.ones((3, 4), np.complex64)
    lin.bias = None  # a layer without a bias, as before
    assert "bias" not in lin.state_dict()
    lin.note = "a plain attribute"  # anything else that is not an array is not a parameter
    assert "note" not in lin.state_dict()
