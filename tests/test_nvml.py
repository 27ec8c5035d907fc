"""NVML source.

No NVIDIA GPU exists on the test machine, so the "no driver" path runs for
real, and the read path runs against a fake GPU put in place of the pynvml
functions: same names and parameters (checked below), errors built by pynvml
itself, NVML units (mJ, mW).  ``@pytest.mark.gpu`` runs against a real GPU
when there is one.
"""

import ctypes
import time

import pynvml
import pytest

from exporter.sources import SensorReadError, SourceUnavailable, open_source
from tests.support.nvml_fake import FakeGpu, FakeNvml


def _real_nvml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


HAVE_NVML = _real_nvml_loads()


def test_error_classes_come_from_pynvml():
    assert isinstance(FakeNvml.error(pynvml.NVML_ERROR_NOT_SUPPORTED), pynvml.NVMLError_NotSupported)


@pytest.mark.skipif(HAVE_NVML, reason="an NVIDIA driver is installed here; the gpu test covers this machine")
def test_no_driver_is_unavailable_for_real():
    with pytest.raises(SourceUnavailable, match=r"libnvidia-ml\.so\.1\) not found"):
        open_source("nvml")
    with pytest.raises(SourceUnavailable, match="not found"):
        open_source("nvml:all")


def test_energy_counter_and_power(monkeypatch):
    fake = FakeNvml([FakeGpu("NVIDIA H100 80GB HBM3", 250.0)]).install(monkeypatch)
    source = open_source("nvml")
    assert source.board == "NVIDIA H100 80GB HBM3"
    assert source.simulated is False
    assert source.update_interval_s is None
    assert source.describe()["energy_counter"] == "true"
    first = source.read()
    assert first.rails == {"GPU0": 250.0}
    assert first.total_watts == 250.0
    assert first.energy_joules >= 5000.0  # cumulative since driver load, in J
    time.sleep(0.05)
    second = source.read()
    gained = second.energy_joules - first.energy_joules
    assert gained == pytest.approx(250.0 * (second.timestamp - first.timestamp), rel=0.1, abs=0.002)
    source.close()
    source.close()
    assert fake.refcount == 0


def test_power_polling_without_counter(monkeypatch):
    FakeNvml([FakeGpu("Tesla P100-PCIE-16GB", 31.5, energy_counter=False)], name_as_bytes=True).install(
        monkeypatch
    )
    source = open_source("nvml:0")
    assert source.board == "Tesla P100-PCIE-16GB"
    assert source.describe()["energy_counter"] == "false"
    reading = source.read()
    assert reading.energy_joules is None
    assert reading.total_watts == 31.5


def test_all_gpus_are_summed(monkeypatch):
    FakeNvml([FakeGpu("NVIDIA A100-SXM4-40GB", 60.0), FakeGpu("NVIDIA A100-SXM4-40GB", 90.0)]).install(
        monkeypatch
    )
    source = open_source("nvml:all")
    assert source.board == "2 x NVIDIA A100-SXM4-40GB"
    assert source.describe()["gpus"] == "GPU0,GPU1"
    a = source.read()
    assert a.rails == {"GPU0": 60.0, "GPU1": 90.0}
    assert a.total_watts == 150.0
    time.sleep(0.05)
    b = source.read()
    assert b.energy_joules - a.energy_joules == pytest.approx(150.0 * (b.timestamp - a.timestamp), rel=0.1)


def test_one_gpu_of_several(monkeypatch):
    FakeNvml([FakeGpu("NVIDIA L4", 20.0), FakeGpu("NVIDIA L40S", 80.0)]).install(monkeypatch)
    reading = open_source("nvml:1").read()
    assert reading.rails == {"GPU1": 80.0}


def test_mixed_counters_fall_back_to_power(monkeypatch):
    FakeNvml([FakeGpu("NVIDIA A10", 50.0), FakeGpu("Tesla P4", 20.0, energy_counter=False)]).install(monkeypatch)
    source = open_source("nvml:all")
    assert source.board == "2 x NVIDIA A10 + Tesla P4"
    assert source.read().energy_joules is None


def test_jetson_not_supported_is_unavailable(monkeypatch):
    fake = FakeNvml([FakeGpu("Orin (nvgpu)", 0.0, energy_counter=False, power=False)]).install(monkeypatch)
    with pytest.raises(SourceUnavailable, match=r"GPU0 \(Orin \(nvgpu\)\) does not report power"):
        open_source("nvml")
    assert fake.refcount == 0  # NVML shut down again


@pytest.mark.parametrize(
    "code, message",
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA driver not loaded"),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
    ],
)
def test_init_failures(monkeypatch, code, message):
    FakeNvml([], init_error=code).install(monkeypatch)
    with pytest.raises(SourceUnavailable, match=message):
        open_source("nvml")


def test_no_gpu_or_wrong_index(monkeypatch):
    fake = FakeNvml([]).install(monkeypatch)
    with pytest.raises(SourceUnavailable, match="no NVIDIA GPU found"):
        open_source("nvml")
    fake.gpus.append(FakeGpu("NVIDIA T4", 25.0))
    with pytest.raises(SourceUnavailable, match=r"no GPU 3 \(found 1\)"):
        open_source("nvml:3")
    assert fake.refcount == 0
    with pytest.raises(ValueError, match="index or 'all'"):
        open_source("nvml:first")


def test_read_error_is_a_sensor_error(monkeypatch):
    gpu = FakeGpu("NVIDIA RTX 4090", 300.0)
    FakeNvml([gpu]).install(monkeypatch)
    source = open_source("nvml", interval_s=0.1, sysfs_root="/sys")  # unknown options are ignored
    source.read()
    gpu.lost = True
    with pytest.raises(SensorReadError, match="GPU0.*GPU is lost"):
        source.read()
    source.close()  # shutting down with a lost GPU does not raise


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_NVML, reason="needs an NVIDIA GPU and driver (libnvidia-ml.so.1)")
def test_real_gpu():
    source = open_source("nvml")
    try:
        first = source.read()
        time.sleep(1.0)
        second = source.read()
    finally:
        source.close()
    assert 1.0 < second.total_watts < 2000.0, second
    if second.energy_joules is not None:
        gained = second.energy_joules - first.energy_joules
        assert gained > 0
        mean_w = gained / (second.timestamp - first.timestamp)
        assert 1.0 < mean_w < 2000.0
