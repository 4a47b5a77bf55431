#!/bin/sh
# The rollout's step on one host (deploy/terraform/modules/node), run as root over SSH:
#
#   hf-mirror-step.sh deploy        verify, install, stop (drain), switch, start, wait; roll back on failure
#   hf-mirror-step.sh decommission  drain and stop the node, remove its units, release and keys; keep data
#                                   (not when the host now belongs to another slot: HFM_SLOT)
#
# deploy, in order:
#   1. verify   the uploaded binary's sha256 is HFM_SHA256 (nothing is touched otherwise)
#   2. install  INSTALL_ROOT/releases/SHA256/hf-mirror; the hf-mirror system user; the data directory
#               is created only when missing (never formatted, never emptied)
#   3. gate     when the node runs, refuse to go on unless every other node is live in its view, so a
#               rollout never takes a second node (a second Raft voter) down. "Every other node" is
#               every node of both the installed and the uploaded topology.toml: a node being added
#               (not deployed yet) or removed (leaving) is not waited for; a leaving node that is
#               still live is drained first (it stops serving and hands catalog leadership over)
#   4. switch   back up the node's configuration, install the new one (topology, ca.pem, the node's
#               own certificate and key, the cluster's gossip key and operator token, units), move
#               `previous` to the old release and `current` to the new one
#   5. restart  `systemctl restart`: ExecStop drains the running node, SIGTERM stops it, the new
#               release starts on the same listening sockets (hf-mirror.socket holds them)
#   6. wait     /readyz 200, the process runs the new release, every other node live in its view and
#               seeing it live, its catalog caught up with the leader's applied index and itself a
#               voter (a node just added is promoted by the leader once it caught up), and (with
#               anycast) BIRD's session up and the service address announced again
#   7. on any failure in 5 or 6: switch everything back to what it was, restart, and exit non-zero so
#      that Terraform fails the apply and the nodes after this one are never touched
#
# The cluster is read with `hf-mirror status --json` on the node's operator port (HFM_OPERATOR_URL,
# with the operator token /etc/hf-mirror/operator-token) and jq.
#
# Inputs are environment variables (set by the Terraform module):
#   HFM_NODE           this node's name                 HFM_SLOT         its module slot (1 = first)
#   HFM_SHA256         the release's sha256             HFM_ROOT         install root (/opt/hf-mirror)
#   HFM_INCOMING       upload directory                 HFM_DATA_DIR     the node's data directory
#   HFM_CERTS_DIR      [cluster] certs_dir of topology  HFM_LOCAL_URL    http://127.0.0.1:PORT (/readyz)
#   HFM_OPERATOR_URL   the operator port, http://127.0.0.1:9090           HFM_TLS  1 with TLS files
#   HFM_READY_TIMEOUT  checks of /readyz (one a second) HFM_PEERS_TIMEOUT checks of the cluster (same)
#   HFM_ANYCAST        the anycast address when BIRD announces it (empty: no anycast)
#
# Every wait is a bounded count of checks. Each action is also appended, with a nanosecond timestamp,
# to /var/log/hf-mirror-rollout.log (the rollout's own journal on the host).
set -eu

ACTION=${1:-}
NODE=${HFM_NODE:?HFM_NODE is not set}
ROOT=${HFM_ROOT:-/opt/hf-mirror}
LOG_FILE=/var/log/hf-mirror-rollout.log
SERVICE=hf-mirror.service
SOCKET=hf-mirror.socket
BIRD_UNIT=hf-mirror-bird.service
ANYCAST_UNIT=hf-mirror-anycast.service
BIRD_CTL=/run/hf-mirror-bird.ctl
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/hf-mirror
BACKUP=$ROOT/rollback
TOKEN_FILE=$CONF_DIR/operator-token

log() {
    printf 'hf-mirror-step %s: %s\n' "$NODE" "$*"
    printf '%s %s %s\n' "$(date +%s%N)" "$NODE" "$*" >>"$LOG_FILE" 2>/dev/null || true
}

fail() {
    log "FAILED: $*"
    exit 1
}

