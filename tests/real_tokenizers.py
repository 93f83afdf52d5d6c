"""Real tokenizer folders for the tests, built offline from llama.cpp's vocabulary files.

The llama-cpp-python sdist on PyPI vendors llama.cpp's ``models/ggml-vocab-*.gguf`` (the real
vocabularies of Llama-2/Vicuna, Phi-3, Llama-3, Qwen2, ...) with ``.inp``/``.out`` tokenizer test
strings beside them. From those this module builds tokenizer folders laid out as the published
checkpoints ship them:

- ``llava_v15()`` — the Llama-2/Vicuna SentencePiece tokenizer as LLaVA-1.5 checkpoints ship it
  (tokenizer.model + the published tokenizer_config.json + special_tokens_map.json of
  tests/fixtures/genuine/llava-v1.5-7b, ``legacy: false``, no tokenizer.json); ``llava_v15(fast=True)`` adds the tokenizer.json that transformers 4.x's
  LlamaConverter writes (converted by transformers 4.37.2 itself, in the LLaVA venv), as Vicuna-era
  fast checkpoints ship it; ``llava_v15_resaved_by_transformers5()`` is that folder after a
  transformers 5 load + save (the third layout: differs from the original, see tests/test_real_tokenizers.py).
- ``phi3()`` — Phi-3's SentencePiece tokenizer (tokenizer.model + 4.x tokenizer.json + its added
  tokens and chat template).
- ``llama3()`` and ``qwen2()`` — byte-level BPE tokenizer.json in the published layout (pre-tokenizer
  regex, ByteLevel, added special tokens) with the instruct models' chat templates.

Everything is built once and cached in ~/.cache/mmzoo-tests/real-tokenizers (``MMZOO_REAL_TOKENIZERS``
overrides); the only network access is ``pip download`` of the sdist from the package index.
``llama_cpp_cases(name)`` gives llama.cpp's test strings with their expected ids.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import time_bound

SDIST = "llama-cpp-python==0.3.36"
VOCABS = ("llama-spm", "phi-3", "llama-bpe", "qwen2")
SEPARATOR = "\n__ggml_vocab_test__\n"
BUILD_VERSION = "1"  # bump when the folders built here change, so caches are rebuilt


def cache_root() -> Path:
    root = Path(os.environ.get("MMZOO_REAL_TOKENIZERS") or Path.home() / ".cache" / "mmzoo-tests" / "real-tokenizers")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished build into place (another process may have won the race: keep theirs)."""
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- llama.cpp's vocabulary files ----------------------------------------------------------------
def vocab_dir() -> Path:
    """The ggml-vocab-*.gguf files (+ .inp/.out) of ``VOCABS``, extracted from the sdist once."""
    final = cache_root() / "llama.cpp-models"
    if final.is_dir():
        return final
    with tempfile.TemporaryDirectory(dir=cache_root()) as work:
        with time_bound.paused():  # a download, once, bounded by itself: not the test's time
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", SDIST, "-d", work],
                check=True, capture_output=True, timeout=time_bound.SET_UP_BOUND_S,
            )
        sdist = next(Path(work).glob("llama_cpp_python-*.tar.gz"))
        out = Path(work) / "models"
        out.mkdir()
        wanted = {f"ggml-vocab-{name}.gguf{ext}" for name in VOCABS for ext in ("", ".inp", ".out")}
        with tarfile.open(sdist) as tar:
            for member in tar:
                if member.isfile() and "/vendor/llama.cpp/models/" in member.name and Path(member.name).name in wanted:
                    (out / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        missing = wanted - {p.name for p in out.iterdir()}
        assert not missing, f"the sdist lacks {sorted(missing)}"
        tmp = cache_root() / f".models-{os.getpid()}"
        shutil.move(str(out), tmp)
    return _publish(tmp, final)


def llama_cpp_cases(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test strings for vocabulary ``name`` with the ids it expects (no BOS)."""
    folder = vocab_dir()
    inputs = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
    outputs = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    inputs[-1] = inputs[-1].removesuffix("\n__ggml_vocab_test__").removesuffix(SEPARATOR.rstrip("\n"))
    cases = [(text, [int(t) for t in ids.split()]) for text, ids in zip(inputs, outputs)]
    assert len(cases) >= 40, f"unexpected test file layout for {name}"
    return cases


def _gguf_vocab(name: str) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(vocab_dir() / f"ggml-vocab-{name}.gguf"))

    def array(key: str) -> list:
        field = reader.fields.get(key)
        if field is None:
            return []
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]

    chat = reader.fields.get("tokenizer.chat_template")
    return {
        "tokens": array("tokenizer.ggml.tokens"),
        "scores": array("tokenizer.ggml.scores"),
        "types": array("tokenizer.ggml.token_type"),
        "merges": array("tokenizer.ggml.merges"),
        "chat_template": chat.contents() if chat is not None else None,
    }


# -- SentencePiece (Llama-2 / Vicuna / Phi-3) ----------------------------------------------------
def _sentencepiece_model(name: str, pieces: int) -> bytes:
    """tokenizer.model rebuilt from the GGUF pieces, scores and types with Llama-2's settings."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    vocab = _gguf_vocab(name)
    model = pb.ModelProto()
    for i in range(pieces):
        piece = model.pieces.add()
        piece.piece, piece.score = vocab["tokens"][i], vocab["scores"][i]
        piece.type = vocab["types"][i] if i > 2 else (pb.ModelProto.SentencePiece.UNKNOWN if i == 0 else pb.ModelProto.SentencePiece.CONTROL)
    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = pieces
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.max_sentencepiece_length = 16
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.unk_surface = " \u2047 "
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def _added(content: str, *, special: bool = True, rstrip: bool = False, normalized: bool = False) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": rstrip, "single_word": False, "special": special}


def _token_map(content: str) -> dict:
    """An AddedToken as special_tokens_map.json holds it."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def llava_python() -> str:
    """The interpreter of the original LLaVA code's venv (transformers 4.37.2), built once."""
    from side_env import llava_python as side_llava_python

    return side_llava_python()


def run_in_llava_env(*args: str, timeout: int = 600) -> str:
    """Run the LLaVA venv's python (transformers 4.37.2) with ``args``; its stdout. PYTHONPATH is
    dropped so that the venv's own packages are imported, not this checkout's."""
    from side_env import clean_env

    proc = subprocess.run([llava_python(), *args], capture_output=True, text=True, env=clean_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def last_json_line(stdout: str):
    """The JSON a helper script printed last (libraries may print warnings before it)."""
    return json.loads(stdout.strip().splitlines()[-1])


CONVERT_WITH_4X = """
import sys
from transformers import LlamaTokenizer, LlamaTokenizerFast
slow = LlamaTokenizer.from_pretrained(sys.argv[1])
fast = LlamaTokenizerFast.from_pretrained(sys.argv[1], from_slow=True, legacy=slow.legacy)
fast.backend_tokenizer.save(sys.argv[2])
"""


def _convert_4x(folder: Path) -> None:
    """tokenizer.json as transformers 4.37.2's LlamaConverter writes it (run in the LLaVA venv)."""
    run_in_llava_env("-c", CONVERT_WITH_4X, str(folder), str(folder / "tokenizer.json"))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _build(name: str, make) -> Path:
    final = cache_root() / f"{name}-v{BUILD_VERSION}"
    if not (final / "tokenizer_config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_root()))
        make(tmp)
        shutil.rmtree(final, ignore_errors=True)
        _publish(tmp, final)
    return final


GENUINE_LLAVA_V15 = Path(__file__).parent / "fixtures" / "genuine" / "llava-v1.5-7b"


def _make_llava_v15(folder: Path) -> None:
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model("llama-spm", 32000))
    # the tokenizer_config.json / special_tokens_map.json that LLaVA-1.5's train.py publishes (transformers 4.31
    # era); where they come from: tests/fixtures/genuine/README.md
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(GENUINE_LLAVA_V15 / name, folder / name)


def _make_llava_v15_fast(folder: Path) -> None:
    _make_llava_v15(folder)
    _convert_4x(folder)


def llava_v15(fast: bool = False) -> Path:
    """The LLaVA-1.5 / Vicuna-7B-v1.5 tokenizer (Llama-2 SentencePiece, 32 000 pieces, legacy: false)."""
    return _build("llava-v1.5-7b-fast" if fast else "llava-v1.5-7b", _make_llava_v15_fast if fast else _make_llava_v15)


def _make_llava_v15_resaved(folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(llava_v15(fast=True)).save_pretrained(folder)


def llava_v15_resaved_by_transformers5() -> Path:
    """The LLaVA-1.5 tokenizer after a transformers 5 load + save_pretrained (the installed 5.x): what a
    user gets from ``tokenizer.save_pretrained`` in a 5.x script. Not what checkpoints ship."""
    import transformers

    return _build(f"llava-v1.5-7b-resaved-by-transformers-{transformers.__version__}", _make_llava_v15_resaved)


PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>",
              "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def _make_phi3(folder: Path) -> None:
    vocab = _gguf_vocab("phi-3")
    assert vocab["tokens"][32000:32011] == PHI3_ADDED
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model("phi-3", 32000))
    # microsoft/Phi-3-mini-4k-instruct: the chat tokens 32001..32010 have rstrip: true, </s> is not special.
    decoder = {"0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>", special=False, rstrip=True)}
    for offset, content in enumerate(PHI3_ADDED):
        decoder[str(32000 + offset)] = _added(content, rstrip=content != "<|endoftext|>")
    config = {
        "add_bos_token": True,  # the GGUF's tokenizer.ggml.add_bos_token
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "chat_template": vocab["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {
        "bos_token": _token_map("<s>"), "eos_token": _token_map("<|endoftext|>"), "pad_token": _token_map("<|endoftext|>"),
        "unk_token": _token_map("<unk>"),
    })
    _convert_4x(folder)  # reads added_tokens_decoder, so tokenizer.json carries the chat tokens too


def phi3() -> Path:
    """Phi-3-mini's tokenizer (Llama-2 SentencePiece pieces + 11 chat tokens, legacy: false)."""
    return _build("phi-3", _make_phi3)


# -- byte-level BPE (Llama-3, Qwen2) -------------------------------------------------------------
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_CHAT_TEMPLATE = (  # meta-llama/Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _byte_level_tokenizer(name: str, split: str, bos: str | None, normalize_nfc: bool):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = _gguf_vocab(name)
    special = [i for i, t in enumerate(vocab["types"]) if t == 3]
    regular = {t: i for i, t in enumerate(vocab["tokens"]) if vocab["types"][i] == 1}
    merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
    tok = Tokenizer(BPE(vocab=regular, merges=merges, ignore_merges=name == "llama-bpe"))
    if normalize_nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    if bos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos_id = vocab["tokens"].index(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]),
        ])
    added = [AddedToken(vocab["tokens"][i], special=True, normalized=False) for i in special]
    tok.add_special_tokens(added)
    assert all(tok.token_to_id(vocab["tokens"][i]) == i for i in special)
    return tok, vocab, {str(i): _added(vocab["tokens"][i]) for i in special}


