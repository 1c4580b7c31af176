#!/bin/bash
# imagekit-context: apply an OpenNebula CONTEXT CD at boot, with one-context's semantics.
#
# Finds the CD labelled CONTEXT, copies its files to $RUN_DIR/cd, reads context.sh by
# sourcing it in a clean subshell (as one-context does, but its variables never reach this
# script's own environment, so a context key such as PATH or IFS cannot break the agent),
# applies hostname, NICs (matched by ETHn_MAC), DNS, user, SSH keys, password, START_SCRIPT,
# INIT_SCRIPTS and user data that is a script (once per VM, as cloud-init), then prints one
# line on the serial console:
#   IMAGEKIT-CONTEXT {"status":"ok"|"error"|"no-context", ...}
# The guest has no Python: bash, coreutils, util-linux, iproute2 and passwd only.

set -u
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

VERSION=1
RUN_DIR=${IMAGEKIT_CONTEXT_RUN_DIR:-/run/imagekit-context}
CONSOLE=${IMAGEKIT_CONTEXT_CONSOLE:-/dev/ttyS0}
# Tests run the agent on a build host: ROOT is a fake root for the files it writes, and STUBS
# a directory of stand-ins for ip, useradd, chpasswd… that must then come first in PATH.
ROOT=${IMAGEKIT_CONTEXT_ROOT:-}
if [ -n "$ROOT" ]; then
    [ -n "${IMAGEKIT_CONTEXT_STUBS:-}" ] || { echo "IMAGEKIT_CONTEXT_ROOT needs IMAGEKIT_CONTEXT_STUBS" >&2; exit 2; }
    PATH=$IMAGEKIT_CONTEXT_STUBS:$PATH
fi
SYS_NET=${IMAGEKIT_CONTEXT_SYSNET:-/sys/class/net}
CD_DIR=$RUN_DIR/cd
MNT_DIR=$RUN_DIR/mnt

declare -A CTX=()
ERRORS=()
NICS_JSON=()
INIT_RESULTS=()
APPLIED_HOSTNAME=""
SSH_KEYS=0
PASSWORD_SET=false
START_RC=""
USER_DATA_RC=""
USER_DATA_BEFORE=false
STATE_DIR=$ROOT/var/lib/imagekit-context
CTX_USER=""
# Whether cloud-init will also read the context (images built with `context_agent: both`):
# boot-test then waits for cloud-init's verdict too.
CLOUD_INIT=false
if [ -x "$ROOT/usr/bin/cloud-init" ] && [ ! -e "$ROOT/etc/cloud/cloud-init.disabled" ]; then
    CLOUD_INIT=true
fi

log() { printf 'imagekit-context: %s\n' "$*" >&2; }
err() { ERRORS+=("$*"); log "error: $*"; }

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    s=$(printf '%s' "$s" | tr -d '\000-\037')
    printf '"%s"' "$s"
}

json_list() {  # json_list ITEM... → ["a","b"] (items are JSON-escaped strings)
    local out="" item
    for item in "$@"; do out+="${out:+,}$(json_str "$item")"; done
    printf '[%s]' "$out"
}

report() {  # report STATUS
    local status=$1 nics
    nics=$(IFS=,; printf '%s' "${NICS_JSON[*]:-}")
    local line
    line="IMAGEKIT-CONTEXT {\"status\":$(json_str "$status"),\"version\":$VERSION"
    line+=",\"hostname\":$(json_str "$APPLIED_HOSTNAME"),\"nics\":[$nics]"
    line+=",\"user\":$(json_str "$CTX_USER"),\"ssh_keys\":$SSH_KEYS,\"password\":$PASSWORD_SET"
    line+=",\"start_script\":${START_RC:-null},\"init_scripts\":$(json_list "${INIT_RESULTS[@]}")"
    line+=",\"user_data\":${USER_DATA_RC:-null},\"user_data_ran_before\":$USER_DATA_BEFORE"
    line+=",\"files\":$(json_list "${CD_FILES[@]}"),\"errors\":$(json_list "${ERRORS[@]}")"
    line+=",\"cloud_init\":$CLOUD_INIT,\"uptime\":$(json_str "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)")}"
    mkdir -p "$RUN_DIR"
    printf '%s\n' "${line#IMAGEKIT-CONTEXT }" > "$RUN_DIR/result.json"
    printf '%s\n' "$line"
    if [ -w "$CONSOLE" ]; then
        printf '\r\n%s\r\n' "$line" > "$CONSOLE" 2>/dev/null || true
    fi
}

