"""Tokenizer and chat-template files a checkpoint carries are read within bounds: a huge one is one error line
naming it, before anything (mmzoo or transformers) reads it. Sparse files: the size is real, the disk use is not."""
from __future__ import annotations

import os

import pytest

from mmzoo.errors import ConfigError
from mmzoo.io.structured import MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, check_tokenizer_file, read_tokenizer_text
from robust_helpers import assert_one_line, run_main


def sparse(path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("name,size", [("chat_template.jinja", MAX_CONFIG_BYTES + 1),
                                       ("tokenizer_config.json", MAX_CONFIG_BYTES + 1),
                                       ("tokenizer.json", MAX_TOKENIZER_BYTES + 1)])
def test_an_oversized_tokenizer_file_is_one_line(hf_copy, tmp_path, capsys, name, size):
    sparse(hf_copy / name, size)
    for args in (["inspect", hf_copy], ["convert", hf_copy, "-o", tmp_path / "out", "--tgt-fmt", "internal"]):
        code, err = run_main(capsys, *args)
        assert_one_line(code, err, name, f"{size:,} bytes")
    assert not (tmp_path / "out").exists()


def test_vocabulary_files_get_the_larger_cap(tmp_path):
    vocabulary, config = tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json"
    sparse(vocabulary, MAX_CONFIG_BYTES + 1)  # 64 MiB + 1: a large real vocabulary, accepted
    assert check_tokenizer_file(vocabulary) == vocabulary
    sparse(config, MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match="tokenizer_config.json may have"):
        check_tokenizer_file(config)


def test_tokenizer_text_that_is_not_a_regular_file_or_not_utf8_is_refused(tmp_path):
    fifo = tmp_path / "chat_template.jinja"
    os.mkfifo(fifo)  # open() would block forever
    with pytest.raises(Exception, match="named pipe"):
        read_tokenizer_text(fifo)
    bad = tmp_path / "tokenizer_config.json"
    bad.write_bytes(b'{"chat_template": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_tokenizer_text(bad)
