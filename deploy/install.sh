#!/bin/sh
# Install jetson-power-exporter as a hardened systemd service on a Jetson.
#
#   sudo deploy/install.sh              install or upgrade, enable and start
#   sudo deploy/install.sh --uninstall  stop, disable and remove (an edited
#                                       config is kept; --purge removes it)
#
# What it writes (PREFIX defaults to /opt/jetson-power-exporter):
#   PREFIX/venv/                                  virtualenv with the package; on a Jetson
#                                                 it sees the system site-packages, so it
#                                                 uses NVIDIA's torch (pip never installs one)
#   /etc/systemd/system/jetson-power-exporter.service
#   /etc/systemd/system/jetson-power-exporter.service.d/10-no-jtop.conf
#                                                 only without a jtop group
#   /etc/jetson-power-exporter/config.yaml        only if absent or unedited;
#                                                 else config.yaml.dist beside it
#
# Running it again is safe: files are rewritten only when they differ, the
# venv is upgraded in place, and an edited config is never touched.
#
# Options:
#   --prefix DIR      install root of the venv (default /opt/jetson-power-exporter)
#   --destdir DIR     stage every file under DIR (also $DESTDIR); implies
#                     --no-start.  A venv staged this way keeps DIR in its
#                     script paths, so it is for tests, not for packaging.
#   --python PY       interpreter for the venv (default python3, >= 3.6)
#   --package SPEC    what pip installs (default: this checkout); a wheel path works
#   --pip-args ARGS   extra pip arguments, e.g. "--no-index --find-links /media/wheels"
#                     for an offline board
#   --jtop yes|no|auto  add the [jtop] extra and the jtop group (auto: when
#                     jetson-stats is installed; the default)
#   --no-venv         do not create the venv or run pip (the venv is provided
#                     by someone else; the test suite uses this)
#   --no-start        do not run systemctl
#   --uninstall       remove what install wrote; --purge also removes the config
#
# A Jetson is recognised by /etc/nv_tegra_release or its device-tree model
# (deploy/jetson.sh; JETSON_ROOT=DIR reads them under DIR instead of /).
set -eu

UNIT=jetson-power-exporter.service
PREFIX=/opt/jetson-power-exporter
DESTDIR=${DESTDIR:-}
PYTHON=python3
PACKAGE=
PIP_ARGS=
JTOP=auto
DO_VENV=1
DO_START=1
ACTION=install
PURGE=0

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --package) PACKAGE=${2:?--package needs a pip requirement}; shift 2 ;;
        --package=*) PACKAGE=${1#*=}; shift ;;
        --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
        --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
        --jtop) JTOP=${2:?--jtop needs yes, no or auto}; shift 2 ;;
        --jtop=*) JTOP=${1#*=}; shift ;;
        --no-venv) DO_VENV=0; shift ;;
        --no-start) DO_START=0; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
case "$JTOP" in yes|no|auto) ;; *) die "--jtop must be yes, no or auto" ;; esac
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    DO_START=0
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo), or stage into a directory with --destdir"
fi
[ "$DO_START" -eq 1 ] && ! command -v systemctl >/dev/null 2>&1 && die "systemctl not found"

VENV=$PREFIX/venv
UNIT_DIR=/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$UNIT.d
NO_JTOP=$DROPIN_DIR/10-no-jtop.conf
CONF_DIR=/etc/jetson-power-exporter
CONF=$CONF_DIR/config.yaml

# install_file SRC DEST MODE: copy only when the content differs.
install_file() {
    if [ -f "$DESTDIR$2" ] && cmp -s "$1" "$DESTDIR$2"; then
        chmod "$3" "$DESTDIR$2"
        return 0
    fi
    mkdir -p "$(dirname "$DESTDIR$2")"
    tmp="$DESTDIR$2.tmp.$$"
    cp "$1" "$tmp" && chmod "$3" "$tmp" && mv -f "$tmp" "$DESTDIR$2"
    say "wrote $2"
}

remove() {
    if [ -e "$DESTDIR$1" ] || [ -L "$DESTDIR$1" ]; then
        rm -rf "$DESTDIR$1"
        say "removed $1"
    fi
}

rmdir_if_empty() {
    [ -d "$DESTDIR$1" ] && rmdir "$DESTDIR$1" 2>/dev/null && say "removed $1/"
    return 0
}

has_jtop() {
    case "$JTOP" in
        yes) return 0 ;;
        no) return 1 ;;
    esac
    getent group jtop >/dev/null 2>&1 && return 0
    "$PYTHON" -c "import jtop" >/dev/null 2>&1
}

systemd_running() { [ "$DO_START" -eq 1 ] && [ -d /run/systemd/system ]; }

