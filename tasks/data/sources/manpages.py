"""Man-page summarisation from the Debian packages ``manpages`` and ``manpages-dev``: the first
paragraph of DESCRIPTION (roff markup removed, cut to ``max_description_chars``) -> the NAME
one-line summary::

    prompt: "Summarize this man page description in one line.\\n<paragraph>\\nSummary:"
    target: " open and possibly create a file"
    group:  "open"
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tasks.records.errors import MissingFileError
from tasks.records.schema import DataSpec, Example

logger = logging.getLogger(__name__)

NAME = "manpages"
MAN_DIR = Path("/usr/share/man")
MANPAGE_PACKAGES = ("manpages", "manpages-dev")
DPKG_INFO_DIR = Path("/var/lib/dpkg/info")

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
            raise MissingFileError(
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
        raise MissingFileError(
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


def load(spec: DataSpec) -> list[Example]:
    """The examples of the man-page source (``spec.path``: another man folder)."""
    return load_manpages(spec.path or MAN_DIR)


def files(spec: DataSpec) -> list[Path]:
    """dpkg's file lists of both packages (they change when either is upgraded), or the pages
    of a custom folder."""
    if spec.path is None:
        return [DPKG_INFO_DIR / f"{package}.list" for package in MANPAGE_PACKAGES]
    return sorted(Path(spec.path).glob("man[1-8]/*.gz"))
