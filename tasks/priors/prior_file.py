"""Read, write and rebuild the error-prior file (``configs/error_prior.json``).

The file holds the fitted error model of ``lens_model.error_model`` (per predictor family:
``gamma``, ``slope_floor``, the pooled normal-inverse-gamma ``m, kappa, a, b``, one such
prior per fitted table, its ``components``, and ``max_horizon``, the longest horizon it was
fitted on; files without it still read) and its provenance: the tables it was fitted on
(name, file, sha256, shape; never their rows), the git commit and the command that rebuilds
it. ``lens_model`` gets a plain ``ErrorModel``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from pathlib import Path

from lens_model.error_model import FAMILIES, ErrorModel, FamilyPrior, TaskComponent
from lens_model.error_prior import NormalInverseGamma
from tasks.records.errors import ErrorPriorFileError, MissingFileError
from tasks.runtime.provenance import git_commit

FORMAT = "lensllm-error-prior"
VERSION = 2
# version 1 held the pooled prior alone: its files are read as the model they hold
READABLE_VERSIONS = (1, 2)
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "error_prior.json"
NIG_NUMBERS = ("m", "kappa", "a", "b")
NUMBERS = ("gamma", "slope_floor", *NIG_NUMBERS)
REBUILD = "rebuild it with `lensllm calibration fit --table ... --out FILE` (see its provenance)"


def resolve_prior(spec: str | None) -> ErrorModel | None:
    """The error model a config names: ``"default"`` (the shipped file), ``"none"`` (no
    prior: intervals from the selection's own backtest alone) or a path."""
    if spec is None or spec == "none":
        return None
    return load_error_model(SHIPPED if spec == "default" else Path(spec))


def interval_settings(intervals) -> dict:
    """A selector's interval settings from an ``IntervalSpec``: level, method and the error
    model its ``prior`` names (read here, once per selection)."""
    return {
        "level": intervals.level,
        "interval": intervals.method,
        "error_model": resolve_prior(intervals.prior),
    }


def load_error_model(path: str | Path) -> ErrorModel:
    """Read and validate an error-prior file.

    Raises
    ------
    MissingFileError
        No such file.
    ErrorPriorFileError
        Not JSON, another format or version, an unknown family or an invalid number.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"error-prior file {str(path)!r} does not exist; {REBUILD}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ErrorPriorFileError(f"{path}: not a readable JSON file ({err}); {REBUILD}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ErrorPriorFileError(f"{path}: not a {FORMAT} file; {REBUILD}")
    if doc.get("version") not in READABLE_VERSIONS:
        raise ErrorPriorFileError(
            f"{path}: version {doc.get('version')!r}, this LensLLM reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; {REBUILD}"
        )
    families = {name: _family(path, name, v) for name, v in dict(doc.get("families", {})).items()}
    if not families:
        raise ErrorPriorFileError(f"{path}: no predictor family in the file; {REBUILD}")
    tables = [t.get("name", "?") for t in doc.get("provenance", {}).get("tables", [])]
    return ErrorModel(families, source=f"{path.name}, fitted on {', '.join(tables) or '?'}")


def _family(path: Path, name: str, values) -> FamilyPrior:
    if name not in FAMILIES:
        raise ErrorPriorFileError(
            f"{path}: unknown predictor family {name!r} (known: {sorted(FAMILIES)}); {REBUILD}"
        )
    try:
        x = _numbers(values, NUMBERS)
        components = tuple(
            TaskComponent(
                str(c["task"]),
                _nig(_numbers(c, NIG_NUMBERS)),
                n_groups=int(c.get("n_groups", 0)),
            )
            for c in values.get("components", [])
        )
        return FamilyPrior(
            x["gamma"],
            x["slope_floor"],
            _nig(x),
            n_groups=int(values.get("n_groups", 0)),
            n_errors=int(values.get("n_errors", 0)),
            components=components,
            max_horizon=_optional(values, "max_horizon"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ErrorPriorFileError(
            f"{path}: family {name!r} needs finite numbers {', '.join(NUMBERS)} "
            f"(gamma, slope_floor, kappa, b > 0, a > 1), and each component task, "
            f"{', '.join(NIG_NUMBERS)}: {err}; {REBUILD}"
        ) from err


def _optional(values, name: str) -> float | None:
    """An optional number of a family (files written before it existed lack it)."""
    return None if values.get(name) is None else float(values[name])


def _numbers(values, names) -> dict[str, float]:
    x = {k: float(values[k]) for k in names}
    if not all(math.isfinite(v) for v in x.values()):
        raise ValueError("a number is not finite")
    return x


def _nig(x: dict[str, float]) -> NormalInverseGamma:
    return NormalInverseGamma(x["m"], x["kappa"], x["a"], x["b"])


def model_document(model: ErrorModel, provenance: dict) -> dict:
    """The JSON document of a fitted model (numbers rounded to 10 significant digits)."""
    families = {}
    for name, fam in sorted(model.families.items()):
        p = fam.prior
        values = dict(gamma=fam.gamma, slope_floor=fam.slope_floor, m=p.m, kappa=p.kappa)
        values |= dict(a=p.a, b=p.b)
        families[name] = _rounded(values)
        families[name] |= {"n_groups": fam.n_groups, "n_errors": fam.n_errors}
        if fam.max_horizon is not None:
            families[name] |= _rounded({"max_horizon": fam.max_horizon})
        families[name]["components"] = [
            {"task": c.task}
            | _rounded({k: getattr(c.prior, k) for k in NIG_NUMBERS})
            | {"n_groups": c.n_groups}
            for c in fam.components
        ]
    return {"format": FORMAT, "version": VERSION, "families": families, "provenance": provenance}


def _rounded(values: dict) -> dict:
    return {k: float(f"{v:.10g}") for k, v in values.items()}


def table_provenance(path: str | Path, table) -> dict:
    """What identifies a table without its rows: name, file, sha256, models and sizes."""
    data = Path(path).read_bytes()
    return {
        "name": table.name,
        "file": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "models": len(table.models),
        "sizes": [int(d) for d in table.sizes],
    }


def fit_prior_file(tables: list[str], out: str | Path, *, seed: int = 0) -> dict:
    """Fit the error model on the loss tables at ``tables`` and write it to ``out``; returns
    the document written."""
    from lens_model.replay import fit_error_model
    from tasks.reporting.loss_tables import load_loss_table

    loaded = [load_loss_table(p) for p in tables]
    model = fit_error_model(loaded, seed=seed)
    provenance = {
        "tables": [table_provenance(p, t) for p, t in zip(tables, loaded, strict=True)],
        "git_commit": git_commit(),
        "created": datetime.date.today().isoformat(),
        "seed": seed,
        "command": "lensllm calibration fit "
        + " ".join(f"--table {p}" for p in tables)
        + f" --seed {seed} --out {out}",
    }
    doc = model_document(model, provenance)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2) + "\n")
    return doc
