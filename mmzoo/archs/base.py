"""Declarative key-mapping rules between an architecture's native tensor names and mmzoo's canonical ones.

A rule says: native pattern <-> canonical pattern(s), and how rows split when one native tensor holds
several canonical ones (fused qkv / gate_up). Patterns use ``{L}`` (layer) and ``{E}`` (expert) for
numbers and ``{a|b|c}`` for alternatives; the same placeholders appear on both sides, so one table
serves both directions. ``canonical=None`` drops the native tensor (buffers such as rotary inv_freq).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MissingTensor, ShapeMismatch, UnexpectedTensor
from ..io.tensors import Planned

SAME = "<same>"
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

SplitFn = Callable[[dict], list[int]]


def _compile(pattern: str) -> tuple[re.Pattern, list[str]]:
    names: list[str] = []
    out, last = [], 0
    for i, match in enumerate(_PLACEHOLDER.finditer(pattern)):
        out.append(re.escape(pattern[last : match.start()]))
        body = match.group(1)
        group = f"g{i}"
        names.append(body)
        if body in ("L", "E"):
            out.append(f"(?P<{group}>\\d+)")
        else:
            out.append(f"(?P<{group}>{'|'.join(re.escape(a) for a in body.split('|'))})")
        last = match.end()
    out.append(re.escape(pattern[last:]))
    return re.compile("".join(out) + r"\Z"), names


def _fill(pattern: str, values: list[str]) -> str:
    it = iter(values)
    return _PLACEHOLDER.sub(lambda _m: next(it), pattern)


@dataclass(frozen=True)
class Rule:
    native: str
    canonical: str | tuple[str, ...] | None = SAME
    split: SplitFn | None = None  # rows per canonical tensor, from the component's config
    _native_re: re.Pattern = field(init=False, repr=False, compare=False)
    _canon_re: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_native_re", _compile(self.native)[0])
        object.__setattr__(self, "_canon_re", tuple(_compile(c)[0] for c in self.targets))

    @property
    def targets(self) -> tuple[str, ...]:
        if self.canonical is None:
            return ()
        if self.canonical == SAME:
            return (self.native,)
        return (self.canonical,) if isinstance(self.canonical, str) else self.canonical


@dataclass(frozen=True)
class Table:
    """An architecture's rules for one component (vision or text)."""

    name: str
    rules: tuple[Rule, ...]

    def to_canonical(self, tensors: dict[str, Planned], config: dict, *, drop_unmatched: bool = False, where: str = "") -> dict[str, Planned]:
        out: dict[str, Planned] = {}
        for name, planned in tensors.items():
            for rule in self.rules:
                match = rule._native_re.match(name)
                if not match:
                    continue
                values = list(match.groups())
                targets = [_fill(t, values) for t in rule.targets]
                if len(targets) == 1:
                    out[targets[0]] = planned
                elif targets:
                    sizes = rule.split(config) if rule.split else None
                    if sizes is None or sum(sizes) != planned.shape[0]:
                        raise ShapeMismatch(
                            f"tensor {name!r} has shape {list(planned.shape)}, config implies rows {sizes}", path=where or None
                        )
                    out.update(zip(targets, planned.split_rows(sizes)))
                break
            else:
                if not drop_unmatched:
                    raise UnexpectedTensor(
                        f"tensor {name!r} matches no {self.name} rule (`mmzoo convert --drop-unmatched-keys` writes a copy without such tensors)", path=where or None
                    )
        return out

    def from_canonical(self, tensors: dict[str, Planned], *, drop_unmatched: bool = False, where: str = "") -> dict[str, Planned]:
        out: dict[str, Planned] = {}
        used: set[str] = set()
        for name in tensors:
            if name in used:
                continue
            for rule in self.rules:
                # a fused native tensor is found through any of its canonical parts
                match = next((m for m in (regex.match(name) for regex in rule._canon_re) if m), None)
                if not match:
                    continue
                values = list(match.groups())
                native = _fill(rule.native, values)
                parts = [_fill(t, values) for t in rule.targets]
                missing = [p for p in parts if p not in tensors]
                if missing:
                    raise MissingTensor(f"tensor {missing[0]!r} is needed to build {native!r}", path=where or None)
                out[native] = tensors[parts[0]] if len(parts) == 1 else Planned.concat_rows([tensors[p] for p in parts])
                used.update(parts)
                break
            else:
                if not drop_unmatched:
                    raise UnexpectedTensor(f"tensor {name!r} matches no {self.name} rule", path=where or None)
        return out
