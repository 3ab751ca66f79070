"""WordNet 3.0 usage examples from the Debian package ``wordnet-base`` (the quoted parts of the
glosses): a word -> a sentence using it, one example per quoted usage example::

    prompt: "Use the noun 'book' in a sentence.\\nSentence:"
    target: " he used a large book as a doorstop"
    group:  "n:02870526"

The word is the synset's first lemma that the sentence contains (its first lemma when none
does); an attribution after the quote (``"..." - John Galsworthy``) is left out. The group
(part of speech and byte offset) keeps a synset's examples in one split, as for the
definitions (:mod:`.wordnet`).
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.data.sources import wordnet
from tasks.records.schema import DataSpec, Example

NAME = "wordnet-examples"
_QUOTED = re.compile(r'"([^"]+)"')


def parse_example_line(line: str, file_pos: str) -> list[Example]:
    """The usage examples of one record of a WordNet ``data.*`` file (empty for header lines
    and glosses without a quoted example); ``file_pos`` as in
    :func:`.wordnet.parse_wordnet_line`."""
    if line.startswith("  ") or " | " not in line:
        return []
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    words = [wordnet.clean_lemma(w) for w in fields[4 : 4 + 2 * int(fields[3], 16) : 2]]
    if not words:
        return []
    pos_name = wordnet.POS_NAMES[fields[2]]
    examples = []
    for sentence in (s.strip() for s in _QUOTED.findall(gloss)):
        if not sentence:
            continue
        lowered = sentence.lower()
        word = next((w for w in words if w.lower() in lowered), words[0])
        examples.append(
            {
                "prompt": f"Use the {pos_name} '{word}' in a sentence.\nSentence:",
                "target": f" {sentence}",
                "group": f"{file_pos}:{fields[0]}",
            }
        )
    return examples


def load_examples(wordnet_dir: str | Path = wordnet.WORDNET_DIR) -> list[Example]:
    """Load every WordNet usage example as ``Use the <pos> '<lemma>' in a sentence.`` ->
    the sentence (``wordnet_dir``: the folder holding ``data.noun`` etc.)."""
    examples: list[Example] = []
    for line, file_pos in wordnet.wordnet_records(wordnet_dir, ("noun", "verb", "adj", "adv")):
        examples.extend(parse_example_line(line, file_pos))
    return examples


def load(spec: DataSpec) -> list[Example]:
    """The examples of the source (``spec.path``: another folder to read)."""
    return load_examples(spec.path or wordnet.WORDNET_DIR)


def files(spec: DataSpec) -> list[Path]:
    """The data files behind the source (their stamps key the data cache)."""
    return wordnet.files(spec)
