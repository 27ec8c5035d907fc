"""Layer-wise energy profiling of PyTorch models on live power telemetry.

``profile(model, example_input, ...)`` isolates every layer call, measures
its energy over windows sized for the sensor, subtracts the idle baseline
and returns a :class:`ProfileResult` with writers for the CSV/JSON/PNG files.
"""

from .capture import InputRejected, LayerCall, capture
from .core import profile
from .errors import ProfilerError
from .estimate import ESTIMATORS, Estimator
from .powermodes import SweepResult, sweep_power_modes
from .result import LayerResult, ProfileResult

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "InputRejected",
    "LayerCall",
    "LayerResult",
    "ProfileResult",
    "ProfilerError",
    "SweepResult",
    "capture",
    "profile",
    "sweep_power_modes",
]
