"""Data layer of the selection pipeline: load a task dataset, split it, build the probe ladder.

Every example is a plain dict ``{"prompt": str, "target": str, "group": str}``. The probe
computes its loss on the target tokens only; ``prompt + target`` is the full text. ``group``
ties together examples that must never sit in two different splits (a WordNet synset, a man
page, identical prompts of a file source).

Sources
-------
``wordnet``
    WordNet 3.0 glosses from the Debian package ``wordnet-base``, one example per synset (its
    first lemma; ``all_lemmas=True`` gives one per lemma)::

        prompt: "Define the noun 'physical entity'.\\nDefinition:"
        target: " an entity that has physical existence"
        group:  "n:00001930"

``manpages``
    Man-page summarisation from the Debian packages ``manpages`` and ``manpages-dev``: the first
    paragraph of DESCRIPTION (roff markup removed, cut to ``max_description_chars``) -> the NAME
    one-line summary::

        prompt: "Summarize this man page description in one line.\\n<paragraph>\\nSummary:"
        target: " open and possibly create a file"
        group:  "open"

a local file (``.json``, ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, ``.txt``) or a hub id
    Loaded with ``datasets.load_dataset``; fields mapped with ``prompt_field`` / ``target_field``
    or a ``template`` such as ``"Question: {question}\\nAnswer:"`` plus ``target_field``.

Splits and ladder
-----------------
The test split is drawn first (it depends only on the examples, ``test_size`` and ``seed``), then
the validation split, by whole groups. The train split is shuffled once; every ladder size is a
prefix of that one order, so subsets are nested and shared by all candidates.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import string
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

logger = logging.getLogger(__name__)

Example = dict[str, str]


class DataError(ValueError):
    """The data set or its settings cannot give the probes what they need; the message says
    what to change (a field mapping, a size, a larger data set)."""


class DataSourceUnavailableError(ConnectionError):
    """A hub data set was named but cannot be loaded from here (hub offline or wrong id)."""


BUILTIN_SOURCES = ("wordnet", "manpages")
WORDNET_DIR = Path("/usr/share/wordnet")
MAN_DIR = Path("/usr/share/man")
MANPAGE_PACKAGES = ("manpages", "manpages-dev")
DPKG_INFO_DIR = Path("/var/lib/dpkg/info")
# Files formats `datasets` reads, by file extension.
FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
# Empty rows are dropped with a warning up to this fraction; above it the data set is rejected.
MAX_EMPTY_FRACTION = 0.05

_WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


# ---------------------------------------------------------------------------------------------
# WordNet
# ---------------------------------------------------------------------------------------------


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
    pos_name = _POS_NAMES[fields[2]]
    group = f"{file_pos}:{fields[0]}"
    lemmas = words if all_lemmas else words[:1]
    return [
        {
            "prompt": f"Define the {pos_name} '{_clean_lemma(word)}'.\nDefinition:",
            "target": f" {definition}",
            "group": group,
        }
        for word in lemmas
    ]


def _clean_lemma(word: str) -> str:
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
    wordnet_dir = Path(wordnet_dir)
    examples: list[Example] = []
    for pos in parts_of_speech:
        if pos not in _WORDNET_POS:
            raise DataError(
                f"unknown WordNet part of speech {pos!r}; choose from {sorted(_WORDNET_POS)}"
            )
        path = wordnet_dir / f"data.{pos}"
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet file {path} not found; install the Debian package 'wordnet-base' "
                "(`make data` or `apt-get install wordnet-base`) or pass the folder holding "
                "data.noun/data.verb/data.adj/data.adv"
            )
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                examples.extend(parse_wordnet_line(line, _WORDNET_POS[pos], all_lemmas=all_lemmas))
    return examples


# ---------------------------------------------------------------------------------------------
# Man pages
# ---------------------------------------------------------------------------------------------

_ROFF_NAMED_CHARS = {
    "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "em": "--", "en": "-",
    "hy": "-", "mi": "-", "bu": "*", "co": "(C)", "rg": "(R)", "tm": "(TM)", "ga": "`",
    "ti": "~", "ha": "^", "rs": "\\", "bv": "|", "or": "|", "mu": "x", "pl": "+", "eq": "=",
    "<=": "<=", ">=": ">=", "->": "->", "<-": "<-", "de": " degrees", "aa": "'", "dg": "+",
    "sc": "S", "ps": "P", "ct": "c", "Fo": "<<", "Fc": ">>", "fo": "<", "fc": ">",
}  # fmt: skip
_ROFF_STRINGS = {"lq": '"', "rq": '"', "R": "(R)", "Tm": "(TM)", "-": "--", "(--": "--"}
_ROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font change
    r"|s[-+]?(?:\d+|\(\d\d|\[\d+\])"  # size change
    r"|\((?P<c2>..)"  # two-letter named character
    r"|\[(?P<cn>[^\]]*)\]"  # long named character
    r"|\*(?:\((?P<s2>..)|\[(?P<sn>[^\]]*)\]|(?P<s1>.))"  # string register
    r"|[nk](?:\(..|\[[^\]]*\]|.)"  # number register / mark
    r"|[hvwloLDXbxZR]'[^']*'"  # motions, widths, drawing
    r"|(?P<lit>[-e\\.'`\" ~0|^&c%!:{}/,)acdprtu])"  # one-character escapes
    r")"
)
_LITERAL_ESCAPES = {"-": "-", "e": "\\", "\\": "\\", ".": ".", "'": "'", "`": "`", " ": " ",
                    "~": " ", "0": " "}  # fmt: skip
_PARAGRAPH_MACROS = {"PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "TQ", "in", "RS", "RE"}
_SECTION_MACROS = {"SH", "SS"}
_FONT_MACROS = {"B", "I", "SM", "SB", "BR", "RB", "BI", "IB", "IR", "RI"}
_ROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')


def _roff_escapes(text: str) -> str:
    """Replace roff escapes with plain text (font and size changes vanish)."""

    def replace(match: re.Match[str]) -> str:
        if match["c2"] is not None:
            return _ROFF_NAMED_CHARS.get(match["c2"], "")
        if match["cn"] is not None:
            name = match["cn"]
            if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
                return chr(int(name[1:], 16))
            return _ROFF_NAMED_CHARS.get(name, "")
        for key in ("s2", "sn", "s1"):
            if match[key] is not None:
                return _ROFF_STRINGS.get(match[key], "")
        if match["lit"] is not None:
            return _LITERAL_ESCAPES.get(match["lit"], "")
        return ""

    return _ROFF_ESCAPE.sub(replace, text)


def _roff_args(rest: str) -> list[str]:
    """Split macro arguments: blanks separate, double quotes group, ``""`` is a literal quote."""
    return [plain or quoted.replace('""', '"') for quoted, plain in _ROFF_ARG.findall(rest)]


def _roff_text_line(line: str) -> str | None:
    """Text of one roff line, ``""`` for a paragraph break, ``None`` for lines to ignore."""
    if not line.strip():
        return ""
    if line[0] not in ".'":
        return line
    macro, _, rest = line[1:].strip().partition(" ")
    if macro in _PARAGRAPH_MACROS:
        return ""
    if macro in _FONT_MACROS:
        args = _roff_args(rest)
        # Alternating-font macros join their arguments without spaces; B/I/SM keep them.
        return ("" if len(macro) == 2 and macro not in {"SM", "SB"} else " ").join(args)
    return None  # other requests (.nf, .UR, .TS, ...) carry no paragraph text


def _man_sections(lines: Iterable[str]) -> dict[str, list[str]]:
    """Group roff source lines by ``.SH`` section (upper-case title -> lines)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    pending = ""
    for raw in lines:
        line = pending + raw.rstrip("\n")
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]  # roff line continuation
            continue
        pending = ""
        if line.startswith(('.\\"', "'\\\"", ".\\#")) or line.startswith('\\"'):
            continue
        if line.startswith((".SH", "'SH")):
            title = " ".join(_roff_args(line[3:].strip()))
            current = sections.setdefault(_roff_escapes(title).strip().upper(), [])
            continue
        if current is not None:
            current.append(line)
    return sections