# ---------------------------------------------------------------------------------------------
# Finding and reading the CD

find_cd() {
    # one-context: blkid by label, mount retried (addon-context-linux#247). Only wait when an
    # optical drive exists, so an image booted without a CD is not held up.
    local dev="" try
    modprobe -qa sr_mod isofs 2>/dev/null || true
    udevadm settle -t 10 2>/dev/null || true
    for try in 1 2 3 4 5 6 7 8 9 10; do
        if [ -e /dev/disk/by-label/CONTEXT ]; then
            dev=$(readlink -f /dev/disk/by-label/CONTEXT)
        else
            dev=$(blkid -c /dev/null -l -t LABEL=CONTEXT -o device 2>/dev/null | grep -v '^/dev/loop' | head -n1)
        fi
        [ -n "$dev" ] && { printf '%s\n' "$dev"; return 0; }
        ls /dev/sr* >/dev/null 2>&1 || [ "$try" -lt 3 ] || return 1
        sleep 1
    done
    return 1
}

copy_cd() {  # copy_cd DEVICE: mount read-only, copy to $CD_DIR, unmount
    local dev=$1 try
    mkdir -p "$MNT_DIR" && chmod 0700 "$RUN_DIR"
    for try in 1 2 3 4 5 6; do
        mount -o ro -t iso9660 "$dev" "$MNT_DIR" 2>/dev/null && break
        [ "$try" -eq 6 ] && { err "cannot mount $dev"; return 1; }
        sleep 1
    done
    rm -rf "$CD_DIR" && mkdir -p "$CD_DIR" && cp -R "$MNT_DIR"/. "$CD_DIR"/ || err "cannot copy the CD"
    umount "$MNT_DIR" 2>/dev/null || true
}