do_install() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 6))' 2>/dev/null \
        || die "$PYTHON is missing or older than Python 3.6"

    if has_jtop; then WITH_JTOP=1; else WITH_JTOP=0; fi

    # On a Jetson the venv sees the system site-packages: NVIDIA's CUDA torch lives there.
    if board=$(sh "$HERE/jetson.sh" release); then
        say "Jetson: $board; the venv uses the system site-packages"
        VENV_ARGS=--system-site-packages
    else
        board=
        VENV_ARGS=
    fi

    if [ "$DO_VENV" -eq 1 ]; then
        cfg=$DESTDIR$VENV/pyvenv.cfg
        if [ -x "$DESTDIR$VENV/bin/python" ]; then
            if [ -n "$board" ] && grep -q '^include-system-site-packages *= *false' "$cfg"; then
                sed 's/^include-system-site-packages *= *false/include-system-site-packages = true/' "$cfg" >"$cfg.tmp"
                mv -f "$cfg.tmp" "$cfg"
                say "venv $VENV now uses the system site-packages"
            fi
        else
            say "creating venv $VENV"
            # shellcheck disable=SC2086
            "$PYTHON" -m venv $VENV_ARGS "$DESTDIR$VENV"
        fi
        pkg=${PACKAGE:-$REPO}
        if [ "$WITH_JTOP" -eq 1 ]; then
            # The jtop client must match the jtop service's version, so pin
            # the one installed system-wide when there is one.
            pin=$("$PYTHON" -c 'try:
    from importlib.metadata import version
except ImportError:  # Python < 3.8 (JetPack 4.6)
    import pkg_resources
    def version(name):
        return pkg_resources.get_distribution(name).version
print(version("jetson-stats"))' 2>/dev/null || true)
            extra="$pkg[jtop]"
            [ -n "$pin" ] && extra="$extra jetson-stats==$pin"
        else
            extra=$pkg
        fi
        # PIP_ARGS and extra are word lists on purpose; no globbing of "[jtop]".
        set -f
        # Ubuntu 18.04's venv brings pip 9, which can neither build this package nor read
        # manylinux2014 wheels: upgrade it first (to 21.3.1, the last for Python 3.6, there).
        # shellcheck disable=SC2086
        "$DESTDIR$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --upgrade $PIP_ARGS pip || say "could not upgrade pip in $VENV; trying with the one it has"
        # shellcheck disable=SC2086
        "$DESTDIR$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --upgrade $PIP_ARGS $extra
        set +f
        say "installed $(basename "$pkg") into $VENV"
        [ -z "$board" ] || say "$(sh "$HERE/jetson.sh" torch "$DESTDIR$VENV/bin/python")"
    fi

    # The unit, with ExecStart pointing at this prefix.
    tmp_unit=$(mktemp)
    trap 'rm -f "$tmp_unit"' EXIT
    sed "s#/opt/jetson-power-exporter/venv#$VENV#g" "$REPO/systemd/$UNIT" >"$tmp_unit"
    install_file "$tmp_unit" "$UNIT_DIR/$UNIT" 0644

    # systemd refuses to start a unit whose SupplementaryGroups= names a
    # group that does not exist: reset it on boards without jetson-stats.
    if [ "$WITH_JTOP" -eq 1 ]; then
        remove "$NO_JTOP"
        rmdir_if_empty "$DROPIN_DIR"
    else
        printf '%s\n' \
            "# Written by install.sh: no jtop group here (jetson-stats is not installed)." \
            "# Re-run install.sh after installing jetson-stats to remove this file." \
            "[Service]" "SupplementaryGroups=" >"$tmp_unit"
        install_file "$tmp_unit" "$NO_JTOP" 0644
    fi

    # The config: never overwrite one the user edited.
    mkdir -p "$DESTDIR$CONF_DIR"
    chmod 0755 "$DESTDIR$CONF_DIR"
    if [ ! -f "$DESTDIR$CONF" ]; then
        install_file "$REPO/deploy/config.yaml" "$CONF" 0644
    elif cmp -s "$REPO/deploy/config.yaml" "$DESTDIR$CONF"; then
        remove "$CONF.dist"
    else
        say "kept edited $CONF"
        install_file "$REPO/deploy/config.yaml" "$CONF.dist" 0644
    fi

    if systemd_running; then
        systemctl daemon-reload
        systemctl enable "$UNIT" >/dev/null
        # restart (not start) so an upgrade takes effect
        systemctl restart "$UNIT"
        say "started $UNIT; check with: systemctl status $UNIT; curl -s localhost:8000/healthz"
    else
        say "not starting the service (--no-start, --destdir, or no systemd)"
    fi
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
    fi
    remove "$NO_JTOP"
    rmdir_if_empty "$DROPIN_DIR"
    remove "$UNIT_DIR/$UNIT"
    systemd_running && systemctl daemon-reload
    remove "$VENV"
    rmdir_if_empty "$PREFIX"
    remove "$CONF.dist"
    if [ "$PURGE" -eq 1 ] || { [ -f "$DESTDIR$CONF" ] && cmp -s "$REPO/deploy/config.yaml" "$DESTDIR$CONF"; }; then
        remove "$CONF"
    elif [ -f "$DESTDIR$CONF" ]; then
        say "kept edited $CONF (use --purge to remove it)"
    fi
    rmdir_if_empty "$CONF_DIR"
}

if [ "$ACTION" = uninstall ]; then do_uninstall; else do_install; fi
