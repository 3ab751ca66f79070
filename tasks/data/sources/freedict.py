"""German -> English translation from the Debian package ``dict-freedict-deu-eng`` (FreeDict's
dictd conversion of the Ding dictionary, GPL): the dictionary's usage examples, German phrase or
sentence -> its English translation as the dictionary gives it (alternatives included)::

    prompt: "Translate to English: Das glaube ich eigentlich nicht.\\nEnglish:"
    target: " I don't really think so."
    group:  "eigentlich"

An entry's examples are the lines ``      "<German>"  - <English>`` under its headword. The dictd
index (headword, offset, length; numbers in dictd's base 64) tells which entry a line belongs
to; the group is that entry's headword as the index spells it (lower case), so one headword's
senses stay in one split. The same German text under several headwords is kept once, in the
group of the first entry (file order) that gives it. Pairs
with either side over ``max_chars`` characters are left out: with the probes' short sequences
their prompt would be cut.
"""

from __future__ import annotations

import bisect
import gzip
import re
from pathlib import Path

from tasks.records.errors import DataError, MissingFileError
from tasks.records.schema import DataSpec, Example

NAME = "freedict"
DEBIAN_PACKAGE = "dict-freedict-deu-eng"
DICTD_DIR = Path("/usr/share/dictd")
DICT_NAME = "freedict-deu-eng"
MAX_CHARS = 100
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_EXAMPLE = re.compile(rb'^      "(?P<german>[^\n]*)"  - (?P<english>[^\n]*)$', re.MULTILINE)


def dictd_number(text: str) -> int:
    """A dictd index number: base 64, most significant digit first."""
    value = 0
    for char in text:
        digit = _B64.find(char)
        if digit < 0:
            raise DataError(f"bad dictd index number {text!r}: {char!r} is not a base-64 digit")
        value = value * 64 + digit
    return value


def entry_headwords(index_text: str) -> dict[int, str]:
    """The byte offset of every entry a dictd ``.index`` lists -> its headword (lower case, as
    the index spells it; the first in sort order where an entry has several)."""
    heads: dict[int, str] = {}
    for line in index_text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"bad dictd index line {line!r}: expected headword, offset, length")
        start = dictd_number(fields[1])
        heads[start] = min(heads.get(start, fields[0]), fields[0]).strip()
    return heads


def parse_examples(
    data: bytes, heads: dict[int, str], *, max_chars: int = MAX_CHARS
) -> list[Example]:
    """Every usage example of a dictd text (``data``, decompressed) whose entries begin at the
    offsets of ``heads`` (offset -> headword), as translation examples grouped by headword (see
    the module docstring)."""
    starts = sorted(heads)
    examples: list[Example] = []
    seen: set[str] = set()
    for match in _EXAMPLE.finditer(data):
        german = match["german"].decode("utf-8").strip()
        english = match["english"].decode("utf-8").strip()
        if not german or not english or german in seen:
            continue
        if len(german) > max_chars or len(english) > max_chars:
            continue
        position = bisect.bisect_right(starts, match.start()) - 1
        if position < 0:
            continue  # not inside any entry
        seen.add(german)
        examples.append(
            {
                "prompt": f"Translate to English: {german}\nEnglish:",
                "target": f" {english}",
                "group": heads[starts[position]],
            }
        )
    return examples


def dict_files(folder: str | Path = DICTD_DIR) -> tuple[Path, Path]:
    """The dictionary's ``.dict.dz`` and ``.index`` in ``folder``."""
    folder = Path(folder)
    return folder / f"{DICT_NAME}.dict.dz", folder / f"{DICT_NAME}.index"


def load_freedict(folder: str | Path = DICTD_DIR, *, max_chars: int = MAX_CHARS) -> list[Example]:
    """Load the German -> English usage examples of ``dict-freedict-deu-eng``.

    Parameters
    ----------
    folder : str or Path
        Folder holding ``freedict-deu-eng.dict.dz`` and ``freedict-deu-eng.index``.
    max_chars : int
        Leave out pairs with a side longer than this many characters.
    """
    dict_path, index_path = dict_files(folder)
    for path in (dict_path, index_path):
        if not path.is_file():
            raise MissingFileError(
                f"FreeDict file {path} not found; install the Debian package {DEBIAN_PACKAGE!r} "
                f"(`make data` or `apt-get install {DEBIAN_PACKAGE}`) or pass the folder holding "
                f"{dict_path.name} and {index_path.name}"
            )
    heads = entry_headwords(index_path.read_text(encoding="utf-8"))
    with gzip.open(dict_path) as handle:  # dictzip files are gzip files
        data = handle.read()
    examples = parse_examples(data, heads, max_chars=max_chars)
    if not examples:
        raise DataError(f"no usage examples found in {dict_path}: is it a FreeDict dictionary?")
    return examples


def load(spec: DataSpec) -> list[Example]:
    """The examples of the FreeDict source (``spec.path``: another folder to read)."""
    return load_freedict(spec.path or DICTD_DIR)


def files(spec: DataSpec) -> list[Path]:
    """The data files behind the source (their stamps key the data cache)."""
    return list(dict_files(spec.path or DICTD_DIR))
