"""Prometheus collector: fresh metric families from one sampler and one layer snapshot per scrape.

No timestamps and no ``_created`` series: the values are those of the scrape.
Power gauges are only exported while the sensor is up, so a dead sensor never
shows as a silent 0 W; the energy counters stay (and stop growing).  The
exposition (text or OpenMetrics) is prometheus_client's own, over a registry
holding this collector and the library's standard process and platform ones.
"""

from typing import Iterator, Optional, Tuple

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from . import __version__
from .alarms import AlarmWatch
from .layers import LayerBoard, index_label
from .sampler import Sampler

LAYER_LABELS = ["model", "index", "layer", "op"]


class PowerCollector:
    def __init__(self, sampler: Sampler, layers: LayerBoard, alarms: Optional[AlarmWatch] = None):
        self.sampler = sampler
        self.layers = layers
        self.alarms = alarms if alarms is not None else AlarmWatch(sampler.source)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)  # python_info

    def render(self, accept: str = "") -> Tuple[bytes, str]:
        """(body, Content-Type) of a scrape: OpenMetrics when ``accept`` asks for it, text otherwise."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        snap = self.sampler.snapshot()
        source = self.sampler.source
        reading = snap.reading

        if snap.up and reading is not None:
            yield _gauge("jetson_power_total_watts", "Total board input power in watts.", reading.total_watts)
            yield _per_rail("jetson_power_rail_watts", "Power per monitored rail in watts.", reading.rails)
            if reading.volts:
                yield _per_rail("jetson_power_rail_volts", "Bus voltage per monitored rail in volts.",
                                reading.volts)
            if reading.amperes:
                yield _per_rail("jetson_power_rail_amperes", "Current per monitored rail in amperes.",
                                reading.amperes)
            if self.sampler.calibration is not None and snap.raw_reading is not None:
                yield _gauge("jetson_power_raw_total_watts", "Total board power as the sensor read it, before "
                             "calibration, in watts.", snap.raw_reading.total_watts)
                yield _per_rail("jetson_power_raw_rail_watts", "Power per rail as the sensor read it, before "
                                "calibration, in watts.", snap.raw_reading.rails)

        yield CounterMetricFamily(
            "jetson_energy_joules", "Total energy integrated at the sample rate, in joules.",
            value=snap.energy_joules)
        rail_energy = CounterMetricFamily(
            "jetson_energy_rail_joules", "Energy per rail integrated at the sample rate, in joules.",
            labels=["rail"])
        for rail, joules in sorted(snap.rail_energy_joules.items()):
            rail_energy.add_metric([rail], joules)
        yield rail_energy

        yield _gauge("jetson_power_up", "1 while the power sensor answers, 0 while it is down.",
                     1.0 if snap.up else 0.0)
        yield CounterMetricFamily("jetson_power_samples", "Good sensor samples taken.",
                                  value=snap.samples_total)
        yield CounterMetricFamily("jetson_power_sensor_errors", "Failed sensor reads.",
                                  value=snap.errors_total)
        yield CounterMetricFamily(
            "jetson_power_gap_seconds",
            "Time not integrated because the sensor was away longer than a few sample periods, in seconds.",
            value=snap.gap_seconds)
        if snap.sample_interval_s is not None:
            yield _gauge("jetson_power_sample_interval_seconds",
                         "Observed mean interval between samples, in seconds.", snap.sample_interval_s)
        if snap.sensor_interval_s is not None:
            yield _gauge("jetson_power_sensor_update_interval_seconds",
                         "Observed mean interval between changes of the sensor value, in seconds.",
                         snap.sensor_interval_s)
        if source.update_interval_s is not None:
            yield _gauge("jetson_power_sensor_configured_interval_seconds",
                         "Update interval the sensor or its driver reports, in seconds.",
                         source.update_interval_s)
        if snap.jitter_p99_s is not None:
            yield _gauge("jetson_power_sample_jitter_seconds",
                         "99th percentile of the sampler's wake-up error over the last 1000 samples, in seconds.",
                         snap.jitter_p99_s)
        info = GaugeMetricFamily("jetson_power_source_info", "The power source in use; value is always 1.",
                                 labels=["source", "board", "simulated"])
        info.add_metric([source.name, source.board, "true" if source.simulated else "false"], 1.0)
        yield info
        calibration = self.sampler.calibration
        if calibration is not None:
            applied = GaugeMetricFamily(
                "jetson_power_calibration_info", "Calibration applied per rail (watts = gain x raw + offset_w); "
                "value is always 1.", labels=["rail", "meter", "date", "gain", "offset_w"])
            for rail, (gain, offset) in sorted(calibration.rails.items()):
                applied.add_metric([rail, calibration.meter, calibration.date, "%g" % gain, "%g" % offset], 1.0)
            yield applied
        build = GaugeMetricFamily("jetson_exporter_build_info", "Exporter version; value is always 1.",
                                  labels=["version"])
        build.add_metric([__version__], 1.0)
        yield build

        yield from self._alarm_metrics()
        yield from self._layer_metrics()

    def _alarm_metrics(self) -> Iterator[Metric]:
        """Read at each render: a flag that changes shows in the next scrape."""
        snap = self.alarms.read()
        if snap.errors_total:
            yield CounterMetricFamily("jetson_power_alarm_read_errors",
                                      "Failed reads of the alarm and throttle files.", value=snap.errors_total)
        board = snap.board
        if board is None:
            return  # no such files on this source, or unreadable now: no series rather than a false 0
        alarm = GaugeMetricFamily(
            "jetson_power_alarm", "1 while the power monitor raises the alarm, as its driver reports it.",
            labels=["rail", "kind"])
        for a in board.alarms:
            alarm.add_metric([a.rail if a.rail is not None else a.chip, a.kind], 1.0 if a.active else 0.0)
        yield alarm
        limit = GaugeMetricFamily(
            "jetson_power_rail_current_limit_amperes",
            "Current alert limit of each rail set in the power monitor (crit or warn), in amperes.",
            labels=["rail", "kind"])
        for (rail, kind), amperes in sorted(board.current_limits.items()):
            limit.add_metric([rail, kind], amperes)
        yield limit
        events = CounterMetricFamily(
            "jetson_throttle_events", "Over-current throttle events counted by the SoC since boot.",
            labels=["kind"])
        enabled = GaugeMetricFamily(
            "jetson_throttle_enabled", "1 when the over-current event throttles the clocks.", labels=["kind"])
        for kind, count in sorted(board.oc_events.items()):
            events.add_metric([kind], count)
        for kind, on in sorted(board.oc_throttle_enabled.items()):
            enabled.add_metric([kind], 1.0 if on else 0.0)
        yield events
        yield enabled
        active = GaugeMetricFamily(
            "jetson_throttle_active", "1 while the thermal cooling device throttles (cur_state above 0).",
            labels=["kind"])
        for kind, (cur, _) in sorted(board.cooling.items()):
            active.add_metric([kind], 1.0 if cur > 0 else 0.0)
        yield active

    def _layer_metrics(self) -> Iterator[Metric]:
        snap = self.layers.snapshot()
        active = GaugeMetricFamily(
            "jetson_profiler_active_layer", "1 for the layer the profiler is measuring right now.",
            labels=LAYER_LABELS)
        for a in snap.active:
            active.add_metric([a.model, index_label(a.index), a.layer, a.op], 1.0)
        yield active

        # "call": one call of the layer, as the last profile measured it (not the counters below)
        families = [
            ("jetson_layer_call_energy_joules", "Energy per call of each layer, last profile, in joules.",
             "energy_j"),
            ("jetson_layer_call_dynamic_energy_joules",
             "Energy per call above the idle baseline, last profile, in joules.", "dynamic_energy_j"),
            ("jetson_layer_call_duration_seconds", "Duration per call of each layer, last profile, in seconds.",
             "duration_s"),
            ("jetson_layer_call_power_watts", "Mean power during a call of each layer, last profile, in watts.",
             "power_w"),
        ]
        for name, doc, attr in families:
            family = GaugeMetricFamily(name, doc, labels=LAYER_LABELS)
            for model, results in sorted(snap.results.items()):
                for r in results:
                    family.add_metric([model, index_label(r.index), r.layer, r.op], getattr(r, attr))
            yield family

        energy = CounterMetricFamily(
            "jetson_layer_energy_joules", "Energy integrated by the daemon while each layer was marked active, "
            "in joules.", labels=["model", "layer"])
        seconds = CounterMetricFamily(
            "jetson_layer_active_seconds", "Time each layer was marked active, in seconds.",
            labels=["model", "layer"])
        for key in sorted(snap.energy_j):
            energy.add_metric(list(key), snap.energy_j[key])
            seconds.add_metric(list(key), snap.active_s.get(key, 0.0))
        yield energy
        yield seconds
        yield from _inference_metrics(snap.inference)
        yield CounterMetricFamily(
            "jetson_exporter_layer_series_evicted",
            "Layer and inference series dropped to keep the label sets bounded (least recently updated first).",
            value=snap.evicted_total)


INFERENCE_LABELS = ["model", "power_mode"]
# one forward pass of the whole model on a batch, last profile of the model in each power mode
INFERENCE_FAMILIES = (
    ("jetson_inference_energy_joules", "Energy per inference (one forward pass of the batch), last profile in "
     "the power mode, in joules.", lambda r: r.energy_j),
    ("jetson_inference_dynamic_energy_joules", "Energy per inference above the idle baseline, last profile in "
     "the power mode, in joules.", lambda r: r.dynamic_energy_j),
    ("jetson_inference_latency_seconds", "Duration of one inference, last profile in the power mode, in seconds.",
     lambda r: r.latency_s),
    ("jetson_inference_power_watts", "Mean power during an inference, last profile in the power mode, in watts.",
     lambda r: r.power_w),
    ("jetson_inference_per_joule", "Inferences per joule of energy (the inverse of the energy per inference), "
     "last profile in the power mode.", lambda r: 1.0 / r.energy_j if r.energy_j > 0 else None),
    ("jetson_inference_batch_size", "Samples per inference in the last profile in the power mode.",
     lambda r: float(r.batch_size)),
)


def _inference_metrics(inference: dict) -> Iterator[Metric]:
    for name, doc, value in INFERENCE_FAMILIES:
        family = GaugeMetricFamily(name, doc, labels=INFERENCE_LABELS)
        for model, results in sorted(inference.items()):
            for r in sorted(results, key=lambda r: r.power_mode):
                v = value(r)
                if v is not None:
                    family.add_metric([model, r.power_mode], v)
        yield family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _per_rail(name: str, doc: str, values: dict) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["rail"])
    for rail, value in sorted(values.items()):
        family.add_metric([rail], value)
    return family