need_tools() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || fail "this host lacks $tool"
    done
}

# --- the topology files ----------------------------------------------------------------------------

# The node names of a topology.toml, one a line, in file order: the `name` key of each [[nodes]]
# table (nothing when the file does not exist).
topology_nodes() {
    [ -f "$1" ] || return 0
    awk '
        /^[ \t]*\[\[nodes\]\][ \t]*(#.*)?$/ { in_node = 1; next }
        /^[ \t]*\[/ { in_node = 0; next }
        in_node && /^[ \t]*name[ \t]*=/ {
            value = $0
            sub(/^[^=]*=[ \t]*"/, "", value)
            sub(/".*$/, "", value)
            print value
            in_node = 0
        }
    ' "$1"
}

# Whether word $1 is in the list $2 (words separated by blanks or newlines).
in_list() {
    for item in $2; do [ "$item" = "$1" ] && return 0; done
    return 1
}

# The membership change this deploy makes, from the topology the host runs and the one uploaded:
#   REQUIRED  nodes of both, except this one: they must be live before this node stops and after it
#             starts (a rollout never takes a second voter down)
#   ADDED     nodes only the new topology has: not deployed yet (their slots come later), not waited for
#   REMOVED   nodes only the installed topology has: leaving (drained, destroyed after the others
#             restarted), not waited for
membership_change() {
    old_nodes=$(topology_nodes "$CONF_DIR/topology.toml")
    new_nodes=$(topology_nodes "$HFM_INCOMING/topology.toml")
    REQUIRED=""
    ADDED=""
    REMOVED=""
    in_list "$NODE" "$new_nodes" || fail "$NODE is not a node of the uploaded topology.toml"
    # A first install has no installed topology: nothing to wait for (a new cluster comes up one
    # node at a time; a node added to a running one is checked after its start).
    [ -n "$old_nodes" ] || return 0
    for name in $new_nodes; do
        [ "$name" = "$NODE" ] && continue
        if in_list "$name" "$old_nodes"; then REQUIRED="$REQUIRED $name"; else ADDED="$ADDED $name"; fi
    done
    for name in $old_nodes; do
        in_list "$name" "$new_nodes" || REMOVED="$REMOVED $name"
    done
}

# --- reading the cluster through `hf-mirror status --json` ------------------------------------------

# STATUS: the document `hf-mirror status --json` prints on this host, asked with binary $1 at the
# node's operator port: {"node": its own /_hfm/status, "members": [{name, state, status}]} where each
# member's status is that node's own /_hfm/status (null when it does not answer). Empty on failure.
STATUS=""
refresh_status() {
    STATUS=$("$1" status --json --url "$HFM_OPERATOR_URL" --token-file "$TOKEN_FILE" 2>/dev/null) || STATUS=""
}

# jq over STATUS.
status_query() {
    printf '%s\n' "$STATUS" | jq -r "$@" 2>/dev/null
}

# The gossip state (live, starting, draining, dead) of node $1 in this node's view.
state_of() {
    status_query --arg name "$1" '.node.members[]? | select(.name == $name) | .state' | head -1
}

# This node's view, one member a line, for the log.
show_view() {
    if [ -z "$STATUS" ]; then
        log "    (no answer from the operator port $HFM_OPERATOR_URL)"
        return 0
    fi
    status_query '.node.members[]? | "    \(.name) \(.state)"' | while IFS= read -r line; do log "$line"; done
    log "    catalog: leader $(status_query '.node.raft.leader_name // "none"'), voters $(status_query '.node.raft.voters // [] | join(",")'), learners $(status_query '.node.raft.learners // [] | join(",")')"
}

# Succeeds when every REQUIRED node is live in the view of this node (asked with binary $1).
others_live() {
    refresh_status "$1"
    [ -n "$STATUS" ] || return 1
    for other in $REQUIRED; do
        [ "$(state_of "$other")" = live ] || return 1
    done
    return 0
}

# Waits (bounded) until every REQUIRED node is live in this node's view.
wait_others_live() {
    checks=0
    while [ "$checks" -lt "$HFM_PEERS_TIMEOUT" ]; do
        others_live "$1" && return 0
        checks=$((checks + 1))
        sleep 1
    done
    log "the cluster as this node sees it:"
    show_view
    return 1
}

# Succeeds when every other node that answers and knows this node sees it live (one that does not
# answer is judged by others_live; one that runs a topology without this node is not asked).
seen_live_by_others() {
    refresh_status "$1"
    [ -n "$STATUS" ] || return 1
    [ "$(status_query --arg me "$NODE" '[.members[]? | select(.name != $me and .status != null) | .status.members[]? | select(.name == $me) | .state] | all(. == "live")')" = true ]
}

# Drains the nodes that leave the topology (REMOVED) while they are live or lead the catalog: they stop
# serving (out of placement and DNS) and hand catalog leadership to another voter, so the catalog
# never depends on a node the restarted nodes no longer talk to. Their operator URLs come from this
# node's view while it still runs the old topology (LEAVING_URLS, "name=url ...").
LEAVING_URLS=""
remember_leaving() {
    LEAVING_URLS=""
    for name in $REMOVED; do
        url=$(status_query --arg name "$name" '.node.members[]? | select(.name == $name) | .operator_url // empty' | head -1)
        [ -n "$url" ] && LEAVING_URLS="$LEAVING_URLS $name=$url"
    done
    return 0
}
drain_leaving() {
    for pair in $LEAVING_URLS; do
        name=${pair%%=*}
        case " ${1:-$REMOVED} " in *" $name "*) ;; *) continue ;; esac
        log "draining $name (it leaves the topology): out of placement and DNS, catalog leadership handed over"
        # The token through a header file: never on a command line. The drain answers once the
        # node's fills finished; leadership is handed over before that, so a short wait is enough.
        # The installed token first, then the one before this deploy (a deploy that changes it).
        header=$ROOT/.operator-header
        for token in "$TOKEN_FILE" "$BACKUP/token"; do
            [ -s "$token" ] || continue
            (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$token")" >"$header")
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -X POST -H "@$header" "${pair#*=}/_hfm/drain" 2>/dev/null || true)
            rm -f "$header"
            [ "$code" = 401 ] || break
        done
    done
}

# Another node's own /_hfm/status asked with the operator token that was in place before this deploy
# (a deploy that changes the token: the others still have the old one). Empty when it does not answer.
status_with_old_token() {
    [ -s "$BACKUP/token" ] && ! cmp -s "$BACKUP/token" "$TOKEN_FILE" || return 0
    url=$(status_query --arg name "$1" '.node.members[]? | select(.name == $name) | .operator_url // empty' | head -1)
    [ -n "$url" ] || return 0
    header=$ROOT/.operator-header
    (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$BACKUP/token")" >"$header")
    curl -s --max-time 5 -H "@$header" "$url/_hfm/status" 2>/dev/null || true
    rm -f "$header"
}

# After a start: every required node live again and seeing this node live; the catalog caught up
# with its leader (this node's Raft applied index reaches the leader's, as read once) and this node
# a voter. Nothing to wait for in a cluster being created (no leader anywhere yet).
wait_cluster() {
    first_install=$1
    binary=$2
    wait_others_live "$binary" || { log "not every other node is live after the restart"; return 1; }
    checks=0
    until seen_live_by_others "$binary"; do
        checks=$((checks + 1))
        [ "$checks" -lt "$HFM_PEERS_TIMEOUT" ] || { log "the other nodes do not see this node live"; show_view; return 1; }
        sleep 1
    done
    log "live: every other node that answers sees this node live"
    target=""
    leader=""
    own=""
    checks=0
    while [ "$checks" -lt "$HFM_PEERS_TIMEOUT" ]; do
        refresh_status "$binary"
        own=$(status_query '.node.raft.last_applied // empty')
        leader=$(status_query '.node.raft.leader_name // empty')
        if [ -z "$leader" ]; then
            # A node that just joined may not have heard from the leader yet: the others' views.
            leader=$(status_query '[.members[]?.status.raft.leader_name // empty] | first // empty')
        fi
        if [ -n "$leader" ] && in_list "$leader" "$REMOVED"; then
            # A leaving node leads: ask it to hand over (at most every fifth check) and wait.
            [ $((checks % 5)) -eq 0 ] && drain_leaving "$leader"
        elif [ -n "$leader" ]; then
            if [ -z "$target" ]; then
                if [ "$leader" = "$NODE" ]; then
                    target=$own
                else
                    target=$(status_query --arg name "$leader" '.members[]? | select(.name == $name) | .status.raft.last_applied // empty')
                    [ -n "$target" ] || target=$(status_with_old_token "$leader" | jq -r '.raft.last_applied // empty' 2>/dev/null)
                fi
            fi
            voter=$(status_query --arg me "$NODE" '.node.raft.voters // [] | index($me) != null')
            if [ -n "$target" ] && [ -n "$own" ] && [ "$own" -ge "$target" ] && [ "$voter" = true ]; then
                log "catalog caught up: a voter, applied $own, leader $leader at $target when asked"
                return 0
            fi
        elif [ "$first_install" = yes ] && [ "$checks" -eq 0 ]; then
            # A new cluster has no quorum until most of its nodes run: nothing to catch up with yet.
            log "catalog: no leader anywhere yet (the cluster is being created); not waiting"
            return 0
        fi
        checks=$((checks + 1))
        sleep 1
    done
    log "catalog not caught up (leader ${leader:-none}, target ${target:-unknown}, applied ${own:-unknown}, voter ${voter:-unknown})"
    show_view
    return 1
}

# --- the unit -----------------------------------------------------------------------------------

unit_show() {
    systemctl show -p "$1" --value "$SERVICE" 2>/dev/null || true
}

# Waits (bounded) for /readyz 200; fails at once when the unit fails or systemd restarts it.
wait_ready() {
    restarts_before=$(unit_show NRestarts)
    checks=0
    while [ "$checks" -lt "$HFM_READY_TIMEOUT" ]; do
        active=$(unit_show ActiveState)
        sub=$(unit_show SubState)
        if [ "$active" = failed ] || [ "$sub" = auto-restart ] || [ "$(unit_show NRestarts)" != "$restarts_before" ]; then
            log "the service failed ($active/$sub); its last lines:"
            journalctl -u "$SERVICE" -n 15 --no-pager -o cat 2>/dev/null | sed 's/^/    /' || true
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$HFM_LOCAL_URL/readyz" 2>/dev/null || true)
        [ "$code" = 200 ] && return 0
        checks=$((checks + 1))
        sleep 1
    done
    log "no /readyz 200 after $HFM_READY_TIMEOUT checks"
    return 1
}

# The release the service's main process runs (its executable's path).
running_release() {
    pid=$(unit_show MainPID)
    [ -n "$pid" ] && [ "$pid" != 0 ] || return 0
    readlink "/proc/$pid/exe" 2>/dev/null || true
}

# After a start: ready, on the new release, live for everyone, caught up with the catalog.
verify_started() {
    first_install=$1
    wait_ready || return 1
    expected=$(readlink -f "$ROOT/releases/$HFM_SHA256/hf-mirror")
    running=$(running_release)
    if [ "$running" != "$expected" ]; then
        log "the service runs $running, not $expected"
        return 1
    fi
    log "ready: /readyz 200, running $running"
    wait_cluster "$first_install" "$ROOT/current/hf-mirror"
}

# --- configuration and its backup ---------------------------------------------------------------

# The files a deploy replaces, as "backup name|path".
config_items() {
    printf '%s\n' "service|$UNIT_DIR/$SERVICE" "socket|$UNIT_DIR/$SOCKET" "topology|$CONF_DIR/topology.toml" \
        "certs|$HFM_CERTS_DIR" "token|$TOKEN_FILE" "tls|$CONF_DIR/tls" "bird|$CONF_DIR/bird.conf" "bird-unit|$UNIT_DIR/$BIRD_UNIT" \
        "anycast-unit|$UNIT_DIR/$ANYCAST_UNIT"
}

backup_config() {
    rm -rf "$BACKUP"
    install -d -m 0700 "$BACKUP"
    config_items | while IFS='|' read -r name path; do
        if [ -e "$path" ]; then cp -a "$path" "$BACKUP/$name"; fi
    done
}

restore_config() {
    config_items | while IFS='|' read -r name path; do
        rm -rf "$path"
        if [ -e "$BACKUP/$name" ]; then cp -a "$BACKUP/$name" "$path"; fi
    done
}

install_config() {
    install -d -m 0755 "$CONF_DIR" "$ROOT/bin"
    install -m 0644 -o root -g root "$HFM_INCOMING/topology.toml" "$CONF_DIR/topology.toml"
    # Only the CA certificate, this node's own certificate and key, and the cluster's gossip key;
    # anything else found in the directory (another node's key, a ca.key copied by hand) is removed.
    install -d -m 0750 -o root -g hf-mirror "$HFM_CERTS_DIR"
    for file in "$HFM_CERTS_DIR"/* "$HFM_CERTS_DIR"/.[!.]*; do
        [ -e "$file" ] || continue
        case ${file##*/} in
            ca.pem | "$NODE.pem" | "$NODE.key" | gossip.key) ;;
            *) log "removing $file from the certificates directory"; rm -rf "$file" ;;
        esac
    done
    install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/ca.pem" "$HFM_CERTS_DIR/ca.pem"
    install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/node.pem" "$HFM_CERTS_DIR/$NODE.pem"
    install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/node.key" "$HFM_CERTS_DIR/$NODE.key"
    install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/gossip.key" "$HFM_CERTS_DIR/gossip.key"
    # The cluster's operator token: the node serves its operator port with it, ExecStop's drain and
    # `hf-mirror status` on this host use it.
    install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/operator-token" "$TOKEN_FILE"
    if [ "${HFM_TLS:-0}" = 1 ]; then
        install -d -m 0750 -o root -g hf-mirror "$CONF_DIR/tls"
        install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/tls.pem" "$CONF_DIR/tls/cert.pem"
        install -m 0640 -o root -g hf-mirror "$HFM_INCOMING/tls.key" "$CONF_DIR/tls/key.pem"
    else
        rm -rf "$CONF_DIR/tls"
    fi
    install -m 0644 "$HFM_INCOMING/$SERVICE" "$UNIT_DIR/$SERVICE"
    install -m 0644 "$HFM_INCOMING/$SOCKET" "$UNIT_DIR/$SOCKET"
    if [ -n "${HFM_ANYCAST:-}" ]; then
        install -m 0644 "$HFM_INCOMING/bird.conf" "$CONF_DIR/bird.conf"
        install -m 0644 "$HFM_INCOMING/$BIRD_UNIT" "$UNIT_DIR/$BIRD_UNIT"
        install -m 0644 "$HFM_INCOMING/$ANYCAST_UNIT" "$UNIT_DIR/$ANYCAST_UNIT"
    else
        rm -f "$CONF_DIR/bird.conf" "$UNIT_DIR/$BIRD_UNIT" "$UNIT_DIR/$ANYCAST_UNIT"
    fi
    install -m 0755 "$HFM_INCOMING/hf-mirror-anycast.sh" "$ROOT/bin/hf-mirror-anycast.sh"
    install -m 0755 "$HFM_INCOMING/hf-mirror-step.sh" "$ROOT/bin/hf-mirror-step.sh"
}

