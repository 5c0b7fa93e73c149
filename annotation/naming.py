"""Matching concept names: the one normalisation every comparison of human names uses (pure string logic).

:func:`normalise_concept_name` turns a name given by an annotator, a dataset concept name or a dissection
label into a comparable key:

1. lower-case, trim, collapse white space; ``_`` and ``-`` separate words like spaces;
2. Broden's category suffixes are dropped (``red-c`` → ``red``, ``kitchen-s`` → ``kitchen``);
3. simple English plurals become singular, word by word (``wheels`` → ``wheel``, ``bodies`` → ``body``,
   ``branches`` → ``branch``, a few irregular ones such as ``feet`` → ``foot``);
4. PASCAL-Part normalisation (:func:`analysis.engine.pascal_part.normalise_part_name`, GG'18 §3.2.1):
   raw short names map through its table (``lfleg`` → ``leg``) and side/position words are dropped
   (``front left leg`` → ``leg``); a name made only of position words stays (``back`` is a part GG'18's
   annotators name);
5. the study's synonym table (already-normalised ``name`` → ``maps_to``), followed until it settles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from analysis.engine.pascal_part import normalise_part_name

__all__ = ["BRODEN_SUFFIXES", "label_text", "normalise_concept_name", "singular", "strip_broden_suffix"]

BRODEN_SUFFIXES = ("-c", "-s")
"""Broden marks colour concepts ``-c`` and scene concepts ``-s``."""

_IRREGULAR = {
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "mice": "mouse",
    "men": "man",
    "women": "woman",
    "people": "person",
    "children": "child",
    "hooves": "hoof",
    "leaves": "leaf",
    "calves": "calf",
    "halves": "half",
    "knives": "knife",
    "wolves": "wolf",
    "shelves": "shelf",
    "loaves": "loaf",
}
_UNCHANGED = frozenset(
    {
        "bus",
        "gas",
        "glass",
        "grass",
        "lens",
        "chassis",
        "series",
        "species",
        "news",
        "canvas",
        "cactus",
        "dress",
        "cross",
        "moss",
        "mattress",
        "boss",
        "compass",
        "pants",
        "trousers",
        "jeans",
        "scissors",
        "glasses",
        "binoculars",
        "stairs",
        "clothes",
        "headphones",
        "bis",
    }
)
_SEPARATORS = re.compile(r"[\s_\-]+")


def strip_broden_suffix(name: str) -> str:
    """``name`` without Broden's category suffix (``red-c`` → ``red``, ``kitchen-s`` → ``kitchen``): the one rule
    every place that shows or compares a Broden concept name uses. One suffix is dropped, once; a name that is
    only a suffix stays."""
    for suffix in BRODEN_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def singular(word: str) -> str:
    """The singular of a simple English plural (``wheels`` → ``wheel``); other words unchanged."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _UNCHANGED or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def _normalise(name: str) -> str:
    text = strip_broden_suffix(" ".join(str(name).split()).lower())
    words = [singular(word) for word in _SEPARATORS.split(text) if word]
    if not words:
        return ""
    return normalise_part_name("_".join(words)).replace("_", " ").strip()


def normalise_concept_name(name: str | None, synonyms: Mapping[str, str] | None = None) -> str:
    """The comparable key of a concept name (see the module's docstring); ``""`` for an empty name.

    ``synonyms`` maps normalised names to normalised names (a study's table, as :class:`ConceptSynonym` stores
    it); chains are followed, a cycle stops where it would repeat.
    """
    key = _normalise(name or "")
    if not synonyms or not key:
        return key
    seen = {key}
    while key in synonyms:
        target = synonyms[key]
        if not target or target in seen:
            break
        seen.add(target)
        key = target
    return key


def label_text(name: str) -> str:
    """How a concept name is shown as a label: Broden's category suffix dropped, ``_`` as spaces, lower case."""
    return strip_broden_suffix(" ".join(str(name).replace("_", " ").split()).lower())
