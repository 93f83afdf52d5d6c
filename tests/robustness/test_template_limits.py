"""A tokenizer's chat_template is untrusted code: it renders within limits or stops the run in one line."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from mmzoo.preprocess.template_limits import TemplateLimitError
from mmzoo.preprocess.templates import JinjaTemplate, Turn
from robust_helpers import assert_one_line, run_main

NS = "{% set ns = namespace(s='xxxxxxxx') %}"
HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string repeat": "{{ 'x' * 10**10 }}",
    "list repeat": "{{ ([1] * 10**9) | length }}",
    "huge power": "{{ 2 ** 10000000 }}",
    "method width": "{{ 'x'.ljust(10**10) }}",
    "filter width": "{{ 'x' | center(10**10) }}",
    "printf width": "{{ '%0999999999d' % 1 }}",
    "printf star": "{{ '%*d' % (999999999, 1) }}",
    "format filter": "{{ '%0999999999d' | format(1) }}",
    "str.format width": "{{ '{:0999999999}'.format(1) }}",
    "tilde doubling": "{% set s = 'xxxxxxxxxxxxxxxx' %}" + "{% set s = s ~ s %}" * 40 + "{{ s | length }}",
    "namespace doubling": NS + "{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "namespace tilde": NS + "{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "infinite macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "exponential macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "loops over a variable": "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% for k in r %}{% endfor %}{% endfor %}{% endfor %}",
    "recursive loop": "{% for x in [[1, 2]] * 3 recursive %}{{ loop([[1, 2]] * 3) }}{% endfor %}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_stops_in_bounded_time(name):
    start = time.perf_counter()
    with pytest.raises(TemplateLimitError, match="the tokenizer's chat_template"):
        JinjaTemplate(HOSTILE[name], "<s>", "</s>").check()
    assert time.perf_counter() - start < 6  # the render deadline is 2 s; size limits trip at once


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_stops_in_bounded_time_outside_the_main_thread(name):
    """No SIGALRM there (a caller's thread pool, a notebook, a server): the deadline is checked by the template's
    own loops and calls."""
    import threading

    outcome: list[BaseException | None] = []

    def render() -> None:
        try:
            JinjaTemplate(HOSTILE[name], "<s>", "</s>").check()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    start = time.perf_counter()
    thread = threading.Thread(target=render, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), f"{name}: still rendering after 20 s"
    assert isinstance(outcome[0], TemplateLimitError) and "the tokenizer's chat_template" in str(outcome[0])
    assert time.perf_counter() - start < 6


def test_real_templates_render_as_before():
    """Formatting, repeats and powers of normal size are untouched by the limits."""
    t = JinjaTemplate("{{ 5000000000 % 1000000007 }}{{ '%05d|%s' % (3, 'x') }}{{ '{:>5}'.format('a') }}{{ '%d' | format(3) }}{{ 'x' * 3 }}{{ 2 ** 10 }}"
                      "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}", "<s>", "</s>")
    assert t.text([{"role": "user", "content": "hi"}], False) == "99999997200003|x    a3xxx1024[user]hi"
    from mmzoo.demo.tiny import CHAT_TEMPLATE

    llama = JinjaTemplate(CHAT_TEMPLATE, "<s>", "</s>")
    segments = llama.render([Turn("user", "hi"), Turn("assistant", "hello")]).segments
    assert any(s.loss and "hello" in s.text for s in segments)


def _tokenizer_with_template(src, dst, template):
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    return dst


def test_cli_refuses_a_looping_template_in_one_line(tmp_path, capsys, pp_tokenizer, pp_images):
    tok = _tokenizer_with_template(pp_tokenizer, tmp_path / "tok", HOSTILE["string repeat"])
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}) + "\n")
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", tok, "-o", tmp_path / "out", "--num-image-tokens", "4", "-q"]
    assert_one_line(*run_main(capsys, *args), "chat_template", "--template")
    assert not (tmp_path / "out").exists()


def test_template_that_explodes_only_on_some_content_stops_the_workers(tmp_path, capsys, pp_tokenizer, pp_images):
    """The up-front check passes; the bomb goes off in a worker process on one sample: one line, exit 2."""
    template = ("{% for m in messages %}{{ m.content }}{% if 'boom' in m.content %}"
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}{% endfor %}")
    tok = _tokenizer_with_template(pp_tokenizer, tmp_path / "tok", template)
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "boom" if i == 3 else "hi"}, {"from": "gpt", "value": "yo"}]}
            for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", tok, "-o", tmp_path / "out", "--num-image-tokens", "4",
            "--workers", "2", "-q"]
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, *args), "chat_template", "took more than 2 s")
    assert time.perf_counter() - start < 30


def test_an_alarm_of_the_caller_still_reaches_its_handler():
    """The deadline's SIGALRM handler stays installed between renders and passes other alarms on."""
    import signal

    hits = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
    try:
        template = JinjaTemplate("{{ messages | length }}", "", "")
        assert template.text([], False) == "0"
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        time.sleep(0.3)
        assert hits == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
