"""LensLLM's numerical core: fine-tuning scaling laws, phase detection, selectors, metrics.

Pure numpy/scipy: no orchestration, tracking, storage or file I/O.

>>> from lens_model import RectifiedLaw
>>> law = RectifiedLaw().fit(sizes, losses)          # one curve or a batch (rows = models)
>>> law.predict([1_638_400]), law.predict_interval([1_638_400])
"""

from lens_model.laws import LAWS, FitWarning, LensLaw, RectifiedLaw, ScalingLaw, VanillaLaw
from lens_model.loss_table import LossTable
from lens_model.metrics import pearson_correlation, probe_cost, relative_accuracy, rmse_log
from lens_model.phase import detect_power_phase, extrapolate_power_phase, fit_power_phase
from lens_model.replay import replay
from lens_model.selectors import SELECTORS, Scored, Selection, Selector, TableProbes
from lens_model.table_score import TableScore, score

__all__ = [
    "LAWS",
    "SELECTORS",
    "FitWarning",
    "LensLaw",
    "LossTable",
    "RectifiedLaw",
    "ScalingLaw",
    "Scored",
    "Selection",
    "Selector",
    "TableProbes",
    "TableScore",
    "VanillaLaw",
    "detect_power_phase",
    "extrapolate_power_phase",
    "fit_power_phase",
    "pearson_correlation",
    "probe_cost",
    "relative_accuracy",
    "replay",
    "rmse_log",
    "score",
]

# The NTK features need torch; they load on first use so that the laws import without it.
_NTK_NAMES = ("empirical_ntk", "f_term", "ntk_features", "ntk_spectrum", "per_example_outputs")
__all__ += list(_NTK_NAMES)


def __getattr__(name: str):
    if name in _NTK_NAMES:
        from lens_model import ntk

        return getattr(ntk, name)
    raise AttributeError(f"module 'lens_model' has no attribute {name!r}")
