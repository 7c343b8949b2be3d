"""The ``coreformer`` command: ``bench`` (kernel and model benchmarks against numpy, PyTorch and other
engines), ``info``, and the model commands ``embed``, ``generate`` and ``classify`` on local folders."""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="coreformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="time the kernels against numpy and any installed peers")
    b.add_argument("--quick", action="store_true", help="fewer shapes and rounds: under a minute")
    b.add_argument("--json", metavar="PATH", help="also write every sample and the environment to PATH")
    b.add_argument("--threads", type=int, default=None, help="threads for coreformer and torch (default: all)")
    b.add_argument("--rounds", type=int, default=None, help="timing rounds per case (default 7; 3 with --quick)")
    b.add_argument("--ops", default=None,
                   help="comma-separated subset of: copy, linear, attention, mha, encoder_layer, "
                        "additive_attention, layer_norm, softmax, gelu, relu, embedding")
    b.add_argument("--models", action="store_true",
                   help="model benchmarks instead: MiniLM encoding, GPT-2 small decode and prefill, against "
                        "PyTorch/transformers, ONNX Runtime and CTranslate2 where installed")
    b.add_argument("--train", action="store_true",
                   help="training instead: the backward kernels and AdamW against torch's autograd, and whole "
                        "training steps (char GPT, a MiniLM-shaped classifier, GPT-2 small) against "
                        "transformers + torch")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the GPU kernels against PyTorch on the same GPU (attention TFLOP/s, linear, "
                        "memory-bound ops against the copy rate)")
    b.add_argument("-v", "--verbose", action="store_true", help="report each case as it finishes")

    sub.add_parser("info", help="version, SIMD path, threads, OpenMP and CUDA")

    e = sub.add_parser("embed", help="sentence embeddings from a sentence-transformers (or BERT) folder")
    e.add_argument("--model", required=True, help="local model folder")
    e.add_argument("text", nargs="+", help="texts to embed; - reads one text per line from stdin")
    e.add_argument("--out", help="write the (N, dim) float32 array to this .npy file instead of printing it")
    e.add_argument("--batch-size", type=int, default=32)

    g = sub.add_parser("generate", help="continue a prompt with a GPT-2 folder, streaming the text")
    g.add_argument("--model", required=True, help="local model folder (config.json, model.safetensors, tokenizer)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=50)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)

    c = sub.add_parser("classify", help="label texts with a BERT sequence-classification folder")
    c.add_argument("--model", required=True, help="local model folder")
    c.add_argument("text", nargs="+")
    c.add_argument("--pair", nargs="+", metavar="TEXT",
                   help="a second segment for each text, for classifiers of sentence pairs (NLI, cross-encoders)")
    for p in (e, g, c):
        p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (a build with CUDA and a GPU)")
        p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                       help="the weights' dtype on a GPU (default float32)")

    args = parser.parse_args(argv)
    if args.command == "info":
        import coreformer
        print(json.dumps(coreformer.info(), indent=2))
        return 0
    if args.command in ("embed", "generate", "classify"):
        try:
            return {"embed": _embed, "generate": _generate, "classify": _classify}[args.command](args)
        except (FileNotFoundError, ValueError, IndexError, TypeError, ImportError, RuntimeError) as err:
            print(f"coreformer {args.command}: error: {err}", file=sys.stderr)
            return 1
    if args.command == "bench":
        if args.threads is not None and not 1 <= args.threads <= 4096:
            parser.error("--threads must be between 1 and 4096")
        if args.rounds is not None and args.rounds < 1:  # -1 ran the whole setup, then failed in the median
            parser.error(f"--rounds must be at least 1, got {args.rounds}")
        if args.ops and (args.models or args.train or args.device == "cuda"):  # say so before minutes of timing
            parser.error("--ops picks CPU kernel cases; it does not apply to --models, --train or --device cuda")
        if args.train and (args.models or args.device == "cuda"):
            parser.error("--train runs on the CPU and is its own table: not with --models or --device cuda")
        if args.json:  # checked now, not after minutes of timing
            parent = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(parent):
                parser.error(f"--json: folder {parent} does not exist")
            if os.path.isdir(args.json) or not os.access(parent, os.W_OK):
                parser.error(f"--json: cannot write {args.json}")
        from . import bench
        try:
            return bench.main(args)
        except ValueError as e:
            parser.error(str(e))
    return 2


def _embed(args) -> int:
    import numpy as np
    from .models import SentenceEncoder
    texts = args.text
    if texts == ["-"]:  # one text per line (a file of sentences: embed --out v.npy - < sentences.txt)
        texts = [line.rstrip("\r\n") for line in sys.stdin]
        if not texts:
            raise ValueError("no text on stdin")
    encoder = SentenceEncoder.from_pretrained(args.model).to(args.device, args.dtype)
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    if args.out:
        np.save(args.out, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {args.out}", file=sys.stderr)
    else:
        for v in vectors:
            print(" ".join(f"{x:.6f}" for x in v))
    return 0


def _generate(args) -> int:
    from .models import GPT2LMHeadModel
    from .tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(args.model)
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype="float32" if args.device == "cpu" else None)
    model.to(args.device, args.dtype)
    ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt has no tokens")
    new: list[int] = []
    shown = ""

    def stream(step):  # decode everything so far and print what is new: multi-byte characters come whole
        nonlocal shown
        new.append(int(step[0]))
        text = tok.decode(new)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    sys.stdout.write(args.prompt)
    model.generate([ids], max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                   streamer=stream)
    sys.stdout.write(tok.decode(new)[len(shown):] + "\n")
    return 0


def _classify(args) -> int:
    import numpy as np
    from pathlib import Path
    from ._files import read_json
    from .models import (BertForSequenceClassification, DistilBertForSequenceClassification,
                         RobertaForSequenceClassification)
    from .models._common import class_for
    from .tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(args.model)
    cfg = read_json(Path(args.model) / "config.json", default={})
    kind = class_for(args.model, (BertForSequenceClassification, RobertaForSequenceClassification,
                                  DistilBertForSequenceClassification), "coreformer classify")
    model = kind.from_pretrained(args.model).to(args.device, args.dtype)
    labels = cfg.get("id2label") or {}
    if args.pair is not None and len(args.pair) != len(args.text):
        raise ValueError(f"--pair takes one text per text: got {len(args.pair)} for {len(args.text)}")
    batch = tok(args.text, args.pair, max_length=model.max_tokens)
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for i, (text, row) in enumerate(zip(args.text, p)):
        k = int(row.argmax())
        pair = "" if args.pair is None else f"\t{args.pair[i]}"
        print(f"{labels.get(str(k), f'LABEL_{k}')}\t{row[k]:.4f}\t{text}{pair}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