read_context() {  # read_context FILE: fill CTX from FILE
    local file=$1 key value
    # Source in a subshell with an empty environment; keys come from the file's KEY= lines
    # (one-context's export_rc_vars) and are printed NUL-separated on fd 3 using builtins only,
    # so whatever the file sets (PATH, IFS, functions) ends with the subshell.
    while IFS= read -r -d '' key && IFS= read -r -d '' value; do
        CTX[$key]=$value
    done < <(cd "$CD_DIR" && env -i PATH="$PATH" timeout 60 bash -c '
        mapfile -t __ik_names < <(grep -oE "^[A-Za-z_][A-Za-z0-9_]*=" "$1" | tr -d =)
        . "$1" >/dev/null 2>&1 </dev/null
        for __ik_n in "${__ik_names[@]}"; do
            [ "${!__ik_n+set}" = set ] && builtin printf "%s\0%s\0" "$__ik_n" "${!__ik_n}" >&3
        done
        true' imagekit-context "$file" 3>&1 1>/dev/null 2>/dev/null)
}

ctx() { printf '%s' "${CTX[$1]:-}"; }

# ---------------------------------------------------------------------------------------------
# What one-context configures

apply_hostname() {
    local name
    name=$(ctx SET_HOSTNAME)
    [ -n "$name" ] || name=$(ctx HOSTNAME)
    [ -n "$name" ] || return 0
    # one-context net-15: characters outside [-a-zA-Z0-9.] become '-', outer '-' stripped.
    name=$(printf '%s' "$name" | tr -c -- '-a-zA-Z0-9.' '-' | sed -e 's/^-*//' -e 's/-*$//')
    [ -n "$name" ] || { err "hostname: nothing left after sanitising"; return 0; }
    local short=${name%%.*}
    printf '%s\n' "$name" > "$ROOT/etc/hostname"
    if [ -z "$ROOT" ]; then
        hostname "$name" 2>/dev/null || err "hostname: cannot set $name"
    fi
    local hosts="$ROOT/etc/hosts" fqdn_part=""
    [ "$short" != "$name" ] && fqdn_part="$name "
    if [ -f "$hosts" ]; then
        sed -i '/^127\.0\.1\.1[[:space:]]/d' "$hosts"
    fi
    printf '127.0.1.1\t%s%s\n' "$fqdn_part" "$short" >> "$hosts"
    APPLIED_HOSTNAME=$name
}

mask_to_prefix() {  # 255.255.255.0 → 24; a bare number is returned as is
    local mask=$1 bits=0 octet
    case $mask in ''|*[!0-9.]*) printf '24'; return;; *.*) ;; *) printf '%s' "$mask"; return;; esac
    local IFS=.
    for octet in $mask; do
        case $octet in
            255) bits=$((bits + 8));; 254) bits=$((bits + 7));; 252) bits=$((bits + 6));;
            248) bits=$((bits + 5));; 240) bits=$((bits + 4));; 224) bits=$((bits + 3));;
            192) bits=$((bits + 2));; 128) bits=$((bits + 1));;
        esac
    done
    printf '%s' "$bits"
}

