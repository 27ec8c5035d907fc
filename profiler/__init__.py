"""Layer-wise energy profiling of PyTorch models on live power telemetry.

``profile(model, example_input, ...)`` isolates every layer call, measures
its energy over windows sized for the sensor, subtracts the idle baseline
and returns a :class:`ProfileResult` with writers for the CSV/JSON/PNG files;
``compare(paths_or_results)`` sets saved profiles side by side.
"""

from .capture import InputRejected, LayerCall, capture
from .compare import Comparison, compare
from .core import profile
from .errors import ProfilerError
from .estimate import ESTIMATORS, Estimator
from .powermodes import SweepResult, sweep_power_modes
from .result import LayerResult, ProfileResult

__all__ = [
    "Comparison",
    "ESTIMATORS",
    "Estimator",
    "InputRejected",
    "LayerCall",
    "LayerResult",
    "ProfileResult",
    "ProfilerError",
    "SweepResult",
    "capture",
    "compare",
    "profile",
    "sweep_power_modes",
]
