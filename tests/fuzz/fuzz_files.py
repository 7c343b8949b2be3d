"""Coverage-guided fuzzing (atheris, libFuzzer) of everything coreformer reads from files: safetensors
headers and data, config.json of every model family, the tokenizer files, sentence-transformers' JSON
files, whole checkpoints and generation_config.json.

    python tests/fuzz/fuzz_files.py TARGET [libFuzzer flags] [CORPUS_DIR...]
    python tests/fuzz/fuzz_files.py --all --seconds 20      (CI: every target on a copy of its corpus)
    python tests/fuzz/fuzz_files.py --replay                (the corpus once, address space capped)

A target turns the fuzzer's bytes into a file (the first byte picks which file of which seed folder,
for targets that have several), loads it as a user would and uses what loaded (an encode, a few
generated tokens). Every input must end in a load or in ValueError / FileNotFoundError / IndexError:
anything else raised is a finding, as are a crash, a hang (-timeout) and an allocation beyond what a
file of a few KB implies (the address space is capped 1 GiB above the harness's own). Findings become
files in tests/fuzz/corpus/<target>/ (with the fix), so tests/test_fuzz_corpus.py replays them in every
test run, under the sanitizers too. Seeds: tests/fuzz/seeds/ (tests/fuzz/make_seeds.py).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
CORPUS = os.path.join(HERE, "corpus")
ALLOWED = (ValueError, FileNotFoundError, IndexError)
FAMILIES = ["bert", "roberta", "distilbert", "mpnet", "gpt2"]
TOKENIZER_FILES = [("wordpiece", "tokenizer.json"), ("wordpiece", "vocab.txt"), ("wordpiece", "tokenizer_config.json"),
                   ("wordpiece", "special_tokens_map.json"), ("bpe", "vocab.json"), ("bpe", "merges.txt")]
SENTENCE_FILES = ["modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer_config.json",
                  "config.json"]
# (folder, file) of every JSON file a load reads, for the structure-aware target
JSON_FILES = [(m, "config.json") for m in FAMILIES] + [("gpt2", "generation_config.json")] + [
    ("sentence", f) for f in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                              "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")]


class Workspace:
    """A private copy of the seed folders; `replaced(folder, file, data)` swaps one file's bytes in for one
    call (a deleted file when data is None) and puts the original back."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="coreformer-fuzz-")
        shutil.copytree(SEEDS, os.path.join(self.root, "seeds"))

    def path(self, folder: str) -> str:
        return os.path.join(self.root, "seeds", folder)

    def run(self, folder: str, file: str, data: bytes, use: Callable[[str], object]) -> None:
        target = os.path.join(self.path(folder), file)
        with open(target, "rb") as f:
            original = f.read()
        try:
            with open(target, "wb") as f:
                f.write(data)
            use(self.path(folder))
        finally:
            with open(target, "wb") as f:
                f.write(original)


_ws: Workspace | None = None


def ws() -> Workspace:
    global _ws
    if _ws is None:
        _ws = Workspace()
    return _ws


def pick(data: bytes, n: int) -> tuple[int, bytes]:
    """The first byte chooses one of n; the rest is the file."""
    return (data[0] % n, data[1:]) if data else (0, b"")


