"""Daemon settings: defaults < YAML file < JETSON_POWER_* environment < command-line flags.

Every flag has a key of the same name with underscores; the whole result is
validated before anything starts, and a bad value names its key and origin.
"""

import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import yaml

from . import contract

ENV_PREFIX = "JETSON_POWER_"
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A setting is wrong; the message names the key and says what to fix."""


def _positive_float(value: Any) -> float:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a positive number")
    return number


def _positive_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a positive integer")
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _optional_str(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _log_level(value: Any) -> str:
    level = str(value).lower()
    if level not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return level


def parse_listen(value: Any) -> Tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8000 or [::]:8000")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _listen(value: Any) -> str:
    parse_listen(value)
    return str(value)


# key: (default, parser, help)
SETTINGS: Dict[str, Tuple[Any, Callable[[Any], Any], str]] = {
    "source": ("auto", _string, "power source spec: auto, hwmon, jtop, tegrastats[:LOG], nvml[:GPU], rapl, "
                                "sim, replay:CSV"),
    "listen": ("0.0.0.0:8000", _listen, "address to serve on, HOST:PORT"),
    "sample_hz": (None, lambda v: None if v is None else _positive_float(v),
                  "sampling rate in Hz, capped at the sensor's update rate; unset, the sensor's update rate "
                  "(at most 200 Hz), or 100 Hz when the sensor does not say"),
    "buffer_seconds": (600.0, _positive_float, "seconds of samples kept for the window API"),
    "sensor_interval": (None, lambda v: None if v is None else _positive_float(v),
                        "sensor/refresh interval to request from jtop, tegrastats or sim, in seconds"),
    "sysfs_root": ("/sys", _string, "directory that stands for /sys (a copied tree for tests)"),
    "log_level": ("info", _log_level, "debug, info, warning or error"),
    "write_token_file": (None, _optional_str, "file holding the bearer token remote profilers must send"),
    "tls_cert": (None, _optional_str, "PEM certificate: serve HTTPS"),
    "tls_key": (None, _optional_str, "PEM private key for --tls-cert"),
    "tls_client_ca": (None, _optional_str, "PEM CA bundle: require client certificates (mTLS)"),
    "max_models": (5, _positive_int, "models whose layer series are kept (least recently updated evicted)"),
    "max_layers": (1000, _positive_int, "layers per model accepted by the write API"),
    "max_power_modes": (16, _positive_int,
                        "power modes per model whose energy-per-inference series are kept (least recently updated "
                        "evicted)"),
    "active_layer_timeout": (300.0, _positive_float, "seconds after which an unended active layer expires"),
    "calibration": (None, _optional_str, "YAML file of per-rail gain and offset_w against a reference meter "
                                         "(jetson-power-calibrate writes one)"),
}


def load(path: Optional[str], environ: Mapping[str, str], flags: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge and validate every layer of configuration; raise ConfigError on the first bad key."""
    raw = {key: (default, "default") for key, (default, _, _) in SETTINGS.items()}
    if path:
        for key, value in _read_file(path).items():
            raw[key] = (value, path)
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].lower()
            if key not in SETTINGS:
                raise ConfigError("unknown environment variable %s (valid: %s)"
                                  % (name, ", ".join(ENV_PREFIX + k.upper() for k in SETTINGS)))
            raw[key] = (value, "environment " + name)
    for key, value in flags.items():
        if value is not None:
            raw[key] = (value, "--" + key.replace("_", "-"))
    config = {}
    for key, (value, origin) in raw.items():
        try:
            config[key] = SETTINGS[key][1](value)
        except (TypeError, ValueError) as exc:
            raise ConfigError("%s: %s %s (got %r)" % (origin, key, exc, value)) from None
    if bool(config["tls_cert"]) != bool(config["tls_key"]):
        raise ConfigError("tls_cert and tls_key must be given together")
    if config["tls_client_ca"] and not config["tls_cert"]:
        raise ConfigError("tls_client_ca needs tls_cert and tls_key")
    return config


def _read_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror or exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " line %d" % (mark.line + 1) if mark is not None else ""
        raise ConfigError("config file %s%s is not valid YAML" % (path, where)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config file %s must be a mapping of key: value" % path)
    for key in data:
        if key not in SETTINGS:
            raise ConfigError("config file %s: unknown key %r (valid keys: %s)"
                              % (path, key, ", ".join(SETTINGS)))
    return data


def read_token(path: str) -> str:
    try:
        return contract.read_token(path)
    except contract.ContractError as exc:
        raise ConfigError("write_token_file %s: %s" % (path, exc)) from None