def _first_paragraph(lines: list[str]) -> str:
    words: list[str] = []
    for line in lines:
        if line.startswith((".SS", "'SS")):
            if words:
                break
            continue
        text = _roff_text_line(line)
        if text is None:
            continue
        if text == "":
            if words:
                break
            continue
        words.append(_roff_escapes(text))
    return " ".join(" ".join(words).split())


def _truncate(text: str, max_chars: int) -> str:
    """Cut at the last sentence end before ``max_chars`` if one is past half, else a word."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    sentence_end = head.rfind(". ")
    if sentence_end >= max_chars // 2:
        return head[: sentence_end + 1]
    cut = head.rsplit(" ", 1)[0]
    return cut if cut and len(cut) <= max_chars else text[:max_chars]


def parse_manpage(source: str, *, max_description_chars: int = 400) -> tuple[str, str] | None:
    """Extract (description paragraph, one-line summary) from roff man-page source.

    Parameters
    ----------
    source : str
        The roff text of one man page (already decompressed).
    max_description_chars : int
        The description is cut at the last word boundary before this many characters.

    Returns
    -------
    tuple of str or None
        ``None`` for pages that cannot be parsed: ``.so`` redirects, pages without a NAME line
        with a ``\\-`` separator, or without a DESCRIPTION paragraph.
    """
    lines = source.splitlines()
    if any(line.startswith(".so ") for line in lines[:5]):
        return None
    sections = _man_sections(lines)
    name_lines = sections.get("NAME")
    description_lines = sections.get("DESCRIPTION") or next(
        (lines for title, lines in sections.items() if "DESCRIPTION" in title), None
    )
    if not name_lines or not description_lines:
        return None
    name_text = " ".join(text for text in (_roff_text_line(line) for line in name_lines) if text)
    if "\\-" in name_text:
        summary = name_text.split("\\-", 1)[1]
    elif " - " in name_text:
        summary = name_text.split(" - ", 1)[1]
    else:
        return None
    summary = " ".join(_roff_escapes(summary).split())
    description = _truncate(_first_paragraph(description_lines), max_description_chars)
    if not summary or not description:
        return None
    return description, summary


def _package_man_files(packages: Sequence[str], dpkg_info_dir: Path) -> list[Path]:
    files: list[Path] = []
    for package in packages:
        listing = dpkg_info_dir / f"{package}.list"
        if not listing.is_file():
            raise FileNotFoundError(
                f"Debian package {package!r} is not installed (no {listing}); install the man "
                f"pages with `apt-get install {' '.join(MANPAGE_PACKAGES)}`, or pass "
                "packages=None to read every page under the man folder"
            )
        files.extend(Path(line) for line in listing.read_text().split() if line.endswith(".gz"))
    return files


def load_manpages(
    man_dir: str | Path = MAN_DIR,
    *,
    packages: Sequence[str] | None = MANPAGE_PACKAGES,
    max_description_chars: int = 400,
    dpkg_info_dir: str | Path = DPKG_INFO_DIR,
) -> list[Example]:
    """Load man-page summarisation examples (DESCRIPTION paragraph -> NAME summary).

    Parameters
    ----------
    man_dir : str or Path
        Root of the man hierarchy; pages are read from ``man1`` ... ``man8``.
    packages : sequence of str or None
        Read only the pages these Debian packages install (from dpkg's file lists), so the
        data set does not change when unrelated packages are installed. ``None`` reads every
        ``*.gz`` page under ``man_dir/man{1..8}``.
    max_description_chars : int
        Maximum length of the description in the prompt.
    dpkg_info_dir : str or Path
        dpkg's database of installed files (``<package>.list``).
    """
    man_dir = Path(man_dir)
    if packages is None:
        files = sorted(p for i in range(1, 9) for p in (man_dir / f"man{i}").glob("*.gz"))
    else:
        sections = {f"man{i}" for i in range(1, 9)}
        files = sorted(
            man_dir / p.parent.name / p.name
            for p in _package_man_files(packages, Path(dpkg_info_dir))
            if p.parent.parent == MAN_DIR and p.parent.name in sections
        )
    files = [path for path in files if path.is_file() and not path.is_symlink()]
    if not files:
        raise FileNotFoundError(
            f"no man pages found under {man_dir}/man1..man8; install the Debian packages "
            f"{' and '.join(MANPAGE_PACKAGES)} (`apt-get install {' '.join(MANPAGE_PACKAGES)}`)"
        )
    examples = []
    for path in files:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError) as err:
            logger.debug("skipping unreadable man page %s: %s", path, err)
            continue
        parsed = parse_manpage(text, max_description_chars=max_description_chars)
        if parsed is None:
            continue
        description, summary = parsed
        examples.append(
            {
                "prompt": (
                    f"Summarize this man page description in one line.\n{description}\nSummary:"
                ),
                "target": f" {summary}",
                "group": path.name.split(".", 1)[0],
            }
        )
    return examples


# ---------------------------------------------------------------------------------------------
# Files and hub data sets (datasets.load_dataset)
# ---------------------------------------------------------------------------------------------


def _template_fields(template: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise DataError(f"template {template!r} is not a valid format string: {err}") from err
    bad = [name for name in names if not name.isidentifier() or name == ""]
    if bad:
        raise DataError(
            f"template {template!r} may only use named placeholders like '{{question}}'; "
            f"got {bad}; write literal braces as '{{{{' and '}}}}'"
        )
    return list(dict.fromkeys(names))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def examples_from_rows(
    rows: dict[str, list[Any]],
    *,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    group_field: str | None = None,
    source: str = "data set",
) -> list[Example]:
    """Map columns of a table to prompt/target examples.

    Parameters
    ----------
    rows : dict of str to list
        Column name -> values (``Dataset.to_dict()`` or any column mapping).
    prompt_field, template : str, optional
        Exactly one: the column holding the prompt, or a format string whose ``{field}``
        placeholders are filled from each row (``""`` gives an empty prompt: language modelling).
    target_field : str
        The column holding the target text (the loss is measured on it).
    group_field : str, optional
        Column whose equal values must stay in one split; by default rows with identical prompts
        form a group.
    source : str
        Name of the data source, used in error messages.

    Raises
    ------
    DataError
        (a ``ValueError``) When a field is missing, or when more than 5 % of rows have an
        empty prompt or target (fewer are dropped with a warning).
    """
    if target_field is None:
        raise DataError(f"{source}: set target_field to the column holding the target text")
    if (prompt_field is None) == (template is None):
        raise DataError(
            f"{source}: set exactly one of prompt_field (a column) or template (a format string "
            f"with {{field}} placeholders); got prompt_field={prompt_field!r}, "
            f"template={template!r}"
        )
    n_rows = len(next(iter(rows.values()), []))
    prompt_fields = [prompt_field] if prompt_field is not None else _template_fields(template)
    wanted = {"target_field": [target_field], "prompt_field/template": prompt_fields}
    if group_field is not None:
        wanted["group_field"] = [group_field]
    for role, fields in wanted.items():
        for field in fields:
            if field not in rows:
                raise DataError(
                    f"{source}: {role} {field!r} is not a column (missing in all {n_rows} rows); "
                    f"available columns: {sorted(rows)}"
                )
    columns = {f: [_as_text(v) for v in rows[f]] for f in {target_field, *prompt_fields}}
    empty = [False] * n_rows
    for field, values in columns.items():
        n_empty = sum(not value.strip() for value in values)
        if n_empty and n_empty > MAX_EMPTY_FRACTION * n_rows:
            raise DataError(
                f"{source}: field {field!r} is missing or empty in {n_empty} of {n_rows} rows "
                f"(more than {MAX_EMPTY_FRACTION:.0%}); fix the data or map another field"
            )
        empty = [e or not value.strip() for e, value in zip(empty, values, strict=True)]
    if any(empty):
        warnings.warn(
            f"{source}: dropping {sum(empty)} of {n_rows} rows with an empty prompt or target "
            f"field",
            stacklevel=2,
        )
    examples = []
    groups = [_as_text(v) for v in rows[group_field]] if group_field is not None else None
    for i in range(n_rows):
        if empty[i]:
            continue
        if template is not None:
            prompt = template.format_map({f: columns[f][i] for f in prompt_fields})
        else:
            prompt = columns[prompt_field][i]
        group = groups[i] if groups is not None else _short_hash(prompt)
        examples.append({"prompt": prompt, "target": columns[target_field][i], "group": group})
    return examples


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_builder(path: str | Path) -> str:
    """The ``datasets`` builder name (json, csv, parquet, text) for a file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(
            f"cannot infer the format of {path}: extension {suffix!r} is not one of "
            f"{sorted(FILE_BUILDERS)}"
        )
    return FILE_BUILDERS[suffix]


def load_table(source: str, *, path: str | None = None, split: str = "train") -> dict[str, list]:
    """Load a local file or a hub data set as columns with ``datasets.load_dataset``.

    Parameters
    ----------
    source : str
        A local file path (format from its extension), a builder name (``json``, ``csv``,
        ``parquet``, ``text``) with the file in ``path``, or a hub data set id.
    path : str, optional
        The data file when ``source`` is a builder name.
    split : str
        Split of a hub data set.
    """
    import datasets  # slow import, only needed for file and hub sources

    builders = set(FILE_BUILDERS.values())
    if source in builders or Path(source).suffix.lower() in FILE_BUILDERS:
        file = Path(path) if source in builders else Path(source)
        if source in builders and path is None:
            raise DataError(f"source {source!r} needs path= naming the data file")
        if not file.is_file():
            raise FileNotFoundError(f"data file {file} does not exist")
        builder = source if source in builders else file_builder(file)
        kwargs = {"delimiter": "\t"} if file.suffix.lower() == ".tsv" else {}
        # A throw-away cache folder: this module keeps nothing on disk.
        with tempfile.TemporaryDirectory(prefix="lensllm-data-") as cache_dir:
            dataset = datasets.load_dataset(
                builder, data_files=str(file), split="train", cache_dir=cache_dir, **kwargs
            )
            return dataset.to_dict()
    if path is not None:
        raise DataError(
            f"path={path!r} only applies to built-in sources {BUILTIN_SOURCES} and file formats "
            f"{sorted(builders)}; for the hub data set {source!r} leave it unset"
        )
    try:
        dataset = datasets.load_dataset(source, split=split)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataSourceUnavailableError(
            f"could not load {source!r} from the Hugging Face hub: the hub is offline or "
            f"unreachable, or the id is wrong ({err}). Use a local file (.json/.jsonl/.csv/"
            f".parquet/.txt) or a built-in source ({', '.join(BUILTIN_SOURCES)})"
        ) from err
    return dataset.to_dict()


def load_examples(
    source: str,
    *,
    path: str | None = None,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    group_field: str | None = None,
) -> list[Example]:
    """Load examples from a built-in source, a local file or a hub data set.

    For built-in sources ``path`` is the folder to read instead of the system one
    (``/usr/share/wordnet``, ``/usr/share/man``) and the field mapping must be unset.
    """
    if source in BUILTIN_SOURCES:
        mapping = {"prompt_field": prompt_field, "target_field": target_field,
                   "template": template, "group_field": group_field}  # fmt: skip
        given = [name for name, value in mapping.items() if value is not None]
        if given:
            raise DataError(
                f"built-in source {source!r} has fixed fields; unset {', '.join(given)}"
            )
        if source == "wordnet":
            return load_wordnet(path or WORDNET_DIR)
        return load_manpages(path or MAN_DIR)
    table = load_table(source, path=path)
    return examples_from_rows(
        table,
        prompt_field=prompt_field,
        target_field=target_field,
        template=template,
        group_field=group_field,
        source=source if path is None else f"{source}:{path}",
    )


# ---------------------------------------------------------------------------------------------
# Splits, ladder, subsets, fingerprints
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _take_groups(
    order: Sequence[str], count: int, index: dict[str, list[int]]
) -> tuple[list[int], int]:
    """Indices of whole groups in ``order`` until ``count`` examples; returns (indices, n_used)."""
    taken: list[int] = []
    used = 0
    while len(taken) < count and used < len(order):
        taken.extend(index[order[used]])
        used += 1
    # The boundary group's extra members are dropped, never moved to another split.
    return taken[:count], used


def split_examples(
    examples: Sequence[Example], *, val_size: int, test_size: int, seed: int
) -> dict[str, list[Example]]:
    """Split examples into train/val/test by whole groups, deterministically.

    The groups are shuffled once with ``seed``; the test split takes the first groups, then
    the validation split, the rest is train. The test split therefore depends only on the
    examples, ``test_size`` and ``seed``. Surplus members of the group at a split boundary are
    dropped so that no group appears in two splits; train keeps the input order.
    """
    _check_int("val_size", val_size, 1)
    _check_int("test_size", test_size, 1)
    index: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        index.setdefault(example["group"], []).append(i)
    groups = list(index)
    if val_size + test_size >= len(examples):
        raise DataError(
            f"val_size={val_size} + test_size={test_size} leaves no training examples out of "
            f"{len(examples)}; lower them or use a larger data set"
        )
    order = [groups[i] for i in np.random.default_rng([seed, 0]).permutation(len(groups))]
    test_idx, used_test = _take_groups(order, test_size, index)
    val_idx, used_val = _take_groups(order[used_test:], val_size, index)
    held_out = set(order[: used_test + used_val])
    train = [ex for ex in examples if ex["group"] not in held_out]
    return {
        "train": train,
        "val": [examples[i] for i in val_idx],
        "test": [examples[i] for i in test_idx],
    }


def ladder_sizes(first_size: int, budget: int) -> list[int]:
    """Ladder of subset sizes ``first_size * 2**i`` up to and including ``budget``."""
    _check_int("first_size", first_size, 1)
    _check_int("budget", budget, 1)
    if budget < first_size:
        raise DataError(
            f"budget={budget} is smaller than first_size={first_size}; the ladder needs "
            "budget >= first_size"
        )
    ratio, remainder = divmod(budget, first_size)
    if remainder or ratio & (ratio - 1):
        below = first_size * 2 ** (ratio.bit_length() - 1)
        raise DataError(
            f"budget={budget} must be first_size={first_size} times a power of two; "
            f"use budget={below} or {below * 2}, or change first_size"
        )
    return [first_size * 2**i for i in range(ratio.bit_length())]


def nested_subsets(
    train: Sequence[Example], sizes: Sequence[int], *, seed: int
) -> dict[int, list[Example]]:
    """Nested training subsets: prefixes of one seeded shuffle of ``train``, one per size."""
    if not sizes:
        return {}
    largest = max(sizes)
    if len(train) < largest:
        raise DataError(
            f"the train split has {len(train)} examples but the ladder needs {largest} "
            f"(budget); lower budget to at most {len(train)} (first_size * 2**k) or use a "
            "larger data set (or a larger max_examples, or smaller val_size/test_size)"
        )
    order = np.random.default_rng([seed, 1]).permutation(len(train))[:largest]
    shuffled = [train[i] for i in order]
    return {int(size): shuffled[:size] for size in sizes}


def fingerprint(examples: Iterable[Example]) -> str:
    """Short, order-sensitive sha256 hex digest of the examples' content (stable across runs)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _limit_examples(examples: list[Example], max_examples: int, seed: int) -> list[Example]:
    """A seeded sample of whole groups holding ``max_examples`` examples (input order kept)."""
    if len(examples) <= max_examples:
        return examples
    index: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        index.setdefault(example["group"], []).append(i)
    groups = list(index)
    order = [groups[i] for i in np.random.default_rng([seed, 2]).permutation(len(groups))]
    kept, _ = _take_groups(order, max_examples, index)
    return [examples[i] for i in sorted(kept)]


def prepare_data(
    source: str,
    *,
    path: str | None = None,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    val_size: int,
    test_size: int,
    first_size: int,
    budget: int,
    seed: int,
    max_examples: int | None = None,
    group_field: str | None = None,
) -> dict[str, Any]:
    """Load, split and subsample a task data set for probing; validates everything first.

    Parameters
    ----------
    source : str
        ``wordnet``, ``manpages``, a local file path, a builder name (``json``, ``csv``,
        ``parquet``, ``text``) with ``path``, or a hub data set id.
    path : str, optional
        For built-ins, the folder to read; for a builder name, the data file.
    prompt_field, target_field, template, group_field : str, optional
        Field mapping of file and hub sources (see :func:`examples_from_rows`).
    val_size, test_size : int
        Fixed validation and test split sizes (shared by every candidate and ladder size).
    first_size, budget : int
        The ladder ``first_size * 2**i`` up to ``budget``.
    seed : int
        Seed of the split, the train shuffle and the ``max_examples`` sample.
    max_examples : int, optional
        Use a seeded sample of this many examples (whole groups) before splitting.

    Returns
    -------
    dict
        ``train`` (the shuffled train examples, first ``budget`` of them; the subset of size
        ``s`` is ``train[:s]``), ``val``, ``test``, ``sizes``, ``fingerprint`` (of train, val
        and test), ``subset_fingerprints`` (size -> fingerprint of ``train[:size]``),
        ``val_fingerprint``, ``test_fingerprint``, ``source``, ``n_available`` (examples
        loaded, after ``max_examples``) and ``n_train_available`` (size of the train split).
    """
    sizes = ladder_sizes(first_size, budget)
    _check_int("val_size", val_size, 1)
    _check_int("test_size", test_size, 1)
    _check_int("seed", seed, 0)
    if max_examples is not None:
        _check_int("max_examples", max_examples, 1)
        if max_examples < val_size + test_size + budget:
            raise DataError(
                f"max_examples={max_examples} is below val_size + test_size + budget = "
                f"{val_size + test_size + budget}; raise max_examples or lower the others"
            )
    examples = load_examples(
        source, path=path, prompt_field=prompt_field, target_field=target_field,
        template=template, group_field=group_field,
    )  # fmt: skip
    if max_examples is not None:
        examples = _limit_examples(examples, max_examples, seed)
    needed = val_size + test_size + budget
    if len(examples) < needed:
        raise DataError(
            f"data set {source!r} has {len(examples)} examples but val_size={val_size} + "
            f"test_size={test_size} + budget={budget} needs {needed}; lower budget or "
            "val_size/test_size, or use a larger data set"
        )
    splits = split_examples(examples, val_size=val_size, test_size=test_size, seed=seed)
    subsets = nested_subsets(splits["train"], sizes, seed=seed)
    train = subsets[budget]
    return {
        "train": train,
        "val": splits["val"],
        "test": splits["test"],
        "sizes": sizes,
        "fingerprint": fingerprint([*train, *splits["val"], *splits["test"]]),
        "subset_fingerprints": {size: fingerprint(train[:size]) for size in sizes},
        "val_fingerprint": fingerprint(splits["val"]),
        "test_fingerprint": fingerprint(splits["test"]),
        "source": source if path is None else f"{source}:{path}",
        "n_available": len(examples),
        "n_train_available": len(splits["train"]),
    }


# ---------------------------------------------------------------------------------------------
# Prefect
# ---------------------------------------------------------------------------------------------


class SourceFilesStamp(CachePolicy):
    """Cache-key part that changes when the files behind a local or built-in source change.

    Prefect's INPUTS policy sees only the path string; this adds the size and modification time
    of the data files, so an edited file or an upgraded Debian package invalidates the cache.
    Hub ids contribute nothing (their revision is the hub's business).
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        files = _source_files(inputs.get("source", ""), inputs.get("path"))
        if not files:
            return None
        stamps = []
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            stamps.append(f"{file}:{stat.st_size}:{stat.st_mtime_ns}")
        return _short_hash("\n".join(stamps))


def _source_files(source: str, path: str | None) -> list[Path]:
    if source == "wordnet":
        folder = Path(path or WORDNET_DIR)
        return [folder / f"data.{pos}" for pos in _WORDNET_POS]
    if source == "manpages":
        # dpkg's file lists change when either package is upgraded; a custom folder is scanned.
        if path is None:
            return [DPKG_INFO_DIR / f"{package}.list" for package in MANPAGE_PACKAGES]
        return sorted(Path(path).glob("man[1-8]/*.gz"))
    if source in set(FILE_BUILDERS.values()):
        return [Path(path)] if path else []
    if Path(source).suffix.lower() in FILE_BUILDERS:
        return [Path(source)]
    return []


@task(
    name="prepare-data",
    cache_policy=INPUTS + TASK_SOURCE + SourceFilesStamp(),
    persist_result=True,
)
def prepare_data_task(
    source: str,
    *,
    path: str | None = None,
    prompt_field: str | None = None,
    target_field: str | None = None,
    template: str | None = None,
    val_size: int,
    test_size: int,
    first_size: int,
    budget: int,
    seed: int,
    max_examples: int | None = None,
    group_field: str | None = None,
) -> dict[str, Any]:
    """Prefect task around :func:`prepare_data` (cached on inputs and data-file stamps)."""
    # Output format version 1: bump this comment when prepare_data's output changes, so that
    # TASK_SOURCE invalidates cached results.
    return prepare_data(
        source, path=path, prompt_field=prompt_field, target_field=target_field,
        template=template, val_size=val_size, test_size=test_size, first_size=first_size,
        budget=budget, seed=seed, max_examples=max_examples, group_field=group_field,
    )  # fmt: skip