class Bytes:
    """Reads the fuzzer's bytes as a stream of small decisions (atheris' FuzzedDataProvider without
    atheris, so the corpus replays anywhere)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def more(self) -> bool:
        return self.at < len(self.data)

    def take(self, n: int) -> bytes:
        out = self.data[self.at:self.at + n]
        self.at += n
        return out.ljust(n, b"\0")

    def byte(self) -> int:
        return self.take(1)[0]


def json_value(b: Bytes, depth: int = 0) -> object:
    """A JSON value of a kind chosen by the bytes: edge-case numbers, strings, lists, objects."""
    import struct
    kind = b.byte() % 9
    if kind == 0:
        return struct.unpack("<q", b.take(8))[0] >> (b.byte() % 64)   # any int64, or a small one
    if kind == 1:
        return [0, 1, -1, 2, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30, 7][b.byte() % 9]
    if kind == 2:
        return struct.unpack("<d", b.take(8))[0]                       # any double: NaN and inf too
    if kind == 3:
        return b.take(b.byte() % 16).decode("latin-1")
    if kind == 4:
        return bool(b.byte() & 1)
    if kind == 5:
        return None
    if kind == 6 and depth < 2:
        return [json_value(b, depth + 1) for _ in range(b.byte() % 4)]
    if kind == 7 and depth < 2:
        return {b.take(b.byte() % 8).decode("latin-1"): json_value(b, depth + 1) for _ in range(b.byte() % 3)}
    return ["gelu", "relu", "mean", "cls", "[PAD]", "bert", "gpt2", "float32"][b.byte() % 8]


def mutate_json(seed: object, b: Bytes) -> object:
    """The seed JSON with fields replaced, removed or added as the bytes say (a list seed: its items)."""
    import copy
    obj = copy.deepcopy(seed)
    for _ in range(1 + b.byte() % 4):
        if not b.more():
            break
        if isinstance(obj, dict):
            keys = list(obj)
            i = b.byte() % (len(keys) + 1)
            key = keys[i] if i < len(keys) else b.take(b.byte() % 12).decode("latin-1")
            if key in obj and b.byte() % 8 == 0:
                del obj[key]
            elif key in obj and isinstance(obj[key], (dict, list)) and b.byte() % 2:
                obj[key] = mutate_json(obj[key], b)
            else:
                obj[key] = json_value(b)
        elif isinstance(obj, list) and obj:
            i = b.byte() % len(obj)
            obj[i] = mutate_json(obj[i], b) if isinstance(obj[i], (dict, list)) and b.byte() % 2 else json_value(b)
        else:
            obj = json_value(b)
    return obj


def use_model(folder: str) -> None:
    import numpy as np
    from coreformer.models import BertModel, DistilBertModel, GPT2LMHeadModel, MPNetModel, RobertaModel
    cls: Any = {"bert": BertModel, "roberta": RobertaModel, "distilbert": DistilBertModel, "mpnet": MPNetModel,
           "gpt2": GPT2LMHeadModel}[os.path.basename(folder)]
    model = cls.from_pretrained(folder)
    ids = np.array([[2, 5, 7, 3]])
    if cls is GPT2LMHeadModel:
        model.generate(ids, max_new_tokens=3)
    else:
        model(ids, np.array([[1, 1, 1, 0]]))


def use_tokenizer(folder: str) -> None:
    from coreformer import Tokenizer
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode("hello world, the cat sat")
    tok.decode(ids)
    tok(["hello", "the dog ran in the park"], max_length=8)


def use_sentence(folder: str) -> None:
    from coreformer.models import SentenceEncoder
    SentenceEncoder.from_pretrained(folder).encode(["hello world", "the cat"])


def target_safetensors(data: bytes) -> None:
    from coreformer import safetensors
    path = os.path.join(ws().root, "x.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    tensors = safetensors.load_file(path)
    # views into the mapping, or float32 widenings of 16-bit data: never more than twice the file
    assert sum(a.nbytes for a in tensors.values()) <= 2 * len(data), "load_file made more than the file holds"


def target_config(data: bytes) -> None:
    i, body = pick(data, len(FAMILIES))
    ws().run(FAMILIES[i], "config.json", body, use_model)


def target_checkpoint(data: bytes) -> None:
    i, body = pick(data, len(FAMILIES))
    ws().run(FAMILIES[i], "model.safetensors", body, use_model)


def target_tokenizer(data: bytes) -> None:
    i, body = pick(data, len(TOKENIZER_FILES))
    folder, file = TOKENIZER_FILES[i]
    ws().run(folder, file, body, use_tokenizer)


def target_sentence(data: bytes) -> None:
    i, body = pick(data, len(SENTENCE_FILES))
    ws().run("sentence", SENTENCE_FILES[i], body, use_sentence)


def target_generation_config(data: bytes) -> None:
    ws().run("gpt2", "generation_config.json", data, use_model)


def target_json_fields(data: bytes) -> None:
    """Structure-aware: valid JSON files whose fields hold what the bytes choose (random bytes rarely
    stay JSON, so the byte-level targets seldom reach the checks of the values)."""
    import json
    b = Bytes(data)
    folder, file = JSON_FILES[b.byte() % len(JSON_FILES)]
    with open(os.path.join(SEEDS, folder, file)) as f:
        seed = json.load(f)
    body = json.dumps(mutate_json(seed, b)).encode()
    use = {"sentence": use_sentence}.get(folder, use_model)
    ws().run(folder, file, body, use)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "safetensors": target_safetensors, "config": target_config, "checkpoint": target_checkpoint,
    "tokenizer": target_tokenizer, "sentence": target_sentence, "generation_config": target_generation_config,
    "json_fields": target_json_fields,
}


def check(target: str, data: bytes) -> None:
    """One input through one target: returns, or raises an allowed error; anything else propagates."""
    try:
        TARGETS[target](data)
    except ALLOWED:
        pass


def cap_address_space(headroom: int = 1 << 30) -> None:
    import resource
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.RLIM_INFINITY))


def fuzz(target: str, argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]
    os.environ["RUST_BACKTRACE"] = "0"  # a tokenizers panic (caught: a ValueError) prints its message only
    with atheris.instrument_imports(include=["coreformer"]):
        import coreformer.models  # noqa: F401  (instrumented for coverage)
        import coreformer.safetensors  # noqa: F401
        import coreformer.tokenizer  # noqa: F401
    ws()
    cap_address_space()
    atheris.Setup([sys.argv[0], *argv], lambda data: check(target, data))
    atheris.Fuzz()


def fuzz_all(seconds: int) -> int:
    """Every target for `seconds` on a scratch copy of its corpus (the checked-in corpus is not changed);
    what a crash leaves is copied to ./fuzz-findings/."""
    import subprocess
    failed = []
    for target in TARGETS:
        with tempfile.TemporaryDirectory() as scratch:
            corpus = os.path.join(scratch, "corpus")
            shutil.copytree(os.path.join(CORPUS, target), corpus)
            findings = os.path.abspath(os.path.join("fuzz-findings", target))
            os.makedirs(findings, exist_ok=True)
            r = subprocess.run([sys.executable, __file__, target, f"-max_total_time={seconds}", "-timeout=20",
                                "-rss_limit_mb=3072", "-max_len=16384", f"-artifact_prefix={findings}/", corpus],
                               capture_output=True, text=True)
            stats = [line for line in r.stderr.splitlines() if line.startswith("#") and "DONE" in line]
            print(f"fuzz {target}: rc {r.returncode}; {stats[-1] if stats else r.stderr[-300:]}", flush=True)
            if r.returncode != 0:
                print(r.stderr[-6000:])
                failed.append(target)
            else:
                shutil.rmtree(findings, ignore_errors=True)
    print("fuzz: " + (f"FINDINGS in {', '.join(failed)} (inputs in ./fuzz-findings/)" if failed else "no finding"))
    return 1 if failed else 0


def replay() -> int:
    """Every corpus input through its target with the address space capped, as the fuzzer runs them."""
    ws()
    cap_address_space()
    bad = 0
    for target in TARGETS:
        for name in sorted(os.listdir(os.path.join(CORPUS, target))):
            with open(os.path.join(CORPUS, target, name), "rb") as f:
                data = f.read()
            try:
                check(target, data)
            except BaseException as e:  # noqa: BLE001 - reported, then the exit status says so
                bad += 1
                print(f"{target}/{name}: {type(e).__name__}: {e}"[:1000])
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--replay":
        sys.exit(replay())
    if len(sys.argv) >= 2 and sys.argv[1] == "--all":
        seconds = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 20
        sys.exit(fuzz_all(seconds))
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer flags] [CORPUS_DIR...] | --all [--seconds N]; "
                 f"targets: {', '.join(TARGETS)}")
    fuzz(sys.argv[1], sys.argv[2:])
