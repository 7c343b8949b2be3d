"""RoBERTa-base-, DistilBERT-base- and MPNet-base-shaped encoders (random weights) against transformers on a padded
batch of 8 x <= 128 tokens, 2 threads each, alternated for 5 rounds; prints the median times and the
largest difference of the hidden states at real tokens.

    python bench/encoders_vs_transformers.py
"""
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
import transformers

import coreformer
from coreformer.models import DistilBertModel, MPNetModel, RobertaModel


def main():
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    coreformer.set_num_threads(2)
    rng = np.random.default_rng(0)
    for name, hf, ours_cls in (("roberta-base shape", transformers.RobertaModel(transformers.RobertaConfig()),
                                RobertaModel),
                               ("distilbert-base shape", transformers.DistilBertModel(transformers.DistilBertConfig()),
                                DistilBertModel),
                               ("mpnet-base shape", transformers.MPNetModel(transformers.MPNetConfig()), MPNetModel)):
        d = tempfile.mkdtemp()
        hf.eval().save_pretrained(d)
        ours = ours_cls.from_pretrained(d)
        ids, mask = rng.integers(5, 30000, (8, 128)), np.ones((8, 128), np.int64)
        for i, n in enumerate(rng.integers(64, 129, 8)):
            ids[i, n:], mask[i, n:] = hf.config.pad_token_id, 0
        ti, tm = torch.tensor(ids), torch.tensor(mask)

        def theirs():
            with torch.inference_mode():
                return hf(input_ids=ti, attention_mask=tm)

        real = mask.astype(bool)
        diff = np.abs(ours(ids, mask).last_hidden_state[real] - theirs().last_hidden_state.numpy()[real]).max()
        a, b = [], []
        for _ in range(5):
            time.sleep(0.3)
            t = time.perf_counter()
            ours(ids, mask)
            a.append(time.perf_counter() - t)
            time.sleep(0.3)
            t = time.perf_counter()
            theirs()
            b.append(time.perf_counter() - t)
        print(f"{name}, 8 x <= 128 ({mask.sum()} real tokens): coreformer {statistics.median(a) * 1e3:.0f} ms, "
              f"transformers {statistics.median(b) * 1e3:.0f} ms, {statistics.median(b) / statistics.median(a):.2f}x; "
              f"max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
