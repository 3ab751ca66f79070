"""Loss-table loading and validation (tasks/reporting/loss_tables.py), one tiny CSV per bad-table
case."""

from __future__ import annotations

import pytest

from lens_model.loss_table import LossTable
from tasks.records import errors
from tasks.reporting.loss_tables import LossTableError, load_loss_table, load_loss_table_task

GOOD = (
    "config name,0,200,400,800,1600,size,family\n"
    "org/a,4.0,3.0,2.5,2.2,2.0,124000000,gpt\n"
    "org/b,3.5,2.9,2.6,2.4,2.3,7000000000,llama\n"
)


def write(tmp_path, text: str, name: str = "tiny.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_good_table_loads_as_a_loss_table(tmp_path):
    table = load_loss_table(write(tmp_path, GOOD, "flan_mini.csv"))
    assert table == LossTable(
        name="FLAN_MINI",
        models=["org/a", "org/b"],
        sizes=[0, 200, 400, 800, 1600],
        losses=[[4.0, 3.0, 2.5, 2.2, 2.0], [3.5, 2.9, 2.6, 2.4, 2.3]],
        model_sizes=[124e6, 7e9],
        families=["gpt", "llama"],
    )
    assert table.sizes.dtype.kind == "i" and not table.losses.flags.writeable


def test_family_is_optional(tmp_path):
    text = "model,0,200,400,800,size\nm1,3,2,1.5,1.2,10\nm2,3,2.1,1.6,1.3,20\n"
    table = load_loss_table(write(tmp_path, text))
    assert table.families == ("", "")
    assert table.sizes.tolist() == [0, 200, 400, 800]


def test_task_wrapper_returns_the_same(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_loss_table_task.fn(path) == load_loss_table(path)


BAD = {
    "missing-size": (
        "model,0,200,400,800\nm1,3,2,1.5,1.2\nm2,3,2,1.5,1.1\n",
        "missing the 'size' column",
    ),
    "no-loss-columns": ("model,size,family\nm1,10,x\nm2,20,y\n", "no loss columns"),
    "ladder-not-doubling": (
        "model,0,200,400,1200,size\nm1,3,2,1.5,1.2,10\nm2,3,2,1.5,1.1,20\n",
        "ladder must double.*400 is followed by 1200",
    ),
    "ladder-unsorted": (
        "model,0,400,200,800,size\nm1,3,2,1.5,1.2,10\nm2,3,2,1.5,1.1,20\n",
        "increasing order",
    ),
    "too-few-sizes": (
        "model,0,200,400,size\nm1,3,2,1.5,10\nm2,3,2,1.6,20\n",
        "at least 3 non-zero",
    ),
    "nan-loss": (
        "model,0,200,400,800,size\nm1,3,2,,1.2,10\nm2,3,2,1.5,1.1,20\n",
        "NaN, missing or not positive.*'m1' at size 400",
    ),
    "text-loss": (
        "model,0,200,400,800,size\nm1,3,2,oops,1.2,10\nm2,3,2,1.5,1.1,20\n",
        "NaN, missing or not positive.*value 'oops'",
    ),
    "zero-loss": (
        "model,0,200,400,800,size\nm1,3,2,1.5,1.2,10\nm2,3,0,1.5,1.1,20\n",
        "1 loss value.*'m2' at size 200",
    ),
    "negative-loss": (
        "model,0,200,400,800,size\nm1,3,2,1.5,-1.2,10\nm2,3,2,1.5,-1.1,20\n",
        "2 loss value",
    ),
    "one-model": ("model,0,200,400,800,size\nm1,3,2,1.5,1.2,10\n", "at least 2 models.*has 1"),
    "no-models": ("model,0,200,400,800,size\n", "at least 2 models.*has 0"),
    "bad-param-count": (
        "model,0,200,400,800,size\nm1,3,2,1.5,1.2,0\nm2,3,2,1.5,1.1,20\n",
        "'size' column must hold positive parameter counts",
    ),
    "empty-file": ("", "not a readable CSV"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_table_raises(tmp_path, case):
    text, match = BAD[case]
    with pytest.raises(LossTableError, match=match) as exc:
        load_loss_table(write(tmp_path, text))
    assert "tiny.csv" in str(exc.value)  # the message names the file


def test_loss_table_error_is_the_user_error_of_tasks_errors():
    # one class, defined in tasks.records.errors: the CLI prints a LensLLMUserError as one line,
    # exit 2
    assert LossTableError is errors.LossTableError
    assert issubclass(LossTableError, errors.LensLLMUserError)
    assert issubclass(LossTableError, ValueError)  # library-style ``except ValueError`` works


def test_missing_file(tmp_path):
    # a user error (exit 2), still a FileNotFoundError
    with pytest.raises(errors.MissingFileError, match="does not exist") as info:
        load_loss_table(str(tmp_path / "nope.csv"))
    assert isinstance(info.value, FileNotFoundError) and "nope.csv" in str(info.value)


def test_duplicate_size_column_raises(tmp_path):
    text = "model,0,200,400,400,800,size\nm1,3,2,1.5,1.4,1.2,10\nm2,3,2,1.5,1.4,1.1,20\n"
    with pytest.raises(LossTableError, match="400"):
        load_loss_table(write(tmp_path, text))