def _make_llama3(folder: Path) -> None:
    tok, _, decoder = _byte_level_tokenizer("llama-bpe", LLAMA3_SPLIT, "<|begin_of_text|>", normalize_nfc=False)
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": decoder,
        "bos_token": "<|begin_of_text|>",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    _write_json(folder / "special_tokens_map.json", {"bos_token": _token_map("<|begin_of_text|>"), "eos_token": _token_map("<|eot_id|>")})


def llama3() -> Path:
    """Meta-Llama-3-8B-Instruct's tokenizer (128 000 byte-level BPE tokens + 256 special)."""
    return _build("llama-3", _make_llama3)


def _make_qwen2(folder: Path) -> None:
    tok, vocab, decoder = _byte_level_tokenizer("qwen2", QWEN2_SPLIT, None, normalize_nfc=True)
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": vocab["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": _token_map("<|im_end|>"), "pad_token": _token_map("<|endoftext|>"),
    })


def qwen2() -> Path:
    """Qwen2-7B-Instruct's tokenizer (151 643 byte-level BPE tokens + <|endoftext|>, <|im_start|>, <|im_end|>)."""
    return _build("qwen2", _make_qwen2)


REAL_TOKENIZERS = {"llava-v1.5": lambda: llava_v15(fast=True), "phi-3": phi3, "llama-3": llama3, "qwen2": qwen2}
LLAMA_CPP_VOCAB = {"llava-v1.5": "llama-spm", "phi-3": "phi-3", "llama-3": "llama-bpe", "qwen2": "qwen2"}
