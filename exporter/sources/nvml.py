"""NVIDIA desktop/datacenter GPUs through NVML (the ``nvidia-ml-py`` package).

``nvml`` or ``nvml:0`` reads GPU 0, ``nvml:N`` GPU N, and ``nvml:all`` the sum
of every GPU in the machine (one rail per GPU: ``GPU0``, ``GPU1``, ...).

Where every selected GPU has the hardware energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver loaded; Volta
and newer) readings carry ``energy_joules`` and the sampler integrates the
counter, which is exact whatever the sampling rate.  ``total_watts`` is
``nvmlDeviceGetPowerUsage`` (mW): on Ampere (except GA100) and newer it is a
1 s running average, on older GPUs the instantaneous value.  GPUs without the
counter are older ones whose power reading is instantaneous, so polling it
is the best NVML offers.  NVML does not publish how often either value is
refreshed (it varies by board, roughly 1/6 s to 1 s), hence
``update_interval_s`` is None and the sampler keeps its own rate.

Jetson boards answer NVML with NotSupported (or have no NVML library at
all); the ``hwmon``/``jtop`` sources are the ones for them.
"""

from typing import Dict, List, Optional

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, now


def _text(value) -> str:
    """NVML strings are bytes in older nvidia-ml-py releases, str in newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unavailable_reason(pynvml, exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver installed"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return f"no permission to use NVML ({exc})"
    if isinstance(exc, pynvml.NVMLError_LibRmVersionMismatch):
        return "NVML library and kernel driver versions differ (reboot after a driver update)"
    if isinstance(exc, pynvml.NVMLError_NotSupported):
        return "NVML answers Not Supported (on a Jetson use the hwmon or jtop source)"
    return f"NVML failed: {exc}"


class NvmlSource(PowerSource):
    """Power (and energy counter, when present) of one or all NVIDIA GPUs."""

    name = "nvml"
    update_interval_s = None

    def __init__(self, pynvml, indices: List[int]):
        self._nvml = pynvml
        self._open = True
        self._gpus = []  # (rail name, handle)
        names = []
        counters = []
        for index in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpu_name = _text(pynvml.nvmlDeviceGetName(handle))
            rail = f"GPU{index}"
            try:
                pynvml.nvmlDeviceGetPowerUsage(handle)
            except pynvml.NVMLError_NotSupported:
                raise SourceUnavailable(
                    f"nvml: {rail} ({gpu_name}) does not report power (NVML answers Not Supported)"
                ) from None
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                counters.append(True)
            except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
                counters.append(False)
            self._gpus.append((rail, handle))
            names.append(gpu_name)
        self.has_energy_counter = all(counters)
        distinct = sorted(set(names))
        self.board = distinct[0] if len(distinct) == 1 else " + ".join(distinct)
        if len(indices) > 1:
            self.board = f"{len(indices)} x {self.board}"

    def read(self) -> Reading:
        nvml = self._nvml
        rails: Dict[str, float] = {}
        energy_mj = 0
        try:
            for rail, handle in self._gpus:
                if self.has_energy_counter:
                    energy_mj += nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                rails[rail] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except nvml.NVMLError as exc:
            raise SensorReadError(f"nvml: reading {rail} failed: {exc}") from None
        return Reading(
            timestamp=now(),
            total_watts=sum(rails.values()),
            rails=rails,
            energy_joules=energy_mj / 1000.0 if self.has_energy_counter else None,
        )

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # shutting down a lost GPU: nothing left to release

    def describe(self) -> Dict[str, str]:
        info = super().describe()
        info["gpus"] = ",".join(rail for rail, _ in self._gpus)
        info["energy_counter"] = "true" if self.has_energy_counter else "false"
        return info


def _parse_arg(arg: Optional[str]) -> Optional[int]:
    """GPU index from the spec argument; None means all GPUs."""
    text = (arg or "0").strip().lower()
    if text == "all":
        return None
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"nvml: GPU must be an index or 'all', got {arg!r}") from None
    if index < 0:
        raise ValueError(f"nvml: GPU index must be >= 0, got {index}")
    return index


def make_source(arg: Optional[str], **options) -> NvmlSource:
    """Open GPU ``arg`` (default 0, or ``all``); SourceUnavailable when NVML or power is missing."""
    wanted = _parse_arg(arg)
    try:
        import pynvml
    except ImportError:
        raise SourceUnavailable("nvml: nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise SourceUnavailable("nvml: " + _unavailable_reason(pynvml, exc)) from None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise SourceUnavailable("nvml: no NVIDIA GPU found")
        if wanted is not None and wanted >= count:
            raise SourceUnavailable(f"nvml: no GPU {wanted} (found {count})")
        indices = list(range(count)) if wanted is None else [wanted]
        source = NvmlSource(pynvml, indices)
        source.read()
        return source
    except pynvml.NVMLError as exc:
        pynvml.nvmlShutdown()
        raise SourceUnavailable("nvml: " + _unavailable_reason(pynvml, exc)) from None
    except (SourceUnavailable, SensorReadError) as exc:
        pynvml.nvmlShutdown()
        raise SourceUnavailable(str(exc)) from None
