#!/bin/sh
# Install the fleetlink bundle of device veh-0001 (profile pi-mcp2515:usb:car).
#
#   sudo ./install.sh              on the device: files in place, services enabled and started
#   sudo ./install.sh --root DIR   into a mounted image or a test tree: files and enablement
#                                  only; nothing is started, reloaded or triggered
#
# Safe to run again: a file is written only when its content, mode or group differs, a service
# is enabled only when it is not, and each change is printed. Edit the bundle, not the installed
# copies: the next run puts the bundle's version back.
set -eu

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "install.sh: $*" >&2; exit 1; }

ROOT=/
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || fail "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
[ -d "$ROOT" ] || fail "$ROOT is not a directory"
R=$(cd "$ROOT" && pwd)
[ "$R" = / ] && R=
BUNDLE=$(cd "$(dirname "$0")" && pwd)
if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
    fail "run it as root: sudo $0"
fi

# What this bundle holds (rendered for its profile).
USES_GPSD=yes
BOOT_BLOCK=yes
SERIAL_CONSOLE=keep
MODULES=""

CHANGES=0
TOUCHED=" "
changed() { # WHAT TAG: report one change and remember what it needs afterwards
    echo "changed: $1"
    CHANGES=$((CHANGES + 1))
    TOUCHED="$TOUCHED$2 "
}
touched() { case $TOUCHED in *" $1 "*) return 0 ;; esac; return 1; }
sc() { if [ -n "$R" ]; then systemctl --root="$R" "$@"; else systemctl "$@"; fi; }

gid_of() { # GROUP: its number in this root's /etc/group
    gid=$(awk -F: -v g="$1" '$1 == g { print $3; exit }' "$R/etc/group" 2>/dev/null || true)
    [ -n "$gid" ] || fail "group $1 missing from $R/etc/group"
    echo "$gid"
}

ensure_user() { # the unprivileged account the agent runs as (User=fleetlink in its unit)
    grep -q '^fleetlink:' "$R/etc/passwd" 2>/dev/null && return 0
    if [ -n "$R" ]; then set -- --root "$R"; else set --; fi
    useradd "$@" --system --user-group --no-create-home --home-dir /var/lib/fleetlink-edge \
        --shell /usr/sbin/nologin fleetlink
    changed "system user fleetlink" user
}

