"""Data layer of the selection pipeline: load a task data set, split it, build the probe ladder.

* :mod:`tasks.data.sources`: where examples come from (built-ins, local files, the hub), one
  module per source;
* :mod:`tasks.data.splits`: group-wise splits, nested subsets, fingerprints;
* :mod:`tasks.data.prepare`: :func:`prepare_data` (a :class:`~tasks.records.schema.DataSpec` and a
  :class:`~tasks.records.schema.Ladder` in, a :class:`~tasks.records.schema.PreparedData` out) and
  its cached
  Prefect task.
"""

from tasks.data.prepare import prepare_data, prepare_data_task
from tasks.data.sources import BUILTIN, load_examples, read_examples, source_files

__all__ = [
    "BUILTIN",
    "load_examples",
    "prepare_data",
    "prepare_data_task",
    "read_examples",
    "source_files",
]
