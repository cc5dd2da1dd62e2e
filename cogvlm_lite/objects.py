"""The scene objects: OpenMoji code points and English names, read from data/objects.tsv.

Each line of ``cogvlm_lite/data/objects.tsv`` (``hexcode``, ``name``, ``plural``) is one kind of
object the synthetic scenes draw (`cogvlm_lite.scenes`) and their questions name
(`cogvlm_lite.questions`, and `cogvlm_lite.zoom` as those questions do: `with_article`).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectClass:
    """One kind of object: its OpenMoji code point(s) and its English names."""

    hexcode: str  # e.g. "1F415"; several code points joined by "-"
    name: str  # "dog"
    plural: str  # "dogs"

    @property
    def text(self) -> str:
        """The characters that draw this object with the OpenMoji font."""
        return "".join(chr(int(part, 16)) for part in self.hexcode.split("-"))


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[ObjectClass, ...]:
    source = importlib.resources.files("cogvlm_lite") / "data" / "objects.tsv"
    lines = source.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["hexcode", "name", "plural"]:
        raise ValueError(f"{source}: the first line must be the header 'hexcode\\tname\\tplural'")
    classes, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise ValueError(f"{source}, line {number}: expected 3 tab-separated fields: {line!r}")
        hexcode, name, plural = (f.strip() for f in fields)
        if not re.fullmatch(r"[0-9A-F]{4,6}(-[0-9A-F]{4,6})*", hexcode):
            raise ValueError(f"{source}, line {number}: bad hexcode {hexcode!r}")
        if name in seen:
            raise ValueError(f"{source}, line {number}: duplicate name {name!r}")
        seen.add(name)
        classes.append(ObjectClass(hexcode, name, plural))
    return tuple(classes)


@functools.lru_cache(maxsize=1)
def _plurals() -> dict[str, str]:
    return {c.name: c.plural for c in _vocabulary()}


def plural_of(name: str) -> str:
    """The plural of an object's name ('dogs'); other names take an 's'."""
    return _plurals().get(name, name + "s")


def vocabulary() -> list[ObjectClass]:
    """Every object class scenes are drawn from, in file order (read once, then cached)."""
    return list(_vocabulary())


def _article(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith(("hour", "honest", "heir")):
        return "an"
    if lowered.startswith(("uni", "use", "eu", "one")):
        return "a"
    return "an" if lowered[0] in "aeiou" else "a"


def with_article(name: str) -> str:
    """'a dog', 'an apple', 'a unicorn', 'an hourglass'."""
    return f"{_article(name)} {name}"