iface_by_mac() {  # the interface whose permanent or current address is MAC
    local mac want dev
    want=$(printf '%s' "$1" | tr 'A-Z' 'a-z')
    for dev in "$SYS_NET"/*; do
        [ -e "$dev/address" ] || continue
        mac=$(cat "$dev/address")
        [ "$mac" = "$want" ] && { basename "$dev"; return 0; }
    done
    return 1
}

# The image's ifupdown file as the builder wrote it (imagekit/builder/firstboot.py) asks DHCP
# for eth0, for clouds without a context. An interface the context configures is this agent's:
# ifupdown must not ask DHCP for it too, or the boot and the shutdown each wait a minute on a
# network without a DHCP server. Rewritten at each boot (the context may change); a file that
# does not start with the builder's first line (an admin's, cloud-init's) is left alone.
IFUPDOWN_HEADER="# written by imagekit"

leave_to_context() {  # $@: the interfaces the context configured
    local file="$ROOT/etc/network/interfaces" tmp dev method
    [ -f "$file" ] && [ "$(head -n 1 "$file")" = "$IFUPDOWN_HEADER" ] || return 0
    tmp=$(mktemp "$ROOT/etc/network/.interfaces.XXXXXX") || { err "network: cannot write interfaces"; return; }
    {
        printf '%s\n%s\n\n%s\n%s\n' "$IFUPDOWN_HEADER" "source /etc/network/interfaces.d/*" \
            "auto lo" "iface lo inet loopback"
        method=dhcp
        case " $* " in *" eth0 "*) method=manual;; esac
        printf '\nallow-hotplug eth0\niface eth0 inet %s\n' "$method"
        for dev in "$@"; do
            [ "$dev" = eth0 ] || printf '\nallow-hotplug %s\niface %s inet manual\n' "$dev" "$dev"
        done
    } > "$tmp"
    chmod 0644 "$tmp"
    if cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
    else
        mv "$tmp" "$file" || err "network: cannot replace interfaces"
    fi
}

apply_network() {
    local key n mac dev ip mask prefix gw mtu dns got
    local -a nameservers=() configured=()
    for key in $(printf '%s\n' "${!CTX[@]}" | grep -E '^ETH[0-9]+_MAC$' | sort -V); do
        n=${key%_MAC}
        mac=$(ctx "${n}_MAC")
        [ -n "$mac" ] || continue
        if ! dev=$(iface_by_mac "$mac"); then
            err "$n: no interface with MAC $mac"
            continue
        fi
        case $(ctx "${n}_METHOD") in
            dhcp|skip)  # one-context: left to the image's own DHCP client / untouched
                NICS_JSON+=("{\"name\":$(json_str "$n"),\"device\":$(json_str "$dev"),\"mac\":$(json_str "$mac"),\"ip\":\"\",\"method\":$(json_str "$(ctx "${n}_METHOD")")}")
                continue;;
        esac
        configured+=("$dev")
        ip=$(ctx "${n}_IP"); mask=$(ctx "${n}_MASK"); gw=$(ctx "${n}_GATEWAY"); mtu=$(ctx "${n}_MTU")
        prefix=$(mask_to_prefix "${mask:-255.255.255.0}")
        ip link set dev "$dev" up || err "$n: cannot bring $dev up"
        [ -n "$mtu" ] && { ip link set dev "$dev" mtu "$mtu" || err "$n: cannot set MTU $mtu on $dev"; }
        if [ -n "$ip" ]; then
            ip -4 addr replace "$ip/$prefix" dev "$dev" || err "$n: cannot add $ip/$prefix to $dev"
        fi
        if [ -n "$gw" ]; then
            ip -4 route replace default via "$gw" dev "$dev" || err "$n: cannot route via $gw"
        fi
        for dns in $(ctx "${n}_DNS"); do nameservers+=("$dns"); done
        # Report what the kernel has, not what we asked for.
        got=$(ip -o -4 addr show dev "$dev" 2>/dev/null | awk '{print $4}' | grep -F "$ip/" | head -n1)
        NICS_JSON+=("{\"name\":$(json_str "$n"),\"device\":$(json_str "$dev"),\"mac\":$(json_str "$mac"),\"ip\":$(json_str "${got%/*}"),\"prefix\":${prefix:-null},\"gateway\":$(json_str "$gw"),\"mtu\":$(json_str "$(cat "$SYS_NET/$dev/mtu" 2>/dev/null)")}")
    done
    leave_to_context "${configured[@]}"
    for dns in $(ctx DNS); do nameservers+=("$dns"); done
    if [ "${#nameservers[@]}" -gt 0 ]; then
        local resolv="$ROOT/etc/resolv.conf" tmp
        tmp=$(mktemp "$ROOT/etc/.resolv.conf.XXXXXX") || { err "dns: cannot write resolv.conf"; return; }
        {
            echo "# written by imagekit-context from the CONTEXT CD"
            local search
            search=$(ctx SEARCH_DOMAIN)
            [ -n "$search" ] && echo "search $search"
            printf 'nameserver %s\n' "${nameservers[@]}" | awk '!seen[$0]++'
        } > "$tmp"
        chmod 0644 "$tmp"
        rm -f "$resolv" && mv "$tmp" "$resolv" || err "dns: cannot replace resolv.conf"
    fi
}

user_home() { getent passwd "$1" | cut -d: -f6; }

apply_user() {
    local user
    user=$(ctx USERNAME)
    user=${user:-root}
    CTX_USER=$user
    if ! getent passwd "$user" >/dev/null; then
        useradd -m -s /bin/bash "$user" || { err "user: cannot create $user"; return; }
    fi
    local crypted="" plain=""
    if [ -n "$(ctx CRYPTED_PASSWORD_BASE64)" ]; then
        crypted=$(ctx CRYPTED_PASSWORD_BASE64 | base64 -d 2>/dev/null) || err "password: bad base64"
    elif [ -n "$(ctx PASSWORD_BASE64)" ]; then
        plain=$(ctx PASSWORD_BASE64 | base64 -d 2>/dev/null) || err "password: bad base64"
    elif [ -n "$(ctx CRYPTED_PASSWORD)" ]; then
        crypted=$(ctx CRYPTED_PASSWORD)
    else
        plain=$(ctx PASSWORD)
    fi
    if [ -n "$crypted" ]; then
        printf '%s:%s\n' "$user" "$crypted" | chpasswd -e && PASSWORD_SET=true || err "password: chpasswd -e failed"
    elif [ -n "$plain" ]; then
        printf '%s:%s\n' "$user" "$plain" | chpasswd && PASSWORD_SET=true || err "password: chpasswd failed"
    fi
    local keys
    keys=$(printf '%s\n%s\n' "$(ctx SSH_PUBLIC_KEY)" "$(ctx EC2_PUBLIC_KEY)" | grep -v -e '^[[:space:]]*$' -e '^#')
    [ -n "$keys" ] || return 0
    local home auth
    home=$(user_home "$user")
    [ -n "$home" ] || { err "ssh: $user has no home"; return; }
    auth="$ROOT$home/.ssh/authorized_keys"
    mkdir -p "${auth%/*}" && chmod 0700 "${auth%/*}" && touch "$auth" && chmod 0600 "$auth" \
        || { err "ssh: cannot write $auth"; return; }
    local key
    while IFS= read -r key; do
        grep -qxF -- "$key" "$auth" || printf '%s\n' "$key" >> "$auth"
        grep -qxF -- "$key" "$auth" && SSH_KEYS=$((SSH_KEYS + 1))
    done <<< "$keys"
    chown -R "$user:" "${auth%/*}" 2>/dev/null || true
}

run_with_context() {  # run SCRIPT with cwd = the CD copy and the context exported, as one-context
    local script=$1 k first
    local -a vars=(PATH="$PATH" HOME=/root MOUNT_DIR="$CD_DIR" CONTEXT_DIR="$CD_DIR") interp=(/bin/sh)
    for k in "${!CTX[@]}"; do vars+=("$k=${CTX[$k]}"); done
    # /run is mounted noexec: start the script through its #! interpreter instead of exec.
    IFS= read -r first < "$script" || true
    if [ "${first#\#!}" != "$first" ]; then
        read -r -a interp <<< "${first#\#!}"
    fi
    (cd "$CD_DIR" && env -i "${vars[@]}" "${interp[@]}" "$script" </dev/null)
}

apply_start_script() {
    local tmp rc
    if [ -n "$(ctx START_SCRIPT_BASE64)" ]; then
        tmp=$(mktemp "$RUN_DIR/start-script.XXXXXX")
        ctx START_SCRIPT_BASE64 | base64 -d > "$tmp" 2>/dev/null || { err "start_script: bad base64"; return; }
    elif [ -n "$(ctx START_SCRIPT)" ]; then
        tmp=$(mktemp "$RUN_DIR/start-script.XXXXXX")
        ctx START_SCRIPT > "$tmp"
    else
        return 0
    fi
    run_with_context "$tmp" >>"$RUN_DIR/start-script.log" 2>&1
    rc=$?
    START_RC=$rc
    [ "$rc" -eq 0 ] || err "start_script: exit status $rc"
}

apply_init_scripts() {
    local scripts name rc
    scripts=$(ctx INIT_SCRIPTS)
    if [ -z "$scripts" ] && [ -f "$CD_DIR/init.sh" ]; then scripts=init.sh; fi
    for name in $scripts; do
        name=${name##*/}
        if [ ! -f "$CD_DIR/$name" ]; then
            err "init_scripts: $name is not on the CD"
            INIT_RESULTS+=("$name:missing")
            continue
        fi
        run_with_context "$CD_DIR/$name" >>"$RUN_DIR/init-scripts.log" 2>&1
        rc=$?
        INIT_RESULTS+=("$name:$rc")
        [ "$rc" -eq 0 ] || err "init_scripts: $name exited with status $rc"
    done
}

