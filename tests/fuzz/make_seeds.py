"""Writes tests/fuzz/seeds/: the small, valid model and tokenizer folders the fuzz targets damage (run once;
the folders are committed, so the fuzzer and the corpus replay need neither torch nor transformers).

    python tests/fuzz/make_seeds.py [--corpus-only]    (needs torch, transformers, tokenizers)

Each model is a random tiny Hugging Face checkpoint saved by transformers (config.json +
model.safetensors); the tokenizers are trained on a few sentences (WordPiece and byte-level BPE), and
sentence/ is a sentence-transformers folder around the BERT one."""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
TEXT = ["the cat sat on the mat", "a dog ran in the park", "hello world", "fuzzing finds what tests miss",
        "coreformer loads checkpoints", "tokens and ids and back again"] * 4


def models():
    import torch
    import transformers as t
    torch.manual_seed(0)
    small = dict(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                 max_position_embeddings=24)
    made = {
        "bert": t.BertModel(t.BertConfig(**small)),
        "roberta": t.RobertaModel(t.RobertaConfig(**small, pad_token_id=1)),
        "mpnet": t.MPNetModel(t.MPNetConfig(**small, pad_token_id=1)),
        "distilbert": t.DistilBertModel(t.DistilBertConfig(vocab_size=64, dim=8, n_layers=1, n_heads=2,
                                                           hidden_dim=16, max_position_embeddings=24)),
        "gpt2": t.GPT2LMHeadModel(t.GPT2Config(vocab_size=64, n_embd=8, n_layer=1, n_head=2, n_positions=24,
                                               bos_token_id=0, eos_token_id=0)),
    }
    for name, m in made.items():
        d = os.path.join(SEEDS, name)
        shutil.rmtree(d, ignore_errors=True)
        m.eval().save_pretrained(d, safe_serialization=True)
    with open(os.path.join(SEEDS, "gpt2", "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 0, "max_new_tokens": 4}, f, indent=1)


def tokenizers_():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.implementations import ByteLevelBPETokenizer
    wp = os.path.join(SEEDS, "wordpiece")
    shutil.rmtree(wp, ignore_errors=True)
    os.makedirs(wp)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(
        vocab_size=64, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.save(os.path.join(wp, "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(wp, "vocab.txt"), "w") as out:
        out.write("".join(t + "\n" for t, _ in vocab))
    with open(os.path.join(wp, "tokenizer_config.json"), "w") as out:
        json.dump({"do_lower_case": True, "model_max_length": 24, "pad_token": "[PAD]"}, out, indent=1)
    with open(os.path.join(wp, "special_tokens_map.json"), "w") as out:
        json.dump({"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}, out,
                  indent=1)
    bpe_dir = os.path.join(SEEDS, "bpe")
    shutil.rmtree(bpe_dir, ignore_errors=True)
    os.makedirs(bpe_dir)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=300, min_frequency=1)
    bpe.save_model(bpe_dir)


def sentence():
    d = os.path.join(SEEDS, "sentence")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(SEEDS, "bert"), d)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(SEEDS, "wordpiece", name), d)
    os.makedirs(os.path.join(d, "1_Pooling"))
    with open(os.path.join(d, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
                  f, indent=1)
    with open(os.path.join(d, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}, f, indent=1)
    with open(os.path.join(d, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 16, "do_lower_case": False}, f, indent=1)


def corpus():
    """The starting corpus of each fuzz target: the seed files, behind the byte that picks their slot
    (tests/fuzz/fuzz_files.py). Findings are added beside them by hand, named for what they found."""
    import sys
    sys.path.insert(0, HERE)
    import fuzz_files as ff
    read = lambda *p: open(os.path.join(SEEDS, *p), "rb").read()  # noqa: E731
    seeds = {
        "safetensors": {f"seed-{m}": read(m, "model.safetensors") for m in ff.FAMILIES},
        "config": {f"seed-{m}": bytes([i]) + read(m, "config.json") for i, m in enumerate(ff.FAMILIES)},
        "checkpoint": {f"seed-{m}": bytes([i]) + read(m, "model.safetensors") for i, m in enumerate(ff.FAMILIES)},
        "tokenizer": {f"seed-{d}-{f}": bytes([i]) + read(d, f) for i, (d, f) in enumerate(ff.TOKENIZER_FILES)},
        "sentence": {"seed-" + f.replace("/", "-"): bytes([i]) + read("sentence", f)
                     for i, f in enumerate(ff.SENTENCE_FILES)},
        "generation_config": {"seed": read("gpt2", "generation_config.json")},
        # each JSON file untouched (a mutation count of 0 takes one byte of nothing: the seed as it is)
        "json_fields": {f"seed-{i}": bytes([i]) for i in range(len(ff.JSON_FILES))},
    }
    for target, files in seeds.items():
        d = os.path.join(ff.CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    os.makedirs(SEEDS, exist_ok=True)
    if "--corpus-only" not in sys.argv:
        models()
        tokenizers_()
        sentence()
    corpus()
    print("wrote", SEEDS, "and the seeds of", os.path.join(HERE, "corpus"))