# Points link $1 (current, previous) at $2 atomically; an empty $2 removes it.
set_link() {
    if [ -z "$2" ]; then
        rm -f "$ROOT/$1"
        return 0
    fi
    ln -sfn "$2" "$ROOT/.$1.new"
    mv -T "$ROOT/.$1.new" "$ROOT/$1"
}

# Starts (or restarts) the node on the installed units: when the socket unit changed, the socket
# is reopened, which needs the service stopped first (connections are refused for that moment).
restart_node() {
    socket_changed=$1
    systemctl daemon-reload
    systemctl enable --quiet "$SOCKET" "$SERVICE"
    systemctl reset-failed "$SERVICE" "$SOCKET" 2>/dev/null || true
    if [ "$socket_changed" = yes ]; then
        systemctl stop "$SERVICE" || true
        systemctl restart "$SOCKET" || return 1
        systemctl start "$SERVICE" || return 1
    else
        systemctl start "$SOCKET" || return 1
        systemctl restart "$SERVICE" || return 1
    fi
}

# BIRD and the announcement helper follow the installed configuration: started (or reloaded) when
# anycast is on, stopped and disabled when it is off. Withdrawing is the helper's job (/readyz).
apply_anycast() {
    if [ -n "${HFM_ANYCAST:-}" ]; then
        ip -4 address show dev lo | grep -q " $HFM_ANYCAST/32 " || ip address add "$HFM_ANYCAST/32" dev lo
        systemctl enable --quiet "$BIRD_UNIT" "$ANYCAST_UNIT"
        if systemctl is-active --quiet "$BIRD_UNIT"; then
            systemctl reload "$BIRD_UNIT" || return 1
        else
            systemctl start "$BIRD_UNIT" || return 1
        fi
        systemctl restart "$ANYCAST_UNIT" || return 1
    elif systemctl cat "$BIRD_UNIT" >/dev/null 2>&1 || systemctl is-active --quiet "$BIRD_UNIT"; then
        systemctl disable --now --quiet "$ANYCAST_UNIT" "$BIRD_UNIT" 2>/dev/null || true
    fi
    return 0
}

