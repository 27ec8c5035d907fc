"""Which Jetson power rails add up to the board's total.

The on-module monitors (INA3221, and the INA238 on the Thor carrier) measure
several rails at once, and on most boards one of them is the module's input
while the others are supplies fed from it: adding them all counts the same
watts twice.  tegrastats and the hwmon/iio sysfs tree use the same rail
names, so both sources share this rule.

Board topologies, from NVIDIA's Jetson Linux Developer Guide, "Platform Power
and Performance" chapter, section "Software-Based Power Consumption Modeling"
for each module family (docs.nvidia.com/jetson/archives/<release>/DeveloperGuide):

- Jetson Nano (L4T 32): ``POM_5V_IN`` is the module input; ``POM_5V_GPU`` and
  ``POM_5V_CPU`` are parts of it ("Power Management for Jetson Nano and Jetson
  TX1 Devices").
- Jetson TX1/TX2/TX2 NX, Xavier NX, Orin NX, Orin Nano: ``VDD_IN`` is the
  module input; ``VDD_CPU_GPU_CV``, ``VDD_SOC``, ``VDD_SYS_*`` and (L4T 28)
  ``VDD_CPU``, ``VDD_GPU``, ``VDD_SOC``, ``VDD_WIFI``, ``VDD_DDR`` are fed from it.
- Jetson AGX Xavier: no input rail is monitored; ``GPU``, ``CPU``, ``SOC``,
  ``CV``, ``VDDRQ`` and ``SYS5V`` are fed in parallel from the system input, so
  their sum is the module's power (Jetson AGX Xavier Series Product Design
  Guide DG-09840-001, 5.6.2 "Power Monitor").
- Jetson AGX Orin: no input rail; ``VDD_GPU_SOC``, ``VDD_CPU_CV`` and
  ``VIN_SYS_5V0`` are parallel, ``VDDQ_VDD2_1V8AO`` is fed from
  ``VIN_SYS_5V0`` and ``NC`` channels are not connected ("Jetson Orin Nano
  Series, Jetson Orin NX Series and Jetson AGX Orin Series").
- Jetson Thor: ``VIN`` (the carrier's INA238) is the system input; the
  module's INA3221 rails are parts of it ("Jetson Thor Product Family").
"""

from typing import Dict, List, Optional

# Input rails, most inclusive first: when one is present it *is* the total.
INPUT_RAILS = ("VIN", "VDD_IN", "POM_5V_IN")

# Monitor channels wired to nothing: never a rail.
NOT_CONNECTED = frozenset({"NC"})

# rail -> the listed rail that feeds it (counted inside its parent already).
FED_FROM = {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}


def input_rail(rails: Dict[str, float]) -> Optional[str]:
    """The name of the board's input rail among ``rails``, if it has one."""
    upper = {name.upper(): name for name in rails}
    for candidate in INPUT_RAILS:
        if candidate in upper:
            return upper[candidate]
    return None


def counted_rails(names) -> List[str]:
    """The rails whose watts make the board total, from rail names alone.

    The input rail where the board has one; otherwise the parallel rails,
    leaving out unconnected channels and rails fed from another listed rail.
    A source with a fixed rail set computes this once, not on every read.
    """
    names = list(names)
    name = input_rail(dict.fromkeys(names, 0.0))
    if name is not None:
        return [name]
    present = {n.upper() for n in names}
    return [n for n in names if n.upper() not in NOT_CONNECTED and FED_FROM.get(n.upper()) not in present]


def total_of(rails: Dict[str, float]) -> float:
    """Board power in watts from per-rail watts (names as tegrastats/sysfs print them).

    Raises ValueError for an empty mapping: no rails is no reading, not 0 W.
    """
    if not rails:
        raise ValueError("no power rails to total")
    return sum(rails[n] for n in counted_rails(rails))
