"""Where a Jetson says it throttled: the over-current event counters and the thermal cooling devices.

* Over-current (JetPack 5/6, Orin and later): the ``tegra234-oc-event``
  driver registers a hwmon device named ``soctherm_oc``
  (``devices/platform/soctherm-oc-event/hwmon/hwmonN``) with, per event,
  ``ocN_event_cnt`` (how many times the BPMP saw it since boot, a counter)
  and ``ocN_throt_en`` (1 when the event throttles the clocks).  On Orin
  OC1 is under-voltage, OC2 average and OC3 instantaneous over-current of
  the module input (Jetson Linux Developer Guide, Platform Power and
  Performance).  JetPack 4 keeps its over-current state in debugfs, which
  needs root: nothing is read there.
* Thermal: every ``class/thermal/cooling_deviceN`` but the fans is a
  throttle (on JetPack 4 the soctherm ``cpu-balanced``, ``gpu-balanced``
  ... devices); ``cur_state`` above 0 means it is throttling now, up to
  ``max_state``.  On Orin the BPMP throttles in firmware and only the fan
  is a cooling device, so there is nothing thermal to read.

:func:`discover` lists the files once; the hwmon source reads them with the
power monitors' alarm files when asked (a scrape, ``/api/v1/alarms``).
"""

import os
import re
from typing import List, Tuple

OC_HWMON_NAME = "soctherm_oc"
_OC_FILE = re.compile(r"^oc(\d+)_(event_cnt|throt_en)$")
_HWMON_DIR = re.compile(r"^hwmon\d+$")
_COOLING_DIR = re.compile(r"^cooling_device\d+$")

# (slot, key, path): slot ``oc_events`` / ``oc_enabled`` with key ``ocN``, or
# ``cooling`` with key (device type, max_state).
Entry = Tuple[str, object, str]


def _text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _over_current(root: str) -> List[Entry]:
    entries = []  # type: List[Entry]
    class_dir = os.path.join(root, "class", "hwmon")
    for name in filter(_HWMON_DIR.match, _listdir(class_dir)):
        hwmon = os.path.join(class_dir, name)
        if _text(os.path.join(hwmon, "name")) != OC_HWMON_NAME:
            continue
        for entry in _listdir(hwmon):
            match = _OC_FILE.match(entry)
            if match:
                slot = "oc_events" if match.group(2) == "event_cnt" else "oc_enabled"
                entries.append((slot, "oc" + match.group(1), os.path.join(hwmon, entry)))
        break  # one per board
    return entries


def _thermal(root: str) -> List[Entry]:
    entries = []  # type: List[Entry]
    class_dir = os.path.join(root, "class", "thermal")
    seen = set()
    for name in filter(_COOLING_DIR.match, _listdir(class_dir)):
        device = os.path.join(class_dir, name)
        kind = _text(os.path.join(device, "type"))
        state = os.path.join(device, "cur_state")
        if not kind or "fan" in kind.lower() or not os.path.exists(state):
            continue  # a fan cools without slowing anything down
        try:
            max_state = int(_text(os.path.join(device, "max_state")))
        except ValueError:
            continue
        if kind in seen:
            kind = "%s@%s" % (kind, name)
        seen.add(kind)
        entries.append(("cooling", (kind, max_state), state))
    return entries


def discover(root: str) -> List[Entry]:
    """The throttle files under the sysfs ``root`` that this kernel has, in a stable order."""
    return _over_current(root) + _thermal(root)
