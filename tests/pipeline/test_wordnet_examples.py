"""Tests of the WordNet usage-examples source (tasks/data/sources/wordnet_examples.py)."""

from __future__ import annotations

import pytest

from tasks import data
from tasks.data.sources import BUILTIN, wordnet, wordnet_examples
from tasks.records.errors import MissingFileError
from tasks.records.schema import DataSpec

WORDNET_INSTALLED = (wordnet.WORDNET_DIR / "data.noun").is_file()

# Real records from WordNet 3.0 (wordnet-base).
VERB_LINE = (
    "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 "
    '02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better '
    'when the air is clean"; "The patient is respiring"  \n'
)
ATTRIBUTED_LINE = (
    "00009046 00 a 01 abstemious 0 006 ^ 01299888 a 0000 = 04883942 n 0000 + 04883942 n 0101 "
    "! 00009978 a 0101 & 00009346 a 0000 & 00009618 a 0000 | sparing in consumption of "
    'especially food and drink; "the pleasures of the table, never of much consequence to one '
    'naturally abstemious"- John Galsworthy  \n'
)
MULTIWORD_LINE = (
    "00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 | a general "
    'concept; "an abstract entity is not a thing"  \n'
)
NO_EXAMPLE_LINE = (
    "00020103 00 s 02 outback(a) 0 remote 0 003 & 00019874 a 0000 + 05085165 n 0202 | "
    "inaccessible and sparsely populated;  \n"
)
HEADER_LINE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def test_one_example_per_quote_grouped_by_synset():
    assert wordnet_examples.parse_example_line(VERB_LINE, "v") == [
        {
            "prompt": "Use the verb 'breathe' in a sentence.\nSentence:",
            "target": " I can breathe better when the air is clean",
            "group": "v:00001740",
        },
        {
            # no lemma in the sentence as written ("respiring"): the synset's first lemma
            "prompt": "Use the verb 'breathe' in a sentence.\nSentence:",
            "target": " The patient is respiring",
            "group": "v:00001740",
        },
    ]


def test_the_lemma_the_sentence_uses_and_no_attribution():
    (example,) = wordnet_examples.parse_example_line(MULTIWORD_LINE, "n")
    assert example["prompt"] == "Use the noun 'abstract entity' in a sentence.\nSentence:"
    (example,) = wordnet_examples.parse_example_line(ATTRIBUTED_LINE, "a")
    assert example["target"] == (
        " the pleasures of the table, never of much consequence to one naturally abstemious"
    )
    assert wordnet_examples.parse_example_line(NO_EXAMPLE_LINE, "a") == []
    assert wordnet_examples.parse_example_line(HEADER_LINE, "n") == []


def test_registered_source_reads_spec_path(tmp_path):
    lines = {"noun": MULTIWORD_LINE, "verb": VERB_LINE, "adj": ATTRIBUTED_LINE, "adv": ""}
    for pos, line in lines.items():
        (tmp_path / f"data.{pos}").write_text(HEADER_LINE + line)
    spec = DataSpec(source="wordnet-examples", path=str(tmp_path))
    assert BUILTIN.get("wordnet-examples") is wordnet_examples
    examples = data.load_examples(spec)
    assert [e["group"] for e in examples] == [
        "n:00002137",
        "v:00001740",
        "v:00001740",
        "a:00009046",
    ]
    assert data.source_files(spec) == [tmp_path / f"data.{p}" for p in lines]
    with pytest.raises(MissingFileError, match="apt-get install wordnet-base"):
        data.load_examples(DataSpec(source="wordnet-examples", path=str(tmp_path / "none")))


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="Debian package wordnet-base not installed")
def test_real_package():
    examples = wordnet_examples.load_examples()
    # WordNet 3.0: 48,339 quoted usage examples in 32,923 synsets
    assert len(examples) == 48_339
    assert len({e["group"] for e in examples}) == 32_923
    assert all(len(e["target"]) > 1 and '"' not in e["target"] for e in examples)
    # most sentences contain one of their synset's lemmas as written
    named = sum(e["prompt"].split("'")[1].lower() in e["target"].lower() for e in examples)
    assert named > 0.6 * len(examples)
