"""``lensllm calibration fit``: fit the cross-task error model on loss tables.

Kept apart from the live record (``commands_tracking.calibration_command``): the record stays
the ``calibration`` command's own callback, and :func:`calibration_group` makes it a group
that also holds ``fit``.
"""

from __future__ import annotations

import math

import click


@click.command("fit", short_help="Fit the error model (the prior of every interval) on tables.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    required=True,
    metavar="CSV",
    help="a loss table in the replay format (repeat; e.g. ../shared/benchmarks/flan.csv and "
    "the audits under benchmarks/results/)",
)
@click.option("--out", required=True, metavar="FILE", help="the JSON file to write")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the fit's starts")
def calibration_fit_command(tables: tuple[str, ...], out: str, seed: int) -> int:
    """Fit the error model on TABLEs: every selection each table offers (each size as a
    pretend target, each smaller size as a budget) with Lens and AtS, and write the fitted
    parameters with their provenance (tables and their sha256, git commit, the command)."""
    from tasks.priors.prior_file import fit_prior_file

    print_fitted(fit_prior_file(list(tables), out, seed=seed), out)
    return 0


def print_fitted(doc: dict, out: str) -> None:
    """One line per fitted family, then where the file went."""
    for name, fam in doc["families"].items():
        reach = (
            f", horizons up to {fam['max_horizon']:.3g} doublings" if "max_horizon" in fam else ""
        )
        print(
            f"{name}: error scale (|slope| + {fam['slope_floor']:.3g}) x H^{fam['gamma']:.3f}; "
            f"prior m={fam['m']:+.3f} kappa={fam['kappa']:.3g} a={fam['a']:.3g} "
            f"b={fam['b']:.3g} ({fam['n_groups']} selections, {fam['n_errors']} errors{reach})"
        )
        if fam.get("components"):
            spreads = ", ".join(
                f"{c['task']} {math.sqrt(c['b'] / c['a']):.2g}" for c in fam["components"]
            )
            print(f"  mixture of {len(fam['components'])} tasks' priors, typical spread: {spreads}")
    print(f"wrote {out}")


def calibration_group(record: click.Command) -> click.Group:
    """``lensllm calibration``: ``record`` (the live record) when called without a
    subcommand, with its options; ``lensllm calibration fit ...`` fits the error model."""

    @click.pass_context
    def callback(ctx: click.Context, **options):
        if ctx.invoked_subcommand is None:
            return ctx.invoke(record.callback, **options)
        return None

    group = click.Group(
        record.name,
        params=list(record.params),
        callback=callback,
        invoke_without_command=True,
        help=record.help,
        short_help=record.short_help,
    )
    group.add_command(calibration_fit_command)
    return group
