"""MPNet (all-mpnet-base-v2's architecture) against transformers on random small checkpoints, and an
MPNet sentence-transformers folder against sentence-transformers."""

import numpy as np
import pytest

from coreformer.models import MPNetModel, SentenceEncoder
from coreformer.models.mpnet import relative_position_bucket

from conftest import minilm_tokenizer_into, rel_err, save_randomised

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def saved(model, path, seed=0):
    with torch.no_grad():  # a position bias large enough to matter
        model.encoder.relative_attention_bias.weight.mul_(10)
    return save_randomised(model, path, seed)


def test_relative_position_buckets_match_transformers():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    rel = np.arange(-5000, 5001)
    want = MPNetEncoder.relative_position_bucket(torch.tensor(rel)).numpy()
    np.testing.assert_array_equal(relative_position_bucket(rel), want)


def test_mpnet_matches_transformers(tmp_path):
    cfg = transformers.MPNetConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=40, max_position_embeddings=300)
    ref = transformers.MPNetModel(cfg)
    d = saved(ref, tmp_path / "m")
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(3, 97, (3, 200)), np.ones((3, 200), np.int64)  # distances past 128: the far buckets
    ids[1, 150:], mask[1, 150:] = 1, 0
    ids[2, :40], mask[2, :40] = 1, 0  # left padding
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask))
    got = MPNetModel.from_pretrained(d)(ids, mask)
    real = mask.astype(bool)
    assert rel_err(got.last_hidden_state[real], want.last_hidden_state.numpy()[real]) < 1e-5
    assert not got.last_hidden_state[~real].any()
    assert rel_err(got.pooler_output[:2], want.pooler_output.numpy()[:2]) < 1e-5
    with pytest.raises(ValueError, match="CPU only"):
        MPNetModel.from_pretrained(d).to("cuda")


def test_mpnet_sentence_encoder(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    tdir = minilm_tokenizer_into(tmp_path / "mpnet")
    cfg = transformers.MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=40, max_position_embeddings=130)
    saved(transformers.MPNetModel(cfg), tdir, seed=1)
    from sentence_transformers import models
    ref = st.SentenceTransformer(modules=[models.Transformer(str(tdir), max_seq_length=128),
                                          models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    sd = tmp_path / "st"
    ref.save(str(sd))
    sents = ["hello world", "the quick brown fox jumps over the lazy dog", "word " * 200, ""]
    got, want = SentenceEncoder.from_pretrained(sd).encode(sents), ref.encode(sents)
    assert (got * want).sum(axis=1).min() > 0.99999
