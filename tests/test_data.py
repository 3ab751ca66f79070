"""Tests of the data layer (tasks/data.py): built-in sources, file sources, splits and ladder."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import data

WORDNET_INSTALLED = (data.WORDNET_DIR / "data.noun").is_file()
MANPAGES_INSTALLED = (data.DPKG_INFO_DIR / "manpages.list").is_file() and (
    data.MAN_DIR / "man2" / "open.2.gz"
).is_file()

# Real records from WordNet 3.0 (wordnet-base).
NOUN_LINE = (
    "00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 + 00692347 v 0101 "
    "~ 00023100 n 0000 | a general concept formed by extracting common features from specific "
    "examples  \n"
)
VERB_LINE = (
    "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 "
    '02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better '
    'when the air is clean"; "The patient is respiring"  \n'
)
SATELLITE_LINE = (
    "00020103 00 s 02 outback(a) 0 remote 0 003 & 00019874 a 0000 + 05085165 n 0202 | "
    "inaccessible and sparsely populated;  \n"
)
HEADER_LINE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"

# Shortened from open(2), Linux man-pages 6.03.
OPEN_ROFF = r""".\" SPDX-License-Identifier: Linux-man-pages-copyleft
.TH open 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
open, openat, creat \- open and possibly create a file
.SH SYNOPSIS
.nf
.B #include <fcntl.h>
.BI "int open(const char *" pathname ", int " flags );
.fi
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by
.IR pathname .
If the specified file does not exist,
it may optionally (if
.B O_CREAT
is specified in
.IR flags )
be created by
.BR open ().
.PP
The return value of
.BR open ()
is a file descriptor.
.SH "SEE ALSO"
.BR close (2)
"""


def make_examples(n_groups: int, per_group: int = 1) -> list[dict[str, str]]:
    return [
        {"prompt": f"p{g}-{k}", "target": f" t{g}-{k}", "group": f"g{g}"}
        for g in range(n_groups)
        for k in range(per_group)
    ]


def groups_of(examples):
    return {example["group"] for example in examples}


# --------------------------------------------------------------------------------- WordNet


def test_parse_wordnet_line_noun_first_lemma_and_group():
    (example,) = data.parse_wordnet_line(NOUN_LINE, "n")
    assert example == {
        "prompt": "Define the noun 'abstraction'.\nDefinition:",
        "target": " a general concept formed by extracting common features from specific examples",
        "group": "n:00002137",
    }


def test_parse_wordnet_line_verb_drops_usage_examples_and_all_lemmas_share_group():
    examples = data.parse_wordnet_line(VERB_LINE, "v", all_lemmas=True)
    assert [e["prompt"].split("'")[1] for e in examples] == [
        "breathe",
        "take a breath",
        "respire",
        "suspire",
    ]
    assert {e["target"] for e in examples} == {" draw air into, and expel out of, the lungs"}
    assert groups_of(examples) == {"v:00001740"}


def test_parse_wordnet_line_satellite_adjective_and_header():
    (example,) = data.parse_wordnet_line(SATELLITE_LINE, "a")
    assert example["prompt"] == "Define the adjective 'outback'.\nDefinition:"
    assert example["target"] == " inaccessible and sparsely populated"
    assert data.parse_wordnet_line(HEADER_LINE, "n") == []


def test_load_wordnet_from_folder_and_missing_folder(tmp_path):
    (tmp_path / "data.noun").write_text(HEADER_LINE + NOUN_LINE)
    (tmp_path / "data.verb").write_text(VERB_LINE)
    examples = data.load_wordnet(tmp_path, parts_of_speech=("noun", "verb"))
    assert [e["group"] for e in examples] == ["n:00002137", "v:00001740"]
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        data.load_wordnet(tmp_path)  # no data.adj
    with pytest.raises(ValueError, match="part of speech"):
        data.load_wordnet(tmp_path, parts_of_speech=("pronoun",))


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="Debian package wordnet-base not installed")
def test_load_wordnet_full_count_and_speed():
    start = time.perf_counter()
    examples = data.load_wordnet()
    elapsed = time.perf_counter() - start
    # WordNet 3.0 has 117,659 synsets, each with a definition.
    assert len(examples) == 117_659
    assert len(groups_of(examples)) == len(examples)
    assert all(e["target"].startswith(" ") and len(e["target"]) > 2 for e in examples)
    assert not any("_" in e["prompt"] for e in examples)
    assert elapsed < 5, f"parsing WordNet took {elapsed:.1f} s"


# --------------------------------------------------------------------------------- man pages


def test_parse_manpage_description_and_summary():
    description, summary = data.parse_manpage(OPEN_ROFF)
    assert summary == "open and possibly create a file"
    assert description == (
        "The open() system call opens the file specified by pathname. If the specified file "
        "does not exist, it may optionally (if O_CREAT is specified in flags) be created by open()."
    )
    short, _ = data.parse_manpage(OPEN_ROFF, max_description_chars=40)
    assert short == "The open() system call opens the file"


def test_parse_manpage_skips_redirects_and_pages_without_sections():
    assert data.parse_manpage(".so man2/open.2\n") is None
    assert data.parse_manpage(".SH NAME\nfoo \\- bar\n") is None  # no DESCRIPTION
    assert data.parse_manpage(".SH NAME\nfoo\n.SH DESCRIPTION\nText.\n") is None  # no \-


def test_load_manpages_from_folder_and_missing(tmp_path):
    (tmp_path / "man2").mkdir()
    (tmp_path / "man2" / "open.2.gz").write_bytes(gzip.compress(OPEN_ROFF.encode()))
    (tmp_path / "man2" / "creat.2.gz").write_bytes(gzip.compress(b".so man2/open.2\n"))
    (tmp_path / "man2" / "broken.2.gz").write_bytes(b"not gzip")
    (example,) = data.load_manpages(tmp_path, packages=None)
    assert example["group"] == "open"
    assert example["target"] == " open and possibly create a file"
    assert example["prompt"].startswith("Summarize this man page description in one line.\n")
    assert example["prompt"].endswith("by open().\nSummary:")
    with pytest.raises(FileNotFoundError, match="manpages and manpages-dev"):
        data.load_manpages(tmp_path / "empty", packages=None)
    with pytest.raises(FileNotFoundError, match="apt-get install manpages manpages-dev"):
        data.load_manpages(packages=("manpages",), dpkg_info_dir=tmp_path)


@pytest.mark.skipif(not MANPAGES_INSTALLED, reason="Debian packages manpages(-dev) missing")
def test_load_manpages_real_packages():
    examples = data.load_manpages()
    assert 900 < len(examples) < 3000
    by_group = {e["group"]: e for e in examples}
    assert by_group["open"]["target"] == " open and possibly create a file"
    assert not any("\\f" in e["prompt"] or "\\-" in e["target"] for e in examples)
    description = examples[0]["prompt"].split("\n")[1]
    assert 0 < len(description) <= 400


# --------------------------------------------------------------------------------- files


@pytest.fixture
def qa_rows():
    return [
        {"question": f"What is {i} + {i}?", "answer": str(2 * i), "topic": f"t{i % 7}"}
        for i in range(60)
    ]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_load_jsonl_with_fields(tmp_path, qa_rows):
    file = write_jsonl(tmp_path / "qa.jsonl", qa_rows)
    examples = data.load_examples(str(file), prompt_field="question", target_field="answer")
    assert len(examples) == 60
    assert examples[3]["prompt"] == "What is 3 + 3?" and examples[3]["target"] == "6"
    # By default identical prompts share a group.
    assert len(groups_of(examples)) == 60


def test_load_csv_with_template_and_group_field(tmp_path, qa_rows):
    file = tmp_path / "qa.csv"
    lines = ["question,answer,topic"] + [
        f'"{r["question"]}",{r["answer"]},{r["topic"]}' for r in qa_rows
    ]
    file.write_text("\n".join(lines) + "\n")
    examples = data.load_examples(
        "csv",
        path=str(file),
        template="Q: {question} ({topic})\nA:",
        target_field="answer",
        group_field="topic",
    )
    assert examples[2] == {"prompt": "Q: What is 2 + 2? (t2)\nA:", "target": "4", "group": "t2"}
    assert len(groups_of(examples)) == 7


def test_field_mapping_errors(tmp_path, qa_rows):
    file = str(write_jsonl(tmp_path / "qa.jsonl", qa_rows))
    with pytest.raises(ValueError, match=r"'label' is not a column \(missing in all 60 rows\)"):
        data.load_examples(file, prompt_field="question", target_field="label")
    with pytest.raises(ValueError, match="'subject'.*missing in all 60 rows"):
        data.load_examples(file, template="{subject}: {question}", target_field="answer")
    with pytest.raises(ValueError, match="exactly one of prompt_field"):
        data.load_examples(file, target_field="answer")
    with pytest.raises(ValueError, match="target_field"):
        data.load_examples(file, prompt_field="question")
    with pytest.raises(ValueError, match="fixed fields"):
        data.load_examples("wordnet", prompt_field="question")
    with pytest.raises(ValueError, match="extension"):
        data.file_builder("data.xlsx")


def test_empty_rows_dropped_with_warning_or_rejected(tmp_path, qa_rows):
    few = [dict(r) for r in qa_rows]
    few[5]["answer"] = ""
    file = str(write_jsonl(tmp_path / "few.jsonl", few))
    with pytest.warns(UserWarning, match="dropping 1 of 60 rows"):
        examples = data.load_examples(file, prompt_field="question", target_field="answer")
    assert len(examples) == 59
    many = [dict(r) for r in qa_rows]
    for row in many[:10]:
        del row["answer"]
    file = str(write_jsonl(tmp_path / "many.jsonl", many))
    with pytest.raises(ValueError, match="'answer' is missing or empty in 10 of 60 rows"):
        data.load_examples(file, prompt_field="question", target_field="answer")


def test_hub_id_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="hub is offline.*local file.*wordnet"):
        data.load_examples("someone/some-dataset", prompt_field="q", target_field="a")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_examples("nowhere/qa.jsonl", prompt_field="q", target_field="a")


# --------------------------------------------------------------------------------- splits


def test_split_is_group_aware_exact_and_deterministic():
    examples = make_examples(300, per_group=3)
    splits = data.split_examples(examples, val_size=50, test_size=100, seed=7)
    assert len(splits["test"]) == 100 and len(splits["val"]) == 50
    train, val, test = (groups_of(splits[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert splits == data.split_examples(examples, val_size=50, test_size=100, seed=7)
    assert (
        splits["test"] != data.split_examples(examples, val_size=50, test_size=100, seed=8)["test"]
    )
    # The test split does not depend on the validation size.
    assert (
        splits["test"] == data.split_examples(examples, val_size=20, test_size=100, seed=7)["test"]
    )


def test_split_rejects_sizes_that_leave_no_train():
    with pytest.raises(ValueError, match="leaves no training examples out of 10"):
        data.split_examples(make_examples(10), val_size=5, test_size=5, seed=0)
    with pytest.raises(ValueError, match="val_size must be an integer >= 1"):
        data.split_examples(make_examples(10), val_size=0, test_size=5, seed=0)


def test_ladder_sizes():
    assert data.ladder_sizes(200, 3200) == [200, 400, 800, 1600, 3200]
    assert data.ladder_sizes(64, 64) == [64]
    with pytest.raises(ValueError, match=r"budget=100 is smaller than first_size=200"):
        data.ladder_sizes(200, 100)
    with pytest.raises(ValueError, match=r"power of two; use budget=800 or 1600"):
        data.ladder_sizes(200, 1000)
    with pytest.raises(ValueError, match="power of two"):
        data.ladder_sizes(200, 1250)
    with pytest.raises(ValueError, match="first_size must be an integer >= 1"):
        data.ladder_sizes(0, 100)


def test_nested_subsets_nested_deterministic_and_disjoint_from_val_test():
    examples = make_examples(400, per_group=2)
    splits = data.split_examples(examples, val_size=40, test_size=60, seed=3)
    sizes = data.ladder_sizes(25, 400)
    subsets = data.nested_subsets(splits["train"], sizes, seed=3)
    assert list(subsets) == sizes
    for small, large in zip(sizes, sizes[1:], strict=False):
        assert subsets[large][:small] == subsets[small]
    assert subsets == data.nested_subsets(splits["train"], sizes, seed=3)
    assert subsets[400] != data.nested_subsets(splits["train"], sizes, seed=4)[400]
    held_out = groups_of(splits["val"]) | groups_of(splits["test"])
    assert not groups_of(subsets[400]) & held_out
    assert len({e["prompt"] for e in subsets[400]}) == 400


def test_nested_subsets_too_small_says_what_to_change():
    with pytest.raises(ValueError, match="has 30 examples but the ladder needs 64.*lower budget"):
        data.nested_subsets(make_examples(30), [16, 32, 64], seed=0)


def test_fingerprint_stable_order_sensitive_and_same_in_another_process():
    examples = make_examples(5)
    value = data.fingerprint(examples)
    assert len(value) == 16 and int(value, 16) >= 0
    assert data.fingerprint(examples) == value
    assert data.fingerprint(examples[::-1]) != value
    changed = [dict(e) for e in examples]
    changed[2]["target"] += "!"
    assert data.fingerprint(changed) != value
    code = (
        "from tasks.data import fingerprint\n"
        "print(fingerprint([{'prompt': f'p{g}-0', 'target': f' t{g}-0', 'group': f'g{g}'} "
        "for g in range(5)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert out.stdout.strip() == value


# --------------------------------------------------------------------------------- prepare_data


def test_prepare_data_from_jsonl(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(300)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    kwargs = dict(prompt_field="q", target_field="a", val_size=30, test_size=50, seed=1)
    result = data.prepare_data(file, first_size=25, budget=200, **kwargs)
    assert result["sizes"] == [25, 50, 100, 200]
    assert len(result["train"]) == 200 and len(result["val"]) == 30 and len(result["test"]) == 50
    assert result["n_available"] == 300 and result["n_train_available"] == 220
    assert result["source"] == file
    assert result["subset_fingerprints"][25] == data.fingerprint(result["train"][:25])
    held_out = {e["prompt"] for e in result["val"] + result["test"]}
    assert not held_out & {e["prompt"] for e in result["train"]}
    again = data.prepare_data(file, first_size=25, budget=200, **kwargs)
    assert again["fingerprint"] == result["fingerprint"]
    # A smaller budget keeps the same test split and a prefix of the same train order.
    smaller = data.prepare_data(file, first_size=25, budget=100, **kwargs)
    assert smaller["test"] == result["test"] and smaller["train"] == result["train"][:100]
    json.dumps(result)  # plain data only


def test_prepare_data_too_small_fails_before_work(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(100)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    kwargs = dict(prompt_field="q", target_field="a", val_size=10, test_size=10, seed=0)
    with pytest.raises(ValueError, match="has 100 examples but .* needs 148; lower budget"):
        data.prepare_data(file, first_size=16, budget=128, **kwargs)
    with pytest.raises(ValueError, match="budget=100 must be first_size=16 times a power of two"):
        data.prepare_data(file, first_size=16, budget=100, **kwargs)
    with pytest.raises(ValueError, match="max_examples=50 is below"):
        data.prepare_data(file, first_size=16, budget=64, max_examples=50, **kwargs)


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="Debian package wordnet-base not installed")
def test_prepare_data_wordnet_max_examples():
    kwargs = dict(val_size=50, test_size=100, first_size=32, budget=256, seed=0)
    result = data.prepare_data("wordnet", max_examples=2000, **kwargs)
    assert result["n_available"] == 2000 and result["sizes"] == [32, 64, 128, 256]
    assert result == data.prepare_data("wordnet", max_examples=2000, **kwargs)
    assert not groups_of(result["train"]) & groups_of(result["test"])


def test_prepare_data_task_wraps_plain_function_and_cache_stamp(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(100)]
    file = write_jsonl(tmp_path / "qa.jsonl", rows)
    kwargs = dict(prompt_field="q", target_field="a", val_size=10, test_size=10, seed=0)
    result = data.prepare_data_task.fn(str(file), first_size=16, budget=64, **kwargs)
    assert result == data.prepare_data(str(file), first_size=16, budget=64, **kwargs)
    stamp = data.SourceFilesStamp()
    key = stamp.compute_key(None, {"source": str(file), "path": None}, {})
    write_jsonl(file, rows[:-1])
    assert stamp.compute_key(None, {"source": str(file), "path": None}, {}) != key
    assert stamp.compute_key(None, {"source": "org/hub-id", "path": None}, {}) is None
