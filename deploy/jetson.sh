#!/bin/sh
# Jetson facts for `make` and deploy/install.sh, so both keep NVIDIA's CUDA torch.
#
#   jetson.sh release      print "L4T R32.7.1, JetPack 4.6.1" and exit 0 on a Jetson; exit 1 elsewhere
#   jetson.sh torch PY     one line: the torch PY imports, or how to get NVIDIA's wheel for this JetPack
#
# A Jetson is a root with etc/nv_tegra_release or a device-tree model naming an NVIDIA Jetson.
# JETSON_ROOT (default /) points both at a stand-in root; the tests use it.
set -eu

ROOT=${JETSON_ROOT:-}
ROOT=${ROOT%/}

# "R32.7.1" from "# R32 (release), REVISION: 7.1, GCID: ..."; empty when the file is absent or unreadable.
l4t() {
    [ -r "$ROOT/etc/nv_tegra_release" ] || return 0
    sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/R\1.\2/p' "$ROOT/etc/nv_tegra_release" | head -n 1
}

is_jetson() {
    [ -e "$ROOT/etc/nv_tegra_release" ] && return 0
    [ -r "$ROOT/proc/device-tree/model" ] && tr -d '\000' <"$ROOT/proc/device-tree/model" | grep -q "Jetson"
}

# The JetPack an L4T release belongs to (NVIDIA's JetPack archive).
jetpack() {
    case "$1" in
        R32.4.*) echo 4.4 ;;
        R32.5.*) echo 4.5 ;;
        R32.6.*) echo 4.6 ;;
        R32.7.*) echo "4.6.${1#R32.7.}" ;;
        R35.1.*) echo 5.0.2 ;;
        R35.2.*) echo 5.1 ;;
        R35.3.*) echo 5.1.1 ;;
        R35.4.*) echo 5.1.2 ;;
        R35.5.*) echo 5.1.3 ;;
        R35.6.*) echo 5.1.4 ;;
        R36.2.*) echo "6.0 DP" ;;
        R36.3.*) echo 6.0 ;;
        R36.4.*) echo 6.1/6.2 ;;
        R38.*) echo 7 ;;
        R32.*) echo 4 ;;
        R35.*) echo 5 ;;
        R36.*) echo 6 ;;
        *) echo "" ;;
    esac
}

release() {
    is_jetson || return 1
    rel=$(l4t)
    if [ -z "$rel" ]; then
        echo "L4T release unknown (no readable etc/nv_tegra_release)"
    elif [ -n "$(jetpack "$rel")" ]; then
        echo "L4T $rel, JetPack $(jetpack "$rel")"
    else
        echo "L4T $rel"
    fi
}

# Where NVIDIA publishes its PyTorch wheels for the JetPack of release $1.
wheel_page() {
    case "$1" in
        R32.*) echo "https://forums.developer.nvidia.com/t/pytorch-for-jetson/72048" ;;
        *) echo "https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform/index.html" ;;
    esac
}

torch() {
    py=$1
    if version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
        where=$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
        echo "using torch $version from $where"
        return 0
    fi
    rel=$(l4t)
    pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    jp=$(jetpack "$rel")
    echo "no torch importable (the exporter runs without it; the profiler needs it): install NVIDIA's wheel for" \
        "${jp:+JetPack $jp }(${rel:-L4T release unknown}, Python $pyver) system-wide from $(wheel_page "$rel"); this venv sees it there"
}

case "${1:-}" in
    release) release ;;
    torch) torch "${2:?torch needs a python}" ;;
    *) echo "usage: jetson.sh release | torch PYTHON" >&2; exit 2 ;;
esac