instance_key() {  # the VM's id (VMID), else a digest of its context: what "once" is per
    local key
    key=$(ctx VMID)
    [ -n "$key" ] || key=$(sha256sum < "$CD_DIR/context.sh" | cut -c1-16)
    printf '%s' "$key" | tr -c 'A-Za-z0-9._-' '_'
}

apply_user_data() {
    # cloud-init's OpenNebula datasource: USER_DATA, else USERDATA, base64-decoded when
    # USERDATA_ENCODING (or USER_DATA_ENCODING) is base64; econe's EC2_USER_DATA is base64 always.
    local name encoding tmp marker rc
    encoding=$(ctx USERDATA_ENCODING)
    [ -n "$encoding" ] || encoding=$(ctx USER_DATA_ENCODING)
    if [ -n "$(ctx USER_DATA)" ]; then name=USER_DATA
    elif [ -n "$(ctx USERDATA)" ]; then name=USERDATA
    elif [ -n "$(ctx EC2_USER_DATA)" ]; then name=EC2_USER_DATA; encoding=base64
    else return 0
    fi
    tmp=$(mktemp "$RUN_DIR/user-data.XXXXXX")
    if [ "$encoding" = base64 ]; then
        ctx "$name" | base64 -d > "$tmp" 2>/dev/null || { err "user_data: bad base64 in $name"; return; }
    else
        ctx "$name" > "$tmp"
    fi
    # Only a script is ours to run (cloud-init's x-shellscript part); cloud-config is not.
    [ "$(head -c 2 "$tmp")" = '#!' ] || return 0
    marker="$STATE_DIR/user-data.$(instance_key)"
    if [ -e "$marker" ]; then
        USER_DATA_BEFORE=true
        return 0
    fi
    # The marker is written before the script runs (cloud-init's semaphore too): a script that
    # reboots the VM does not run again.
    mkdir -p "$STATE_DIR" && printf 'running\n' > "$marker" || { err "user_data: cannot write $marker"; return; }
    run_with_context "$tmp" >>"$RUN_DIR/user-data.log" 2>&1
    rc=$?
    USER_DATA_RC=$rc
    printf '%s\n' "$rc" > "$marker"
    [ "$rc" -eq 0 ] || err "user_data: exit status $rc"
}