place() { # FILE MODE TAG [GROUP]: bundle FILE -> /FILE when content, mode or group differ
    src=$BUNDLE/$1
    dest=$R/$1
    want_gid=
    [ $# -ge 4 ] && want_gid=$(gid_of "$4")
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        if [ "$(stat -c %a "$dest")" != "$2" ]; then
            chmod "$2" "$dest"
            changed "/$1 (mode $2)" "$3"
        fi
        if [ -n "$want_gid" ] && [ "$(stat -c %g "$dest")" != "$want_gid" ]; then
            chgrp "$want_gid" "$dest"
            changed "/$1 (group $4)" "$3"
        fi
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    tmp=$dest.fleetlink-new
    cp "$src" "$tmp"
    [ -z "$want_gid" ] || chgrp "$want_gid" "$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" "$dest"
    changed "/$1" "$3"
}

boot_file() { # NAME: config.txt or cmdline.txt of this root (Bookworm: /boot/firmware)
    for f in "$R/boot/firmware/$1" "$R/boot/$1"; do
        if [ -f "$f" ]; then echo "$f"; return 0; fi
    done
    fail "no /boot/firmware/$1 or /boot/$1 under ${R:-/}: not a Raspberry Pi OS root?"
}

SCRATCH=$(mktemp)
trap 'rm -f "$SCRATCH"' EXIT
replace_if_changed() { # TARGET WHAT: $SCRATCH over TARGET unless equal (first time: keep a copy)
    cmp -s "$SCRATCH" "$1" && return 0
    [ -f "$1.fleetlink-orig" ] || cp -p "$1" "$1.fleetlink-orig"
    cp "$SCRATCH" "$1.fleetlink-new"
    mv -f "$1.fleetlink-new" "$1"
    changed "$2" boot
}

merge_boot_block() { # keep the bundle's "# BEGIN fleetlink" block at the end of config.txt
    target=$(boot_file config.txt)
    awk -v block="$BUNDLE/boot/config.txt" '
        BEGIN { while ((getline line < block) > 0) text = text line "\n"; close(block) }
        index($0, "# BEGIN fleetlink") == 1 { skip = 1; next }
        skip && index($0, "# END fleetlink") == 1 { skip = 0; next }
        !skip { print }
        END { printf "%s", text }
    ' "$target" >"$SCRATCH"
    replace_if_changed "$target" "${target#"$R"} (fleetlink block)"
}

serial_console_off() { # the receiver gets the UART: no kernel console or login on it
    target=$(boot_file cmdline.txt)
    sed -E -e 's/(^|[[:space:]])console=(serial0|serial1|ttyAMA0|ttyS0),[0-9]+//g' \
        -e 's/^[[:space:]]+//' "$target" >"$SCRATCH"
    replace_if_changed "$target" "${target#"$R"} (serial console removed)"
}

enable_unit() { # UNIT TAG
    sc is-enabled --quiet "$1" 2>/dev/null && return 0
    sc enable --quiet "$1"
    changed "enabled $1" "$2"
}

enable_networkd() {
    sc is-enabled --quiet systemd-networkd.service 2>/dev/null && return 0
    waited=no
    sc is-enabled --quiet systemd-networkd-wait-online.service 2>/dev/null && waited=yes
    enable_unit systemd-networkd.service network
    # Enabling networkd enables its wait-online service too (Also=). networkd manages only CAN
    # links here, none of them required for online, and then wait-online holds
    # network-online.target until its two-minute timeout: leave it as it was.
    if [ "$waited" = no ] && sc is-enabled --quiet systemd-networkd-wait-online.service; then
        sc disable --quiet systemd-networkd-wait-online.service
        echo "note: left systemd-networkd-wait-online.service disabled (it would wait for CAN)"
    fi
}

ensure_user
place etc/default/gpsd 644 gpsd
place etc/fleetlink/agent.toml 640 agent fleetlink
place etc/fleetlink/ca.pem 644 agent
place etc/systemd/network/80-fleetlink-can0.network 644 network
place etc/systemd/system/fleetlink-edge.service 644 unit
place etc/udev/rules.d/70-fleetlink-gnss.rules 644 udev
if [ "$BOOT_BLOCK" = yes ]; then merge_boot_block; fi
if [ "$SERIAL_CONSOLE" = off ]; then serial_console_off; fi

enable_networkd
if [ "$USES_GPSD" = yes ]; then
    [ -e "$R/usr/sbin/gpsd" ] || fail "gpsd is not installed: apt-get install gpsd, then run again"
    enable_unit gpsd.service gpsd
fi
enable_unit fleetlink-edge.service agent
if [ ! -x "$R/opt/fleetlink-edge/bin/fleetlink-edge" ]; then
    echo "warning: no agent at /opt/fleetlink-edge/bin/fleetlink-edge yet (docs/provisioning.md)"
fi

if [ -z "$R" ]; then # a running system: apply what changed
    if touched unit; then systemctl daemon-reload; fi
    if touched udev; then
        udevadm control --reload
        udevadm trigger --action=add --subsystem-match=tty
    fi
    if touched boot; then
        echo "reboot to apply the boot configuration (sudo reboot); the services start at boot"
    else
        if touched modules; then for m in $MODULES; do modprobe "$m"; done; fi
        if touched network; then
            systemctl restart systemd-networkd.service
            echo "restarted systemd-networkd.service"
        fi
        if [ "$USES_GPSD" = yes ]; then
            if touched gpsd || ! systemctl is-active --quiet gpsd.service; then
                systemctl restart gpsd.service
                changed "restarted gpsd.service" gpsd
            fi
        fi
        if touched agent || touched unit || ! systemctl is-active --quiet fleetlink-edge.service; then
            systemctl restart fleetlink-edge.service
            changed "restarted fleetlink-edge.service" agent
        fi
    fi
fi

if [ "$CHANGES" -eq 0 ]; then
    echo "nothing to change: ${R:-/} already holds this bundle"
else
    echo "$CHANGES change(s) made under ${R:-/}"
fi
