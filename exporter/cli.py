"""``jetson-power-exporter``: open the source, start the sampler, serve HTTP until SIGTERM/SIGINT.

Every startup failure (bad config, port in use, a requested source that
cannot open) is one line on stderr and a non-zero exit, never a traceback.
"""

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
from typing import List, Optional, Tuple

from . import __version__, calibration, config, sdnotify
from .layers import LayerBoard
from .sampler import Sampler
from .server import ExporterServer
from .sources import SourceUnavailable, open_source

log = logging.getLogger("jetson-power-exporter")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
CALIBRATION_CHECK_S = 30.0  # how long the first reading may take before a calibration cannot be checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetson-power-exporter",
        description="Serve Jetson power and energy metrics for Prometheus.",
        epilog="Every flag has a config-file key (underscores) and a JETSON_POWER_<KEY> environment variable.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    for key, (default, _, text) in config.SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        parser.add_argument(flag, dest=key, default=None, metavar=key.split("_")[-1].upper(),
                            help="%s (default: %s)" % (text, default))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {key: getattr(args, key) for key in config.SETTINGS}
    prog = "jetson-power-exporter"
    try:
        settings = config.load(args.config, os.environ, flags)
        token = config.read_token(settings["write_token_file"]) if settings["write_token_file"] else None
        tls = _tls_context(settings)
        host, port = config.parse_listen(settings["listen"])
        cal = calibration.load(settings["calibration"]) if settings["calibration"] else None
    except (config.ConfigError, calibration.CalibrationError) as exc:
        print("%s: %s" % (prog, exc), file=sys.stderr)
        return EXIT_CONFIG

    logging.basicConfig(level=settings["log_level"].upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        source = open_source(settings["source"], sysfs_root=settings["sysfs_root"],
                             interval_s=settings["sensor_interval"])
    except (SourceUnavailable, ValueError) as exc:
        print("%s: cannot open source %r: %s" % (prog, settings["source"], exc), file=sys.stderr)
        return EXIT_RUNTIME

    sampler = Sampler(source, sample_hz=settings["sample_hz"], buffer_s=settings["buffer_seconds"], calibration=cal)
    layers = LayerBoard(max_models=settings["max_models"], max_layers=settings["max_layers"],
                        active_timeout_s=settings["active_layer_timeout"],
                        max_power_modes=settings["max_power_modes"])
    sampler.add_listener(layers.on_interval)
    try:
        server = ExporterServer((host, port), sampler, layers, write_token=token, tls=tls)
    except OSError as exc:
        source.close()
        print("%s: cannot listen on %s: %s" % (prog, settings["listen"], exc.strerror or exc), file=sys.stderr)
        return EXIT_RUNTIME

    sampler.start()
    if cal is not None:
        failed = _check_calibration(sampler, cal)
        if failed:
            code, message = failed
            server.server_close()
            sampler.stop(timeout=1.0)
            print("%s: %s" % (prog, message), file=sys.stderr)
            return code
        log.info("calibration %s (meter %s, %s) applied to %s", cal.path, cal.meter, cal.date,
                 ", ".join(sorted(cal.rails)))
    if source.simulated:
        log.warning("source %s is SIMULATED/REPLAYED: these are not measurements of real hardware", source.name)
    log.info("source %s (board %s, sensor interval %s s), sampling every %.1f ms, serving on %s%s",
             source.name, source.board, source.update_interval_s, sampler.period_s * 1e3,
             settings["listen"], " (TLS)" if tls else "")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="http", daemon=True).start()
    threading.Thread(target=_notify_systemd, args=(sampler, stop), name="sd-notify", daemon=True).start()
    stop.wait()
    log.info("stopping")
    sdnotify.notify("STOPPING=1")
    server.shutdown()
    server.server_close()
    sampler.stop(timeout=1.0)
    return 0


def _check_calibration(sampler: Sampler, cal: calibration.Calibration) -> Optional[Tuple[int, str]]:
    """(exit code, message) when the calibration names a rail the source lacks or cannot be checked."""
    if not sampler.wait_ready(CALIBRATION_CHECK_S):
        reason = sampler.snapshot().last_error or "no reading within %.0f s" % CALIBRATION_CHECK_S
        return EXIT_RUNTIME, "cannot check calibration file %s against the source's rails: %s" % (cal.path, reason)
    try:
        cal.check_rails(sampler.snapshot().rails)
    except calibration.CalibrationError as exc:
        return EXIT_CONFIG, str(exc)
    return None


def _notify_systemd(sampler: Sampler, stop: threading.Event) -> None:
    """READY=1 after the first good sample; WATCHDOG=1 while the sampler thread lives and is not stuck.

    A read that hangs for a whole ping period (a wedged I2C bus) withholds the ping, so systemd's
    WatchdogSec restarts the daemon; a sensor that fails fast is handled by the sampler's retries.
    """
    while not stop.is_set() and not sampler.wait_ready(0.5):
        if not sampler.alive():
            return
    if stop.is_set():
        return
    sdnotify.notify("READY=1")
    period = sdnotify.watchdog_period_s()
    if period is None:
        return
    while not stop.wait(period):
        if sampler.alive() and sampler.read_running_s() < period:
            sdnotify.notify("WATCHDOG=1")


def _tls_context(settings) -> Optional[ssl.SSLContext]:
    if not settings["tls_cert"]:
        return None
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        path = settings[key]
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise config.ConfigError("%s: cannot read %s: %s" % (key, path, exc.strerror or exc)) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings["tls_cert"], settings["tls_key"])
    except (OSError, ssl.SSLError) as exc:
        raise config.ConfigError("tls_cert/tls_key: %s and %s are not a matching PEM certificate and key (%s)"
                                 % (settings["tls_cert"], settings["tls_key"], exc)) from None
    if settings["tls_client_ca"]:
        try:
            context.load_verify_locations(settings["tls_client_ca"])
        except (OSError, ssl.SSLError) as exc:
            raise config.ConfigError("tls_client_ca: %s is not a PEM CA bundle (%s)"
                                     % (settings["tls_client_ca"], exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
