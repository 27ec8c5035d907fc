"""jetson-power-exporter: live power telemetry for NVIDIA Jetson boards, exported to Prometheus."""

__version__ = "0.1.0"
