"""WordNet 3.0 glosses from the Debian package ``wordnet-base``: one example per synset (its
first lemma; ``all_lemmas=True`` gives one per lemma)::

    prompt: "Define the noun 'physical entity'.\\nDefinition:"
    target: " an entity that has physical existence"
    group:  "n:00001930"

The group (part of speech and byte offset) keeps every lemma of a synset in one split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tasks.records.errors import DataError, MissingFileError
from tasks.records.schema import DataSpec, Example

NAME = "wordnet"
DEBIAN_PACKAGE = "wordnet-base"
WORDNET_DIR = Path("/usr/share/wordnet")
_WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def parse_wordnet_line(line: str, file_pos: str, *, all_lemmas: bool = False) -> list[Example]:
    """Parse one record of a WordNet ``data.*`` file into examples.

    Parameters
    ----------
    line : str
        One line of ``data.noun`` / ``data.verb`` / ``data.adj`` / ``data.adv``.
    file_pos : str
        The file's part-of-speech letter (``n``, ``v``, ``a``, ``r``); with the byte offset it
        forms the group id ``"pos:offset"``, unique across the four files.
    all_lemmas : bool
        One example per lemma of the synset instead of one for its first lemma.

    Returns
    -------
    list of dict
        Empty for header lines and synsets whose gloss has no definition.
    """
    if line.startswith("  ") or " | " not in line:
        return []
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    n_words = int(fields[3], 16)
    words = fields[4 : 4 + 2 * n_words : 2]
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").rstrip()
    if not definition or definition.startswith('"') or not words:
        return []
    pos_name = POS_NAMES[fields[2]]
    group = f"{file_pos}:{fields[0]}"
    lemmas = words if all_lemmas else words[:1]
    return [
        {
            "prompt": f"Define the {pos_name} '{clean_lemma(word)}'.\nDefinition:",
            "target": f" {definition}",
            "group": group,
        }
        for word in lemmas
    ]


def clean_lemma(word: str) -> str:
    """A lemma as text: no adjective marker, spaces for underscores."""
    return _ADJ_MARKER.sub("", word).replace("_", " ")


def load_wordnet(
    wordnet_dir: str | Path = WORDNET_DIR,
    *,
    parts_of_speech: Sequence[str] = ("noun", "verb", "adj", "adv"),
    all_lemmas: bool = False,
) -> list[Example]:
    """Load WordNet definitions as ``Define the <pos> '<lemma>'.`` -> definition examples.

    Parameters
    ----------
    wordnet_dir : str or Path
        Folder holding ``data.noun`` etc. (Debian package ``wordnet-base``).
    parts_of_speech : sequence of str
        Which of ``noun``, ``verb``, ``adj``, ``adv`` to read.
    all_lemmas : bool
        One example per lemma instead of one per synset.
    """
    examples: list[Example] = []
    for line, file_pos in wordnet_records(wordnet_dir, parts_of_speech):
        examples.extend(parse_wordnet_line(line, file_pos, all_lemmas=all_lemmas))
    return examples


def wordnet_records(
    wordnet_dir: str | Path, parts_of_speech: Sequence[str]
) -> Iterator[tuple[str, str]]:
    """Every line of the ``data.<pos>`` files named, with its file's part-of-speech letter."""
    wordnet_dir = Path(wordnet_dir)
    for pos in parts_of_speech:
        if pos not in _WORDNET_POS:
            raise DataError(
                f"unknown WordNet part of speech {pos!r}; choose from {sorted(_WORDNET_POS)}"
            )
        path = wordnet_dir / f"data.{pos}"
        if not path.is_file():
            raise MissingFileError(
                f"WordNet file {path} not found; install the Debian package 'wordnet-base' "
                "(`make data` or `apt-get install wordnet-base`) or pass the folder holding "
                "data.noun/data.verb/data.adj/data.adv"
            )
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                yield line, _WORDNET_POS[pos]


def load(spec: DataSpec) -> list[Example]:
    """The examples of the WordNet source (``spec.path``: another folder to read)."""
    return load_wordnet(spec.path or WORDNET_DIR)


def files(spec: DataSpec) -> list[Path]:
    """The data files behind the source (their stamps key the data cache)."""
    folder = Path(spec.path or WORDNET_DIR)
    return [folder / f"data.{pos}" for pos in _WORDNET_POS]