# ---------------------------------------------------------------------------------------------

main() {
    CD_FILES=()
    mkdir -p "$RUN_DIR" && chmod 0700 "$RUN_DIR"
    if [ -n "${IMAGEKIT_CONTEXT_DIR:-}" ]; then
        # Tests (and a /context directory, one-context's fallback) skip the CD search.
        rm -rf "$CD_DIR" && mkdir -p "$CD_DIR" && cp -R "$IMAGEKIT_CONTEXT_DIR"/. "$CD_DIR"/
    else
        local dev
        if ! dev=$(find_cd); then
            report no-context
            return 0
        fi
        copy_cd "$dev" || { report error; return 0; }
    fi
    if [ ! -f "$CD_DIR/context.sh" ]; then
        err "the CONTEXT CD has no context.sh"
        report error
        return 0
    fi
    local f
    while IFS= read -r f; do CD_FILES+=("${f#./}"); done < <(cd "$CD_DIR" && find . -type f | sort)
    read_context "$CD_DIR/context.sh"
    apply_hostname
    apply_network
    apply_user
    apply_start_script
    apply_init_scripts
    apply_user_data
    if [ "${#ERRORS[@]}" -eq 0 ]; then report ok; else report error; fi
}

if [ "${1:-}" = --print-context ]; then
    # Debugging aid (and the tests' view of the parser): KEY NUL VALUE NUL for each variable.
    CD_DIR=$(cd "$(dirname "$2")" && pwd)
    read_context "$CD_DIR/$(basename "$2")"
    for k in "${!CTX[@]}"; do printf '%s\0%s\0' "$k" "${CTX[$k]}"; done
    exit 0
fi
main "$@"
