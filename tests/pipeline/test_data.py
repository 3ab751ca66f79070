"""Tests of the data layer (tasks/data/): built-in sources in their registry, file sources,
splits, the ladder and prepare_data's PreparedData."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks import data
from tasks.data import splits
from tasks.data.prepare import SourceFilesStamp
from tasks.data.sources import BUILTIN, files, hub, manpages, source_for, wordnet
from tasks.records.errors import (
    ConfigError,
    DataError,
    DataSourceUnavailableError,
    MissingFileError,
)
from tasks.records.schema import DataSpec, Ladder, PreparedData, ProbeData

WORDNET_INSTALLED = (wordnet.WORDNET_DIR / "data.noun").is_file()
MANPAGES_INSTALLED = (manpages.DPKG_INFO_DIR / "manpages.list").is_file() and (
    manpages.MAN_DIR / "man2" / "open.2.gz"
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
    (example,) = wordnet.parse_wordnet_line(NOUN_LINE, "n")
    assert example == {
        "prompt": "Define the noun 'abstraction'.\nDefinition:",
        "target": " a general concept formed by extracting common features from specific examples",
        "group": "n:00002137",
    }


def test_parse_wordnet_line_verb_drops_usage_examples_and_all_lemmas_share_group():
    examples = wordnet.parse_wordnet_line(VERB_LINE, "v", all_lemmas=True)
    assert [e["prompt"].split("'")[1] for e in examples] == [
        "breathe",
        "take a breath",
        "respire",
        "suspire",
    ]
    assert {e["target"] for e in examples} == {" draw air into, and expel out of, the lungs"}
    assert groups_of(examples) == {"v:00001740"}


def test_parse_wordnet_line_satellite_adjective_and_header():
    (example,) = wordnet.parse_wordnet_line(SATELLITE_LINE, "a")
    assert example["prompt"] == "Define the adjective 'outback'.\nDefinition:"
    assert example["target"] == " inaccessible and sparsely populated"
    assert wordnet.parse_wordnet_line(HEADER_LINE, "n") == []


def test_load_wordnet_from_folder_and_missing_folder(tmp_path):
    (tmp_path / "data.noun").write_text(HEADER_LINE + NOUN_LINE)
    (tmp_path / "data.verb").write_text(VERB_LINE)
    examples = wordnet.load_wordnet(tmp_path, parts_of_speech=("noun", "verb"))
    assert [e["group"] for e in examples] == ["n:00002137", "v:00001740"]
    with pytest.raises(MissingFileError, match="wordnet-base"):
        wordnet.load_wordnet(tmp_path)  # no data.adj
    with pytest.raises(DataError, match="part of speech"):
        wordnet.load_wordnet(tmp_path, parts_of_speech=("pronoun",))


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="Debian package wordnet-base not installed")
def test_load_wordnet_full_count_and_speed():
    start = time.perf_counter()
    examples = wordnet.load_wordnet()
    elapsed = time.perf_counter() - start
    # WordNet 3.0 has 117,659 synsets, each with a definition.
    assert len(examples) == 117_659
    assert len(groups_of(examples)) == len(examples)
    assert all(e["target"].startswith(" ") and len(e["target"]) > 2 for e in examples)
    assert not any("_" in e["prompt"] for e in examples)
    assert elapsed < 5, f"parsing WordNet took {elapsed:.1f} s"


# --------------------------------------------------------------------------------- man pages


def test_parse_manpage_description_and_summary():
    description, summary = manpages.parse_manpage(OPEN_ROFF)
    assert summary == "open and possibly create a file"
    assert description == (
        "The open() system call opens the file specified by pathname. If the specified file "
        "does not exist, it may optionally (if O_CREAT is specified in flags) be created by open()."
    )
    short, _ = manpages.parse_manpage(OPEN_ROFF, max_description_chars=40)
    assert short == "The open() system call opens the file"


def test_parse_manpage_skips_redirects_and_pages_without_sections():
    assert manpages.parse_manpage(".so man2/open.2\n") is None
    assert manpages.parse_manpage(".SH NAME\nfoo \\- bar\n") is None  # no DESCRIPTION
    assert manpages.parse_manpage(".SH NAME\nfoo\n.SH DESCRIPTION\nText.\n") is None  # no \-


def test_load_manpages_from_folder_and_missing(tmp_path):
    (tmp_path / "man2").mkdir()
    (tmp_path / "man2" / "open.2.gz").write_bytes(gzip.compress(OPEN_ROFF.encode()))
    (tmp_path / "man2" / "creat.2.gz").write_bytes(gzip.compress(b".so man2/open.2\n"))
    (tmp_path / "man2" / "broken.2.gz").write_bytes(b"not gzip")
    (example,) = manpages.load_manpages(tmp_path, packages=None)
    assert example["group"] == "open"
    assert example["target"] == " open and possibly create a file"
    assert example["prompt"].startswith("Summarize this man page description in one line.\n")
    assert example["prompt"].endswith("by open().\nSummary:")
    with pytest.raises(MissingFileError, match="manpages and manpages-dev"):
        manpages.load_manpages(tmp_path / "empty", packages=None)
    with pytest.raises(MissingFileError, match="apt-get install manpages manpages-dev"):
        manpages.load_manpages(packages=("manpages",), dpkg_info_dir=tmp_path)


@pytest.mark.skipif(not MANPAGES_INSTALLED, reason="Debian packages manpages(-dev) missing")
def test_load_manpages_real_packages():
    examples = manpages.load_manpages()
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
    examples = data.load_examples(
        DataSpec(source=str(file), prompt_field="question", target_field="answer")
    )
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
        DataSpec(
            source="csv",
            path=str(file),
            template="Q: {question} ({topic})\nA:",
            target_field="answer",
            group_field="topic",
        )
    )
    assert examples[2] == {"prompt": "Q: What is 2 + 2? (t2)\nA:", "target": "4", "group": "t2"}
    assert len(groups_of(examples)) == 7


def test_field_mapping_errors(tmp_path, qa_rows):
    file = str(write_jsonl(tmp_path / "qa.jsonl", qa_rows))

    def load(**fields):
        return data.load_examples(DataSpec(source=file, **fields))

    with pytest.raises(DataError, match=r"'label' is not a column \(missing in all 60 rows\)"):
        load(prompt_field="question", target_field="label")
    with pytest.raises(DataError, match="'subject'.*missing in all 60 rows"):
        load(template="{subject}: {question}", target_field="answer")
    with pytest.raises(DataError, match="exactly one of prompt_field"):
        load(target_field="answer")
    with pytest.raises(DataError, match="target_field"):
        load(prompt_field="question")
    with pytest.raises(DataError, match="fixed fields; unset prompt_field"):
        data.load_examples(DataSpec(source="wordnet", prompt_field="question"))
    with pytest.raises(DataError, match="extension"):
        files.file_builder("data.xlsx")
    with pytest.raises(DataError, match="needs path="):
        data.load_examples(DataSpec(source="json", prompt_field="q", target_field="a"))


def test_empty_rows_dropped_with_warning_or_rejected(tmp_path, qa_rows):
    few = [dict(r) for r in qa_rows]
    few[5]["answer"] = ""
    file = str(write_jsonl(tmp_path / "few.jsonl", few))
    spec = DataSpec(source=file, prompt_field="question", target_field="answer")
    with pytest.warns(UserWarning, match="dropping 1 of 60 rows"):
        examples = data.load_examples(spec)
    assert len(examples) == 59
    many = [dict(r) for r in qa_rows]
    for row in many[:10]:
        del row["answer"]
    file = str(write_jsonl(tmp_path / "many.jsonl", many))
    with pytest.raises(DataError, match="'answer' is missing or empty in 10 of 60 rows"):
        data.load_examples(DataSpec(source=file, prompt_field="question", target_field="answer"))


def _qa_spec(file: Path, **extra) -> DataSpec:
    return DataSpec(source=str(file), prompt_field="question", target_field="answer", **extra)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.jsonl", '{"question": "q", "answer": "a"}\n[1, 2]\n', "line 2: the record is a list"),
        ("a.jsonl", '{"question": "q", "answer": "a"}\n{"question": }\n', "line 2: not valid JSON"),
        (
            "a.json",
            '[{"question": "q", "answer": "a"}, "text"]',
            "record 2: the record is a string",
        ),
        ("a.csv", "question,answer\nq,a\nq,a,extra\n", "line 3: 3 fields but the header has 2"),
        (
            "a.jsonl",
            '{"question": "q", "answer": "a"}\n{"question": "q", "answer": ["a"]}\n',
            "line 2: field 'answer' holds a list ([\"a\"]), not text",
        ),
    ],
    ids=["list-record", "not-json", "json-array-string", "ragged-csv", "list-value"],
)
def test_a_bad_row_is_named_by_file_and_line_or_skipped(tmp_path, name, text, message):
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(DataError, match="on_bad_rows: skip") as err:
        data.load_examples(_qa_spec(file))
    assert str(err.value).startswith(f"{file} {message}"), err.value
    with pytest.warns(UserWarning, match=f"skipping 1 of 2 rows .*{message.split(':')[0]}"):
        loaded = data.read_examples(_qa_spec(file, on_bad_rows="skip"))
    assert [ex["prompt"] for ex in loaded.examples] == ["q"]
    assert loaded.skipped_summary() == f"1 ({message.split(':')[0]})"


def test_an_unreadable_parquet_file_is_named(tmp_path):
    file = tmp_path / "qa.parquet"
    file.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=f"{file}: cannot be read as Parquet"):
        data.load_examples(_qa_spec(file))


def test_parquet_rows_and_numbers_read_as_text_with_a_note(tmp_path):
    pd = pytest.importorskip("pandas")
    file = tmp_path / "qa.parquet"
    pd.DataFrame({"question": ["1 + 1", "2 + 2"], "answer": [2, 4]}).to_parquet(file)
    with pytest.warns(UserWarning, match="'answer' holds a number or boolean in 2 rows"):
        examples = data.load_examples(_qa_spec(file))
    assert [ex["target"] for ex in examples] == ["2", "4"]


def test_duplicates_that_leave_a_split_short_are_named(tmp_path):
    rows = [{"question": "same", "answer": "same"}] * 250 + [
        {"question": f"q{i}", "answer": f"a{i}"} for i in range(50)
    ]
    file = write_jsonl(tmp_path / "dupes.jsonl", rows)
    spec = _qa_spec(file, val_size=16, test_size=16)
    with pytest.raises(DataError, match=r"300 examples, 51 distinct \(249 duplicates\), in 51"):
        data.prepare_data(spec, Ladder(first_size=16, budget=64))
    prepared = data.prepare_data(spec, Ladder(first_size=8, budget=16))
    assert (prepared.n_distinct, prepared.n_groups, prepared.skipped_rows) == (51, 51, "0")


def test_hub_id_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = DataSpec(source="someone/some-dataset", prompt_field="q", target_field="a")
    with pytest.raises(DataSourceUnavailableError, match="hub is offline.*local file.*wordnet"):
        data.load_examples(spec)


def test_missing_file():
    with pytest.raises(MissingFileError, match="does not exist"):
        data.load_examples(DataSpec(source="nowhere/qa.jsonl", prompt_field="q", target_field="a"))


# --------------------------------------------------------------------------------- splits


def test_split_is_group_aware_exact_and_deterministic():
    examples = make_examples(300, per_group=3)
    parts = splits.split_examples(examples, val_size=50, test_size=100, seed=7)
    assert len(parts["test"]) == 100 and len(parts["val"]) == 50
    train, val, test = (groups_of(parts[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert parts == splits.split_examples(examples, val_size=50, test_size=100, seed=7)
    assert (
        parts["test"] != splits.split_examples(examples, val_size=50, test_size=100, seed=8)["test"]
    )
    # The test split does not depend on the validation size.
    assert (
        parts["test"] == splits.split_examples(examples, val_size=20, test_size=100, seed=7)["test"]
    )


def test_split_rejects_sizes_that_leave_no_train():
    with pytest.raises(DataError, match="leaves no training examples out of 10"):
        splits.split_examples(make_examples(10), val_size=5, test_size=5, seed=0)
    with pytest.raises(DataError, match="val_size must be an integer >= 1"):
        splits.split_examples(make_examples(10), val_size=0, test_size=5, seed=0)


def test_ladder_sizes():
    assert Ladder(first_size=200, budget=3200).sizes() == [200, 400, 800, 1600, 3200]
    assert Ladder(first_size=64, budget=64).sizes() == [64]
    assert Ladder().sizes() == [32, 64, 128, 256]  # the config's default ladder
    # bad ladders are pydantic ValidationErrors (ValueErrors) that say what to use instead
    with pytest.raises(
        ValidationError, match=r"budget \(100\) is smaller than .*first_size \(200\)"
    ):
        Ladder(first_size=200, budget=100)
    with pytest.raises(ValueError, match=r"times a power of two .*: use 800 or 1600"):
        Ladder(first_size=200, budget=1000)
    with pytest.raises(ValidationError, match="power of two"):
        Ladder(first_size=200, budget=1250)
    with pytest.raises(ValidationError, match="first_size"):
        Ladder(first_size=0, budget=100)
    with pytest.raises(ValidationError, match="extra"):
        Ladder(first_size=16, budget=64, sizes=[16, 32])  # unknown fields are errors


def test_bad_ladder_in_a_config_is_a_config_error():
    from flows.config import load_config

    overrides = [
        "candidates=[tiny-llama, smollm2-135m-l2]",
        "ladder.first_size=200",
        "ladder.budget=1000",
    ]
    with pytest.raises(ConfigError, match=r"ladder: .*power of two .*use 800 or 1600"):
        load_config(None, overrides)
    good = ["candidates=[tiny-llama, smollm2-135m-l2]", "ladder.first_size=16", "ladder.budget=64"]
    assert load_config(None, good).ladder == Ladder(first_size=16, budget=64)


def test_nested_subsets_nested_deterministic_and_disjoint_from_val_test():
    examples = make_examples(400, per_group=2)
    parts = splits.split_examples(examples, val_size=40, test_size=60, seed=3)
    sizes = Ladder(first_size=25, budget=400).sizes()
    subsets = splits.nested_subsets(parts["train"], sizes, seed=3)
    assert list(subsets) == sizes
    for small, large in zip(sizes, sizes[1:], strict=False):
        assert subsets[large][:small] == subsets[small]
    assert subsets == splits.nested_subsets(parts["train"], sizes, seed=3)
    assert subsets[400] != splits.nested_subsets(parts["train"], sizes, seed=4)[400]
    held_out = groups_of(parts["val"]) | groups_of(parts["test"])
    assert not groups_of(subsets[400]) & held_out
    assert len({e["prompt"] for e in subsets[400]}) == 400


def test_nested_subsets_too_small_says_what_to_change():
    with pytest.raises(DataError, match="has 30 examples but the ladder needs 64.*lower budget"):
        splits.nested_subsets(make_examples(30), [16, 32, 64], seed=0)


def test_fingerprint_stable_order_sensitive_and_same_in_another_process():
    examples = make_examples(5)
    value = splits.fingerprint(examples)
    assert len(value) == 16 and int(value, 16) >= 0
    assert splits.fingerprint(examples) == value
    assert splits.fingerprint(examples[::-1]) != value
    changed = [dict(e) for e in examples]
    changed[2]["target"] += "!"
    assert splits.fingerprint(changed) != value
    code = (
        "from tasks.data.splits import fingerprint\n"
        "print(fingerprint([{'prompt': f'p{g}-0', 'target': f' t{g}-0', 'group': f'g{g}'} "
        "for g in range(5)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == value


# --------------------------------------------------------------------------------- prepare_data


def test_prepare_data_from_jsonl(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(300)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    spec = DataSpec(
        source=file, prompt_field="q", target_field="a", val_size=30, test_size=50, seed=1
    )
    result = data.prepare_data(spec, Ladder(first_size=25, budget=200))
    assert isinstance(result, PreparedData)
    assert result.sizes == [25, 50, 100, 200]
    assert len(result.train) == 200 and len(result.val) == 30 and len(result.test) == 50
    assert result.n_available == 300 and result.n_train_available == 220
    assert result.source == file
    assert result.subset_fingerprints[25] == splits.fingerprint(result.train[:25])
    assert set(result.subset_fingerprints) == {25, 50, 100, 200}
    assert result.val_fingerprint == splits.fingerprint(result.val)
    assert result.test_fingerprint == splits.fingerprint(result.test)
    held_out = {e["prompt"] for e in result.val + result.test}
    assert not held_out & {e["prompt"] for e in result.train}
    again = data.prepare_data(spec, Ladder(first_size=25, budget=200))
    assert again.fingerprint == result.fingerprint
    # A smaller budget keeps the same test split and a prefix of the same train order.
    smaller = data.prepare_data(spec, Ladder(first_size=25, budget=100))
    assert smaller.test == result.test and smaller.train == result.train[:100]
    # plain data only: the record round-trips through JSON (MLflow, Prefect's result store)
    assert PreparedData.model_validate_json(result.model_dump_json()) == result
    json.loads(result.model_dump_json())


def test_prepared_data_for_probe_gives_the_nested_subset_and_fixed_splits(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(300)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    spec = DataSpec(source=file, prompt_field="q", target_field="a", val_size=30, test_size=50)
    prepared = data.prepare_data(spec, Ladder(first_size=25, budget=200))
    for size in prepared.sizes:
        probe = prepared.for_probe(size)
        assert isinstance(probe, ProbeData)
        assert probe.train == prepared.train[:size] and probe.size == size
        assert probe.val == prepared.val and probe.test == prepared.test
        assert probe.train_fingerprint == prepared.subset_fingerprints[size]
        assert probe.train_fingerprint == splits.fingerprint(probe.train)
        assert probe.test_fingerprint == prepared.test_fingerprint
        assert probe.source == prepared.source
    zero_shot = prepared.for_probe(0)
    assert zero_shot.train == [] and zero_shot.size == 0 and zero_shot.train_fingerprint is None
    assert zero_shot.test == prepared.test and zero_shot.val == prepared.val
    # any size up to the prepared pool (here the budget: no target given), e.g. for an audit
    assert prepared.for_probe(30).train_fingerprint == splits.fingerprint(prepared.train[:30])
    with pytest.raises(ValueError, match=r"size 201 is outside the prepared training pool"):
        prepared.for_probe(201)
    with pytest.raises(ValidationError):  # records are frozen
        prepared.for_probe(25).train = []


def test_prepared_data_dataset_name_is_path_safe(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(100)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    spec = DataSpec(source="json", path=file, prompt_field="q", target_field="a", val_size=10,
                    test_size=10)  # fmt: skip
    prepared = data.prepare_data(spec, Ladder(first_size=16, budget=64))
    assert prepared.source == f"json:{file}"
    assert "/" not in prepared.dataset_name
    assert prepared.dataset_name == prepared.source.replace("/", "_")


def test_prepare_data_too_small_fails_before_work(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(100)]
    file = str(write_jsonl(tmp_path / "qa.jsonl", rows))
    spec = DataSpec(source=file, prompt_field="q", target_field="a", val_size=10, test_size=10)
    with pytest.raises(DataError, match="has 100 examples but .* needs 148; lower budget"):
        data.prepare_data(spec, Ladder(first_size=16, budget=128))
    # a ladder that does not double cannot even be built (load_config reports it as ConfigError)
    with pytest.raises(
        ValidationError, match=r"budget \(100\) must be ladder.first_size \(16\) times a power"
    ):
        Ladder(first_size=16, budget=100)
    limited = spec.model_copy(update={"max_examples": 50})
    with pytest.raises(DataError, match="max_examples=50 is below"):
        data.prepare_data(limited, Ladder(first_size=16, budget=64))
    # the data spec validates its own fields
    with pytest.raises(ValidationError, match="val_size"):
        DataSpec(source=file, val_size=0)


@pytest.mark.skipif(not WORDNET_INSTALLED, reason="Debian package wordnet-base not installed")
def test_prepare_data_wordnet_max_examples():
    spec = DataSpec(source="wordnet", val_size=50, test_size=100, max_examples=2000, seed=0)
    ladder = Ladder(first_size=32, budget=256)
    result = data.prepare_data(spec, ladder)
    assert result.n_available == 2000 and result.sizes == [32, 64, 128, 256]
    assert result == data.prepare_data(spec, ladder)
    assert not groups_of(result.train) & groups_of(result.test)


def test_prepare_data_task_wraps_plain_function_and_cache_stamp(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(100)]
    file = write_jsonl(tmp_path / "qa.jsonl", rows)
    spec = DataSpec(
        source=str(file), prompt_field="q", target_field="a", val_size=10, test_size=10, seed=0
    )
    ladder = Ladder(first_size=16, budget=64)
    result = data.prepare_data_task.fn(spec, ladder)
    assert result == data.prepare_data(spec, ladder)
    stamp = SourceFilesStamp()
    key = stamp.compute_key(None, {"spec": spec, "ladder": ladder}, {})
    assert key is not None
    write_jsonl(file, rows[:-1])
    assert stamp.compute_key(None, {"spec": spec, "ladder": ladder}, {}) != key
    hub_spec = DataSpec(source="org/hub-id", prompt_field="q", target_field="a")
    assert stamp.compute_key(None, {"spec": hub_spec, "ladder": ladder}, {}) is None


# --------------------------------------------------------------------------------- registry


def test_builtin_sources_are_registered_by_name():
    assert BUILTIN.names() == ["wordnet", "manpages", "wordnet-examples", "freedict"]
    assert BUILTIN.get("wordnet") is wordnet and BUILTIN.get("manpages") is manpages
    assert source_for(DataSpec(source="wordnet")) is wordnet
    assert source_for(DataSpec(source="manpages")) is manpages
    assert source_for(DataSpec(source="data/qa.jsonl")) is files
    assert source_for(DataSpec(source="parquet", path="data/qa.parquet")) is files
    assert source_for(DataSpec(source="someone/some-dataset")) is hub
    assert data.BUILTIN is BUILTIN


@pytest.mark.parametrize(
    ("source", "suggestion"),
    [("wordnt", "wordnet"), ("manpage", "manpages"), ("wordnets", "wordnet")],
)
def test_misspelt_builtin_source_suggests_the_builtin(source, suggestion):
    with pytest.raises(
        DataError, match=f"unknown data source '{source}': did you mean '{suggestion}'"
    ):
        source_for(DataSpec(source=source))
    with pytest.raises(DataError, match="Built-in sources: wordnet, manpages, wordnet-examples"):
        data.load_examples(DataSpec(source=source))  # never sent to the hub


def test_hub_id_close_to_a_builtin_is_not_taken_for_it():
    # an org/name id goes to the hub even when its text is close to a built-in's name
    assert source_for(DataSpec(source="wordnet/x")) is hub


def test_builtin_source_reads_spec_path(tmp_path):
    for pos, line in (("noun", NOUN_LINE), ("verb", VERB_LINE), ("adj", SATELLITE_LINE)):
        (tmp_path / f"data.{pos}").write_text(HEADER_LINE + line)
    (tmp_path / "data.adv").write_text(HEADER_LINE)
    spec = DataSpec(source="wordnet", path=str(tmp_path))
    examples = data.load_examples(spec)
    assert [e["group"] for e in examples] == ["n:00002137", "v:00001740", "a:00020103"]
    assert data.source_files(spec) == [
        tmp_path / f"data.{p}" for p in ("noun", "verb", "adj", "adv")
    ]
    with pytest.raises(MissingFileError, match="wordnet-base"):
        data.load_examples(DataSpec(source="wordnet", path=str(tmp_path / "none")))


def test_source_files_per_source(tmp_path):
    file = tmp_path / "qa.jsonl"
    assert data.source_files(DataSpec(source=str(file))) == [file]
    assert data.source_files(DataSpec(source="csv", path=str(file))) == [file]
    assert data.source_files(DataSpec(source="org/name")) == []
    assert data.source_files(DataSpec(source="manpages")) == [
        manpages.DPKG_INFO_DIR / "manpages.list",
        manpages.DPKG_INFO_DIR / "manpages-dev.list",
    ]


def test_a_registered_source_is_used_by_name(tmp_path, monkeypatch):
    """Adding a built-in source is one module registered in BUILTIN."""
    toy = types.SimpleNamespace(
        NAME="toy",
        load=lambda spec: make_examples(200),
        files=lambda spec: [tmp_path / "toy.txt"],
    )
    monkeypatch.setattr(BUILTIN, "_items", dict(BUILTIN._items))  # leave the real one alone
    BUILTIN.register("toy")(toy)
    with pytest.raises(ValueError, match="already registered"):
        BUILTIN.register("toy")(toy)
    spec = DataSpec(source="toy", val_size=10, test_size=10)
    assert source_for(spec) is toy
    assert data.source_files(spec) == [tmp_path / "toy.txt"]
    prepared = data.prepare_data(spec, Ladder(first_size=16, budget=64))
    assert prepared.source == "toy" and prepared.n_available == 200
    with pytest.raises(DataError, match="fixed fields"):
        source_for(DataSpec(source="toy", target_field="a"))