# With anycast: waits (bounded) until BIRD's BGP session is established and the address announced.
wait_announced() {
    [ -n "${HFM_ANYCAST:-}" ] || return 0
    checks=0
    while [ "$checks" -lt "$HFM_PEERS_TIMEOUT" ]; do
        protocols=$(birdc -s "$BIRD_CTL" show protocols 2>/dev/null || true)
        if printf '%s\n' "$protocols" | awk '$1 == "anycast" && $4 == "up" { a = 1 } $1 == "upstream" && /Established/ { b = 1 } END { exit !(a && b) }'; then
            log "anycast: $HFM_ANYCAST announced (BGP session established)"
            return 0
        fi
        checks=$((checks + 1))
        sleep 1
    done
    log "anycast: $HFM_ANYCAST not announced after $HFM_PEERS_TIMEOUT checks"
    birdc -s "$BIRD_CTL" show protocols 2>/dev/null | sed 's/^/    /'
    return 1
}

# Keeps the releases `current` and `previous` name, and removes the others.
prune_releases() {
    keep_current=$(readlink "$ROOT/current" 2>/dev/null || true)
    keep_previous=$(readlink "$ROOT/previous" 2>/dev/null || true)
    for release in "$ROOT"/releases/*; do
        [ -d "$release" ] || continue
        relative=releases/${release##*/}
        if [ "$relative" != "$keep_current" ] && [ "$relative" != "$keep_previous" ]; then
            rm -rf "$release"
        fi
    done
}

