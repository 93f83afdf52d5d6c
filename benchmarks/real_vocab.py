"""Real LLM vocabularies for benchmarks, offline: Llama-2/Vicuna (32 000 SentencePiece pieces) and Qwen2
(151 646 tokens; 151 936 embedding rows as in Qwen2-0.5B/1.5B) from the GGUF vocabulary files that
llama.cpp ships for its tokenizer tests, inside the llama-cpp-python source distribution on PyPI
(no model weights are downloaded).

  pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sdist
  python benchmarks/real_vocab.py /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -o vocab   # vocab/llama-2, vocab/qwen2

transformers' GGUF loader (needs the `gguf` package) turns each into a fast tokenizer folder. Known
difference: for Llama-2 it tokenizes text that starts with whitespace differently from the original
slow tokenizer (see the project's notes); token counts, which is what a throughput benchmark needs, agree.
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

VOCABS = {"llama-2": "ggml-vocab-llama-spm.gguf", "qwen2": "ggml-vocab-qwen2.gguf"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sdist", type=Path, help="llama-cpp-python-*.tar.gz")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    with tarfile.open(args.sdist) as tar, tempfile.TemporaryDirectory() as tmp:
        members = {Path(m.name).name: m for m in tar.getmembers() if "/vendor/llama.cpp/models/" in m.name}
        for name, file in VOCABS.items():
            if file not in members:
                print(f"real_vocab: error: {file} is not in {args.sdist}", file=sys.stderr)
                return 2
            tar.extract(members[file], tmp, filter="data")
            path = Path(tmp) / members[file].name
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            tok.save_pretrained(args.out / name)
            print(f"{args.out / name}: {type(tok).__name__}, {len(tok)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
