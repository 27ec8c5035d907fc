"""A fake NVML for the nvml source: pynvml's own function names, signatures and errors, NVML units.

No NVIDIA GPU exists on the test machine; :meth:`FakeNvml.install` checks each
fake against the real pynvml function it replaces, so the shape cannot drift.
"""

import ctypes
import inspect
import time

import pynvml


class FakeGpu:
    """One GPU as NVML reports it: a power draw in mW and an energy counter in mJ."""

    def __init__(self, name, watts, energy_counter=True, power=True):
        self.name = name
        self.watts = watts
        self.energy_counter = energy_counter
        self.power = power
        self.lost = False
        self._mj = 5_000_000.0  # the counter starts at driver load, not at zero
        self._t = time.monotonic()

    def advance(self):
        t = time.monotonic()
        self._mj += self.watts * (t - self._t) * 1000.0
        self._t = t


class FakeNvml:
    """Replaces the pynvml functions the source uses; errors are pynvml's own."""

    def __init__(self, gpus, name_as_bytes=False, init_error=None):
        self.gpus = gpus
        self.name_as_bytes = name_as_bytes
        self.init_error = init_error
        self.refcount = 0

    @staticmethod
    def error(code):
        return pynvml.NVMLError(code)  # pynvml turns the code into NVMLError_<Name>

    def _gpu(self, handle):
        gpu = self.gpus[handle.value]
        if gpu.lost:
            raise self.error(pynvml.NVML_ERROR_GPU_IS_LOST)
        gpu.advance()
        return gpu

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.error(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self):
        if self.refcount == 0:
            raise self.error(pynvml.NVML_ERROR_UNINITIALIZED)
        self.refcount -= 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            raise self.error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ctypes.c_int(index)

    def nvmlDeviceGetName(self, handle):
        name = self._gpu(handle).name
        return name.encode() if self.name_as_bytes else name

    def nvmlDeviceGetPowerUsage(self, handle):
        gpu = self._gpu(handle)
        if not gpu.power:
            raise self.error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(round(gpu.watts * 1000))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        gpu = self._gpu(handle)
        if not gpu.energy_counter:
            raise self.error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(gpu._mj)

    def install(self, monkeypatch):
        for name, fake in inspect.getmembers(self, inspect.ismethod):
            if not name.startswith("nvml"):
                continue
            real = getattr(pynvml, name)  # AttributeError: the fake names a function pynvml lacks
            assert list(inspect.signature(real).parameters) == list(inspect.signature(fake).parameters), name
            monkeypatch.setattr(pynvml, name, fake)
        return self
