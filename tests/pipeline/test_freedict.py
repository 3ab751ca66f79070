"""Tests of the FreeDict German -> English source (tasks/data/sources/freedict.py): the dictd
index numbers, usage examples grouped by headword, and the real Debian package."""

from __future__ import annotations

import gzip

import pytest

from tasks import data
from tasks.data.sources import BUILTIN, freedict
from tasks.records.errors import DataError, MissingFileError
from tasks.records.schema import DataSpec

FREEDICT_INSTALLED = all(path.is_file() for path in freedict.dict_files())

# Real entries of dict-freedict-deu-eng 2022.04.21 (three entries, the header shortened).
HEADER = "\n00-database-dictfmt-1.13.0\nGerman - English Ding/FreeDict dictionary\n"
ENTRIES = [
    (
        "änderung",
        "Änderung /ˈɛndərˌʊŋ/ <fem, n, sg>\n"
        " [teilweise] modification <n>\n"
        "         Note: to sth.\n"
        '      "Ich habe am ursprünglichen Entwurf ein paar Änderungen vorgenommen."  - '
        "I've made one or two modifications to the original design.\n"
        "   Synonyms: {Abänderung}, {Modifikation}, {Modifizierung}\n\n",
    ),
    (
        "änderungen",
        "Änderungen /ˈɛndərˌʊŋən/ <pl>\n"
        "modifications\n"
        '      "Ich habe am ursprünglichen Entwurf ein paar Änderungen vorgenommen."  - '
        "I've made one or two modifications to the original design.\n\n",
    ),
    (
        "eigentlich",
        "eigentlich /ˈaɪɡəntlɪç/ (eigtl. /ˈaɪktl/) <adv>\n"
        "really <adv>\n"
        "         Note: reducing the force of a negative statement\n"
        '      "Na ja, eigentlich nicht, aber …"  - Well, not really, but …\n'
        '      "Das glaube ich eigentlich nicht."  - I don\'t really think so.\n',
    ),
]


def b64(number: int) -> str:
    """A dictd index number (base 64, most significant digit first)."""
    digits = ""
    while True:
        number, digit = divmod(number, 64)
        digits = freedict._B64[digit] + digits
        if not number:
            return digits


def write_dictd(folder, entries=ENTRIES):
    """A dictd dictionary (gzip'd text and its index) of ``entries`` after the header."""
    text = HEADER.encode()
    index = [f"00databaseinfo\t{b64(1)}\t{b64(len(text) - 1)}"]
    for head, entry in entries:
        body = entry.encode()
        index.append(f"{head}\t{b64(len(text))}\t{b64(len(body))}")
        text += body
    dict_path, index_path = freedict.dict_files(folder)
    dict_path.write_bytes(gzip.compress(text))
    index_path.write_text("\n".join(sorted(index)) + "\n", encoding="utf-8")


def test_dictd_numbers_are_base_64():
    # from the real index: 00databaseinfo at "c" (28), length "5S" (57 * 64 + 18)
    assert freedict.dictd_number("c") == 28
    assert freedict.dictd_number("5S") == 3666
    assert freedict.dictd_number("BA") == 64
    assert freedict.dictd_number(b64(16_759_449)) == 16_759_449
    with pytest.raises(DataError, match="base-64 digit"):
        freedict.dictd_number("A-")


def test_examples_grouped_by_the_index_headword_and_kept_once(tmp_path):
    write_dictd(tmp_path)
    examples = freedict.load_freedict(tmp_path)
    assert examples == [
        {
            "prompt": "Translate to English: Ich habe am ursprünglichen Entwurf ein paar "
            "Änderungen vorgenommen.\nEnglish:",
            "target": " I've made one or two modifications to the original design.",
            "group": "änderung",  # the first entry that gives it; not again under änderungen
        },
        {
            "prompt": "Translate to English: Na ja, eigentlich nicht, aber …\nEnglish:",
            "target": " Well, not really, but …",
            "group": "eigentlich",  # not the pronunciation notes of the entry's first line
        },
        {
            "prompt": "Translate to English: Das glaube ich eigentlich nicht.\nEnglish:",
            "target": " I don't really think so.",
            "group": "eigentlich",
        },
    ]
    short = freedict.load_freedict(tmp_path, max_chars=40)
    assert [e["group"] for e in short] == ["eigentlich", "eigentlich"]


def test_registered_source_reads_spec_path_and_lists_its_files(tmp_path):
    write_dictd(tmp_path)
    spec = DataSpec(source="freedict", path=str(tmp_path))
    assert BUILTIN.get("freedict") is freedict
    assert len(data.load_examples(spec)) == 3
    assert data.source_files(spec) == [
        tmp_path / "freedict-deu-eng.dict.dz",
        tmp_path / "freedict-deu-eng.index",
    ]


def test_missing_package_names_the_install_command(tmp_path):
    with pytest.raises(MissingFileError, match="apt-get install dict-freedict-deu-eng"):
        freedict.load_freedict(tmp_path)
    write_dictd(tmp_path, entries=[("modifikationen", "Modifikationen <pl>\nmodifications\n")])
    with pytest.raises(DataError, match="no usage examples"):
        freedict.load_freedict(tmp_path)
    freedict.dict_files(tmp_path)[1].write_text("änderung\tDwG\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad dictd index line"):
        freedict.load_freedict(tmp_path)


@pytest.mark.skipif(not FREEDICT_INSTALLED, reason="Debian package dict-freedict-deu-eng missing")
def test_real_package():
    examples = freedict.load_freedict()
    # dict-freedict-deu-eng 2022.04.21: 35,947 distinct German examples of <= 100 characters
    assert 30_000 < len(examples) < 45_000
    assert len({e["prompt"] for e in examples}) == len(examples)
    by_prompt = {e["prompt"]: e for e in examples}
    glauben = by_prompt["Translate to English: Das glaube ich eigentlich nicht.\nEnglish:"]
    assert glauben["target"] == " I don't really think so."
    assert glauben["group"] == "eigentlich"
    groups = {e["group"] for e in examples}
    assert 10_000 < len(groups) < len(examples)
    assert all(g == g.lower() and "/" not in g for g in groups)