deploy() {
    [ "$(id -u)" -eq 0 ] || fail "must run as root"
    need_tools systemctl journalctl curl jq sha256sum useradd getent install readlink awk sed cmp
    if [ -n "${HFM_ANYCAST:-}" ]; then need_tools bird birdc ip; fi
    : "${HFM_SHA256:?}" "${HFM_INCOMING:?}" "${HFM_DATA_DIR:?}" "${HFM_CERTS_DIR:?}" "${HFM_LOCAL_URL:?}"
    : "${HFM_OPERATOR_URL:?}" "${HFM_SLOT:?}" "${HFM_READY_TIMEOUT:=180}" "${HFM_PEERS_TIMEOUT:=180}"

    # The upload (with a copy of the node's key) goes when the step ends, whatever the outcome.
    trap 'rm -rf "$HFM_INCOMING"' EXIT

    # 1. verify
    actual=$(sha256sum "$HFM_INCOMING/hf-mirror" | cut -d' ' -f1)
    [ "$actual" = "$HFM_SHA256" ] || fail "the uploaded binary's sha256 is $actual, not $HFM_SHA256"
    for file in topology.toml ca.pem node.pem node.key gossip.key operator-token "$SERVICE" "$SOCKET" hf-mirror-step.sh hf-mirror-anycast.sh; do
        [ -s "$HFM_INCOMING/$file" ] || fail "the upload lacks $file"
    done

    # 2. install
    release=$ROOT/releases/$HFM_SHA256
    install -d -m 0755 "$ROOT" "$ROOT/releases"
    if [ ! -f "$release/hf-mirror" ] || [ "$(sha256sum "$release/hf-mirror" | cut -d' ' -f1)" != "$HFM_SHA256" ]; then
        staging=$ROOT/releases/.staging-$HFM_SHA256
        rm -rf "$staging" "$release"
        install -d -m 0755 "$staging"
        install -m 0755 "$HFM_INCOMING/hf-mirror" "$staging/hf-mirror"
        mv -T "$staging" "$release"
        log "installed releases/$HFM_SHA256"
    fi
    if ! getent passwd hf-mirror >/dev/null; then
        useradd --system --user-group --home-dir "$HFM_DATA_DIR" --no-create-home --shell /usr/sbin/nologin hf-mirror
        log "created the hf-mirror system user"
    fi
    if [ ! -d "$HFM_DATA_DIR" ]; then
        install -d -m 0750 -o hf-mirror -g hf-mirror "$HFM_DATA_DIR"
        log "created the data directory $HFM_DATA_DIR (it was not there)"
    fi
    [ "$(stat -c %U "$HFM_DATA_DIR")" = hf-mirror ] || chown hf-mirror:hf-mirror "$HFM_DATA_DIR"

    old_current=$(readlink "$ROOT/current" 2>/dev/null || true)
    old_previous=$(readlink "$ROOT/previous" 2>/dev/null || true)
    first_install=yes
    [ -n "$old_current" ] && first_install=no

    # 3. gate
    membership_change
    [ -n "$ADDED" ] && log "topology: adding$ADDED (not deployed yet: not waited for)"
    [ -n "$REMOVED" ] && log "topology: removing$REMOVED (leaving: not waited for)"
    if systemctl is-active --quiet "$SERVICE" && [ -x "$ROOT/current/hf-mirror" ]; then
        log "checking that every other node ($(echo $REQUIRED)) is live before stopping this one"
        if [ -n "$REMOVED" ]; then
            refresh_status "$ROOT/current/hf-mirror"
            remember_leaving
            leading=$(status_query '.node.raft.leader_name // empty')
            still=""
            for name in $REMOVED; do
                if [ "$(state_of "$name")" = live ] || [ "$name" = "$leading" ]; then still="$still $name"; fi
            done
            [ -n "$still" ] && drain_leaving "$still"
        fi
        wait_others_live "$ROOT/current/hf-mirror" ||
            fail "refusing to stop $NODE: not every other node is live (a rollout never takes a second node down)"
    fi

    # 4. switch
    socket_changed=yes
    if [ -f "$UNIT_DIR/$SOCKET" ] && cmp -s "$UNIT_DIR/$SOCKET" "$HFM_INCOMING/$SOCKET" && systemctl is-active --quiet "$SOCKET"; then
        socket_changed=no
    fi
    backup_config
    install_config
    # This host now belongs to this slot's resource (see decommission).
    printf '%s\n' "$HFM_SLOT" >"$ROOT/slot"
    new_current=releases/$HFM_SHA256
    if [ "$old_current" != "$new_current" ]; then
        set_link previous "$old_current"
        set_link current "$new_current"
    fi
    log "switched: current -> $new_current, previous -> $(readlink "$ROOT/previous" 2>/dev/null || echo none)"

    # 5. restart (ExecStop drains the running node first)
    log "restarting: drain, stop, start on $new_current"
    if restart_node "$socket_changed" && apply_anycast && verify_started "$first_install" && wait_announced; then
        prune_releases
        rm -rf "$BACKUP"
        log "deployed $HFM_SHA256"
        return 0
    fi

    # 7. roll back
    log "rolling back to ${old_current:-nothing (first install)}"
    systemctl stop "$SERVICE" || true
    restore_config
    if [ -z "$old_current" ]; then
        set_link current ""
        systemctl daemon-reload
        systemctl reset-failed "$SERVICE" "$SOCKET" 2>/dev/null || true
        fail "release $HFM_SHA256 did not start on $NODE (first install: nothing to roll back to; the node stays stopped)"
    fi
    set_link current "$old_current"
    set_link previous "$old_previous"
    # Reopen the sockets only when their unit changed or systemd closed them (a start limit hit).
    reopen=$socket_changed
    systemctl is-active --quiet "$SOCKET" || reopen=yes
    if restart_node "$reopen" && wait_ready; then
        if [ -f "$CONF_DIR/bird.conf" ]; then
            systemctl try-reload-or-restart "$BIRD_UNIT" 2>/dev/null || true
            systemctl try-restart "$ANYCAST_UNIT" 2>/dev/null || true
        fi
        log "rolled back: running $(running_release)"
    else
        log "the rollback did not come up either: the node needs an operator"
    fi
    rm -rf "$BACKUP"
    fail "release $HFM_SHA256 did not become ready on $NODE; rolled back to $old_current; stopping the rollout here"
}

