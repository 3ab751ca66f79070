"""Where a task's examples come from. Every source is a small module with ``load(spec)`` (the
examples) and ``files(spec)`` (the files behind them, whose stamps key the data cache):

* built-ins, by name (:data:`BUILTIN`): ``wordnet`` (:mod:`.wordnet`), ``wordnet-examples``
  (:mod:`.wordnet_examples`), ``manpages`` (:mod:`.manpages`), ``freedict`` (:mod:`.freedict`),
  from Debian packages, offline;
* a local file, by path or builder name (:mod:`.files`);
* anything else is a hub data set id (:mod:`.hub`).

Every example is a plain dict ``{"prompt": str, "target": str, "group": str}``: the probe's loss
is taken on the target tokens; ``group`` ties together examples that must never sit in two
different splits (a WordNet synset, a man page, a dictionary headword, identical prompts of a
file source).
Adding a built-in source is one module and one line here.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from types import ModuleType

from lens_model.lookup import Registry
from tasks.data.sources import files, freedict, hub, manpages, wordnet, wordnet_examples
from tasks.data.sources.rows import Loaded
from tasks.records.errors import DataError
from tasks.records.schema import DataSpec, Example

BUILTIN: Registry[ModuleType] = Registry("data source")
for _module in (wordnet, manpages, wordnet_examples, freedict):
    BUILTIN.register(_module.NAME)(_module)

_MAPPING = ("prompt_field", "target_field", "template", "group_field")


def source_for(spec: DataSpec) -> ModuleType:
    """The source module that reads ``spec.source``."""
    if spec.source in BUILTIN:
        given = [name for name in _MAPPING if getattr(spec, name) is not None]
        if given:
            raise DataError(
                f"built-in source {spec.source!r} has fixed fields; unset {', '.join(given)}"
            )
        return BUILTIN.get(spec.source)
    if files.handles(spec.source):
        return files
    close = difflib.get_close_matches(spec.source.lower(), BUILTIN.names(), n=1, cutoff=0.75)
    if close and "/" not in spec.source:
        raise DataError(
            f"unknown data source {spec.source!r}: did you mean {close[0]!r}? Built-in sources: "
            f"{', '.join(BUILTIN.names())}; or a local file, or a hub id org/name"
        )
    return hub


def read_examples(spec: DataSpec) -> Loaded:
    """The examples of ``spec``'s source, field mapping applied, with the bad rows a file or
    hub source skipped (``dataset.on_bad_rows: skip``; built-ins have none)."""
    source = source_for(spec)
    if source is hub:
        return hub.read(spec, builtins=tuple(BUILTIN.names()))
    if source is files:
        return files.read(spec)
    return Loaded(source.load(spec))


def load_examples(spec: DataSpec) -> list[Example]:
    """The examples of ``spec``'s source, field mapping applied."""
    return read_examples(spec).examples


def source_files(spec: DataSpec) -> list[Path]:
    """The files behind ``spec``'s source (empty for a hub data set)."""
    return source_for(spec).files(spec)