decommission() {
    [ "$(id -u)" -eq 0 ] || fail "must run as root"
    # A node whose place in the topology changed (a node before it was removed) is deployed by the
    # resource of its new slot first; the destroy of its old slot's resource must leave it running.
    if [ -n "${HFM_SLOT:-}" ] && [ -s "$ROOT/slot" ] && [ "$(cat "$ROOT/slot")" != "$HFM_SLOT" ]; then
        log "not decommissioning: the node now runs from slot $(cat "$ROOT/slot"), not $HFM_SLOT (its place in the topology changed)"
        return 0
    fi
    log "decommissioning: drain, stop, remove units, releases and keys; the data directory stays"
    # Stopping the service runs ExecStop (the drain); the socket goes after it.
    systemctl stop "$SERVICE" 2>/dev/null || true
    systemctl stop "$SOCKET" 2>/dev/null || true
    systemctl disable --quiet "$SERVICE" "$SOCKET" 2>/dev/null || true
    systemctl disable --now --quiet "$ANYCAST_UNIT" "$BIRD_UNIT" 2>/dev/null || true
    if [ -n "${HFM_ANYCAST:-}" ]; then ip address del "$HFM_ANYCAST/32" dev lo 2>/dev/null || true; fi
    rm -f "$UNIT_DIR/$SERVICE" "$UNIT_DIR/$SOCKET" "$UNIT_DIR/$BIRD_UNIT" "$UNIT_DIR/$ANYCAST_UNIT" "$CONF_DIR/bird.conf"
    systemctl daemon-reload 2>/dev/null || true
    systemctl reset-failed "$SERVICE" "$SOCKET" 2>/dev/null || true
    if [ -n "${HFM_CERTS_DIR:-}" ]; then
        rm -f "$HFM_CERTS_DIR/ca.pem" "$HFM_CERTS_DIR/$NODE.pem" "$HFM_CERTS_DIR/$NODE.key" "$HFM_CERTS_DIR/gossip.key"
        rmdir "$HFM_CERTS_DIR" 2>/dev/null || true
    fi
    rm -rf "$CONF_DIR/tls" "$CONF_DIR/topology.toml" "$TOKEN_FILE"
    rmdir "$CONF_DIR" 2>/dev/null || true
    rm -rf "$ROOT"
    log "decommissioned"
}

case "$ACTION" in
    deploy) deploy ;;
    decommission) decommission ;;
    *) echo "usage: $0 deploy|decommission" >&2; exit 2 ;;
esac
