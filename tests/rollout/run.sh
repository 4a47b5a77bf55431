#!/usr/bin/env bash
# The rollout test: deploy/terraform against four (then five) real systemd hosts.
#
#   tests/rollout/run.sh PATH/TO/hf-mirror        (as root; a release build)
#
# Each node of topology.toml gets a host: a `systemd-nspawn --boot` container over its own overlay
# (a tmpfs upper layer over the machine's / as the shared lower layer), in a network namespace this
# script creates, joined by veth to a bridge in a router namespace it also creates. The router
# namespace runs the fake Hub (tests/fakehub/fake_hub.py, started through lib/fakehub.py, which adds
# the LFS shards of item 7), Terraform and the clients; it has no route anywhere else, so
# `terraform init` provably needs no network. The checks log into the hosts over
# SSH; Terraform's outputs are never trusted.
#
#   1 init offline, only the built-in provider     5 a binary that cannot start: one node rolled back
#   2 first apply: 4 nodes up, real downloads       6 one node's certificate changed: that node only
#   3 a second plan: no changes                    6b the gate: no node stops while another is down
#   4 rolling upgrade under a client loop           7 a fifth node added (a voter, its share of the
#     (0 failed requests, every byte hashed)          blobs) and removed (4 voters, nothing lost, no
#                                                     upstream request for blobs the cluster held)
#                                                   8 destroy: stopped, data kept, no keys left
#
# The fifth host (EXTRA_NODE) boots with the others but gets hf-mirror only in item 7. The nodes'
# operator ports (status, drain; metrics) answer on 9090 with the cluster's operator token, made by
# this script beside the certificates and given to Terraform as operator_token_file.
#
# Anycast (HFM_ROLLOUT_ANYCAST=1, the default): every host also runs BIRD (Debian's bird2) and
# announces one service address over BGP to a BIRD in the router namespace while its /readyz is 200;
# the router installs them as equal-cost routes and pins each connection to the host it started on
# (conntrack mark + policy routing), and a client namespace behind the router downloads through the
# anycast address during the rolling upgrade.
#
# Everything it makes (namespaces, mounts, containers, processes) is removed on exit, also when it
# fails; it stops only processes it started, by PID. Logs of the last run: target/rollout/last-run/.
# Environment: HF_MIRROR_BUILD_DIR (default target), HFM_ROLLOUT_KEEP=1 keeps the work directory's
# files (never the namespaces or processes) for debugging.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/rollout
BUILD_DIR=${HF_MIRROR_BUILD_DIR:-target}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$ROOT/$BUILD_DIR ;; esac

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
    echo "usage: tests/rollout/run.sh PATH/TO/hf-mirror (an executable release build)" >&2
    exit 2
fi
BINARY=$(realpath "$1")

# ------------------------------------------------------------------------------------------------
# Reporting

PASSED=0
FAILED=0
SKIPPED=0
FAILURES=()
STAGE_TIMES=()
STARTED_AT=$(date +%s.%N)

say() { printf '\n== %s ==\n' "$*"; }
note() { printf '   %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); printf '   ok    %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); printf '   FAIL  %s\n' "$*"; }
skip() { SKIPPED=$((SKIPPED + 1)); printf '   SKIP  %s\n' "$*"; }
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
    local description=$1
    shift
    if "$@"; then pass "$description"; else fail "$description"; fi
}
# expect DESCRIPTION ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', expected '$3')"; fi
}
# Stops the run (setup failures); the EXIT trap cleans up.
fatal() {
    printf '\nFATAL: %s\n' "$*" >&2
    FAILED=$((FAILED + 1))
    FAILURES+=("fatal: $*")
    exit 1
}

STAGE_NAME=""
STAGE_START=""
stage() {
    stage_end
    STAGE_NAME=$1
    STAGE_START=$(date +%s.%N)
    say "$1"
}
stage_end() {
    if [ -n "$STAGE_NAME" ]; then
        STAGE_TIMES+=("$(awk -v a="$STAGE_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f s", b - a }')  $STAGE_NAME")
    fi
    STAGE_NAME=""
}

# ------------------------------------------------------------------------------------------------
# Preconditions: root, systemd-nspawn, sshd, the tools the checks use

[ "$(id -u)" -eq 0 ] || { echo "tests/rollout: needs root (network namespaces, mounts, systemd-nspawn)" >&2; exit 1; }

stage "packages"
needed=()
command -v systemd-nspawn >/dev/null || needed+=(systemd-container)
[ -x /usr/sbin/sshd ] || needed+=(openssh-server)
command -v ssh >/dev/null || needed+=(openssh-client)
command -v ip >/dev/null || needed+=(iproute2)
command -v curl >/dev/null || needed+=(curl)
command -v jq >/dev/null || needed+=(jq)
command -v dig >/dev/null || needed+=(bind9-dnsutils)
command -v rsync >/dev/null || needed+=(rsync)
command -v openssl >/dev/null || needed+=(openssl)
ANYCAST=${HFM_ROLLOUT_ANYCAST:-1}
if [ "$ANYCAST" = 1 ]; then
    command -v bird >/dev/null || needed+=(bird2)
    command -v nft >/dev/null || needed+=(nftables)
fi
if [ ${#needed[@]} -gt 0 ]; then
    note "installing ${needed[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"; } >/dev/null ||
        fatal "apt-get install ${needed[*]} failed"
fi
command -v terraform >/dev/null || fatal "terraform is not installed (the rollout is Terraform; CI must provide it)"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || fatal "this kernel has no overlay file system: the hosts cannot be made here (systemd-nspawn over an overlay is required; CI must run the full form)"
note "$(systemd-nspawn --version | head -1), $(TF_CLI_CONFIG_FILE=/dev/null terraform version | head -1)"

stage "client venv"
VENV_NAMES=hub1 HF_MIRROR_BUILD_DIR=$BUILD_DIR bash "$ROOT/tests/clients/setup-venvs.sh" | sed 's/^/   /' ||
    fatal "could not make the huggingface_hub venv"
PY=$BUILD_DIR/venvs/hub1/bin/python
[ -x "$PY" ] || fatal "no python in $BUILD_DIR/venvs/hub1"

# ------------------------------------------------------------------------------------------------
# Names. Every name carries this run's id, so two runs (or another suite) never collide.

RUN_ID=$(printf '%04x' $(($$ % 65536)))
PREFIX=hfro$RUN_ID
NS_R=${PREFIX}r                 # router: bridge, fake Hub, Terraform, clients
SUBNET=10.77.0
ROUTER_IP=$SUBNET.1
CDN_IP=$SUBNET.2
HUB_URL=http://$ROUTER_IP:8000
NS_C=${PREFIX}c                 # client namespace behind the router (anycast)
CLIENT_NET=10.78.0
ANYCAST_IP=10.77.100.1
ROUTER_AS=65000
mapfile -t NODES < <("$PY" -c 'import sys, tomllib; print("\n".join(n["name"] for n in tomllib.load(open(sys.argv[1], "rb"))["nodes"]))' "$ROOT/topology.toml")
[ ${#NODES[@]} -ge 2 ] || fatal "topology.toml lists fewer than two nodes"
declare -A HOST_IP NS_OF MACHINE NSPAWN_PID INIT_PID
# The fifth host of item 7: a name no node of the topology has.
EXTRA_NODE=sto2
for candidate in sto2 node5 extra5; do
    case " ${NODES[*]} " in *" $candidate "*) ;; *) EXTRA_NODE=$candidate; break ;; esac
done
HOSTS=("${NODES[@]}" "$EXTRA_NODE")
OPERATOR_PORT=9090
for index in "${!HOSTS[@]}"; do
    node=${HOSTS[$index]}
    HOST_IP[$node]=$SUBNET.$((11 + index))
    NS_OF[$node]=$PREFIX-$node
    MACHINE[$node]=$PREFIX-$node
done

WORK=$(mktemp -d /tmp/hfro.XXXXXX)
WORK_MOUNTED=no
CREATED_NETNS=()
MERGED_MOUNTS=()
FAKEHUB_PID=""
CLIENT_PID=""
ANYCAST_CLIENT_PID=""
BIRD_PID=""
MONITOR_PID=""
LOGS=$WORK/logs
RESULT_DIR=$BUILD_DIR/rollout/last-run

# ------------------------------------------------------------------------------------------------
# Cleanup: everything this run made, in reverse, by PID and by name it chose; then a check.

stop_pid() { # PID SECONDS: SIGTERM, a bounded wait, then SIGKILL
    local pid=$1 checks=$(($2 * 5))
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    while [ "$checks" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
        sleep 0.2
        checks=$((checks - 1))
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local status=$?
    set +eu
    trap - EXIT INT TERM
    stage_end
    say "cleanup"
    stop_pid "$CLIENT_PID" 5
    stop_pid "$ANYCAST_CLIENT_PID" 5
    stop_pid "$MONITOR_PID" 5
    # The hosts' journals, for whoever looks next (bounded: 20 s a host).
    if [ -d "$LOGS" ]; then
        for node in "${HOSTS[@]}"; do
            pid=${NSPAWN_PID[$node]:-}
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
            timeout 20 ip netns exec "$NS_R" ssh "${SSH_OPTIONS[@]}" "root@${HOST_IP[$node]}" \
                'journalctl --no-pager -o short-iso -n 20000' >"$LOGS/host-journal-$node.log" 2>&1
            timeout 20 ip netns exec "$NS_R" ssh "${SSH_OPTIONS[@]}" "root@${HOST_IP[$node]}" \
                'cat /var/log/hf-mirror-rollout.log' >"$LOGS/rollout-final-$node.log" 2>&1
        done
    fi
    # Containers: SIGTERM to systemd-nspawn asks the host's systemd to power off (all at once).
    for node in "${HOSTS[@]}"; do
        pid=${NSPAWN_PID[$node]:-}
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
    done
    for node in "${HOSTS[@]}"; do
        pid=${NSPAWN_PID[$node]:-}
        [ -n "$pid" ] || continue
        checks=150
        while [ "$checks" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
            sleep 0.2
            checks=$((checks - 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            note "$node did not power off in time: killing its init (PID ${INIT_PID[$node]:-?}) and systemd-nspawn"
            [ -n "${INIT_PID[$node]:-}" ] && kill -KILL "${INIT_PID[$node]}" 2>/dev/null
            stop_pid "$pid" 5
        fi
    done
    stop_pid "$FAKEHUB_PID" 5
    stop_pid "$BIRD_PID" 5
    # Logs of this run, for whoever looks next.
    if [ -d "$LOGS" ]; then
        rm -rf "$RESULT_DIR"
        mkdir -p "$RESULT_DIR"
        cp -a "$LOGS/." "$RESULT_DIR/" 2>/dev/null
    fi
    for mount in "${MERGED_MOUNTS[@]}"; do
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null
    done
    for node in "${HOSTS[@]}"; do
        rm -rf "/run/systemd/nspawn/propagate/${MACHINE[$node]}" 2>/dev/null
    done
    if [ "$WORK_MOUNTED" = yes ]; then
        if [ "${HFM_ROLLOUT_KEEP:-0}" = 1 ]; then
            mkdir -p "$WORK.kept" && cp -a "$WORK/logs" "$WORK/tf" "$WORK.kept/" 2>/dev/null
            note "kept $WORK.kept"
        fi
        umount "$WORK" 2>/dev/null || umount -l "$WORK" 2>/dev/null
    fi
    rmdir "$WORK" 2>/dev/null
    for ns in "${CREATED_NETNS[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    # Nothing of ours may be left.
    left=()
    for pid in "$CLIENT_PID" "$ANYCAST_CLIENT_PID" "$FAKEHUB_PID" "$BIRD_PID" "$MONITOR_PID" "${NSPAWN_PID[@]}" "${INIT_PID[@]}"; do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && left+=("process $pid")
    done
    for ns in "${CREATED_NETNS[@]}"; do
        ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" && left+=("namespace $ns")
    done
    grep -q " $WORK" /proc/mounts && left+=("mounts under $WORK")
    if [ ${#left[@]} -eq 0 ]; then
        pass "cleanup: no namespace, mount, container or process of this run is left"
    else
        fail "cleanup left: ${left[*]}"
    fi
    report
    if [ "$FAILED" -gt 0 ] && [ "$status" -eq 0 ]; then status=1; fi
    exit "$status"
}

report() {
    say "observations (durations of this run; not asserted)"
    for line in "${STAGE_TIMES[@]}"; do note "$line"; done
    note "$(awk -v a="$STARTED_AT" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f s", b - a }')  in all"
    if [ ${#FAILURES[@]} -gt 0 ]; then
        say "failures"
        for line in "${FAILURES[@]}"; do note "$line"; done
    fi
    note "logs: $RESULT_DIR"
    echo
    echo "rollout: $PASSED passed, $FAILED failed, $SKIPPED skipped"
}

trap cleanup EXIT
trap 'FAILED=$((FAILED + 1)); FAILURES+=("interrupted (SIGINT)"); exit 130' INT
trap 'FAILED=$((FAILED + 1)); FAILURES+=("interrupted (SIGTERM)"); exit 143' TERM

mount -t tmpfs -o size=10g,mode=0700 "$PREFIX-work" "$WORK" || fatal "cannot mount a tmpfs on $WORK"
WORK_MOUNTED=yes
mkdir -p "$LOGS" "$WORK/hosts" "$WORK/data" "$WORK/keys" "$WORK/bin" "$WORK/plans" "$WORK/tfhome" "$WORK/hfhome" "$WORK/scratch"

# ------------------------------------------------------------------------------------------------
# Helpers: in the router namespace, on a host, Terraform

in_router() { ip netns exec "$NS_R" "$@"; }

SSH_OPTIONS=(-i "$WORK/keys/id" -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$WORK/keys/known_hosts"
    -o ConnectTimeout=5 -o LogLevel=ERROR)
# hx NODE COMMAND: runs COMMAND on the host over SSH (as an operator would).
hx() {
    local node=$1
    shift
    timeout 120 ip netns exec "$NS_R" ssh "${SSH_OPTIONS[@]}" "root@${HOST_IP[$node]}" "$@"
}

TF_DIR=$WORK/tf
TF_ENV=(TF_CLI_CONFIG_FILE="$WORK/terraform.rc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0 HOME="$WORK/tfhome")
# tf ARGS: Terraform in the router namespace (bounded).
tf() {
    timeout 900 ip netns exec "$NS_R" env "${TF_ENV[@]}" terraform -chdir="$TF_DIR" "$@"
}

# The state of the node on a host, one line: service readyz current-link user pid exe
host_state() {
    hx "$1" 'pid=$(systemctl show -p MainPID --value hf-mirror.service 2>/dev/null); [ -n "$pid" ] || pid=0
        user=$( [ "$pid" != 0 ] && ps -o user= -p "$pid" 2>/dev/null || echo -)
        exe=$( [ "$pid" != 0 ] && readlink /proc/$pid/exe 2>/dev/null || echo -)
        printf "%s %s %s %s %s %s\n" "$(systemctl is-active hf-mirror.service 2>/dev/null)" \
            "$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 http://127.0.0.1:80/readyz 2>/dev/null)" \
            "$(readlink /opt/hf-mirror/current 2>/dev/null || echo -)" "${user:--}" "$pid" "${exe:--}"'
}

# Counts the node's own "node drained" log lines since its unit was installed.
drained_count() {
    hx "$1" 'journalctl -u hf-mirror.service -o cat --no-pager 2>/dev/null | grep -c "node drained"; true' | tail -1
}

main_pid() { hx "$1" 'systemctl show -p MainPID --value hf-mirror.service'; }

# The cluster as node $1 sees it: `hf-mirror status --json` run on the host, on its operator port
# with the cluster's operator token ({"node": its /_hfm/status, "members": [{name, state, status}]}).
status_on() {
    hx "$1" "/opt/hf-mirror/current/hf-mirror status --json --url http://127.0.0.1:$OPERATOR_PORT --token-file /etc/hf-mirror/operator-token"
}
# The same as a table, for the log.
status_table_on() {
    hx "$1" "/opt/hf-mirror/current/hf-mirror status --url http://127.0.0.1:$OPERATOR_PORT --token-file /etc/hf-mirror/operator-token"
}
# The state (live, draining, starting, dead) of node $2 in a status document $1.
member_state() { printf '%s\n' "$1" | jq -r --arg n "$2" '.node.members[]? | select(.name == $n) | .state' 2>/dev/null; }
# One line summarising a status document: live members, leader, voters, learners.
status_summary() {
    printf '%s\n' "$1" | jq -r '"members: \([.node.members[]? | "\(.name)=\(.state)"] | join(" ")); leader: \(.node.raft.leader_name // "none"); voters: \(.node.raft.voters // [] | join(",")); learners: \(.node.raft.learners // [] | join(","))"' 2>/dev/null
}

# Waits (bounded) until node $1 sees exactly the nodes $2 ("a b c") as members, all live, a catalog
# leader, the same nodes as voters and no learner; prints the status document. $2 defaults to NODES.
wait_cluster_settled() {
    local document="" checks=90 want
    want=$(printf '%s\n' ${2:-${NODES[*]}} | sort | tr '\n' ' ')
    while [ "$checks" -gt 0 ]; do
        document=$(status_on "$1" 2>/dev/null)
        if [ -n "$document" ] && [ "$(printf '%s\n' "$document" | jq -r --arg want "$want" '
            ([.node.members[]?.name] | sort | join(" ") + " ") == $want
            and ([.node.members[]? | select(.state == "live")] | length) == ([.node.members[]?] | length)
            and .node.raft.leader_name != null
            and ((.node.raft.voters // []) | sort | join(" ") + " ") == $want
            and ((.node.raft.learners // []) | length) == 0' 2>/dev/null)" = true ]; then
            printf '%s\n' "$document"
            return 0
        fi
        checks=$((checks - 1))
        sleep 1
    done
    printf '%s\n' "$document"
    return 1
}

# plan_summary NAME ARGS: saves a plan; sets PLAN_EXIT (0 no changes, 2 changes) and SUMMARY (per-node
# actions as JSON). Returns non-zero when the plan itself failed.
PLAN_EXIT=""
SUMMARY="{}"
plan_summary() {
    local name=$1
    shift
    tf plan -no-color -input=false -detailed-exitcode -out="$WORK/plans/$name.plan" "$@" >"$LOGS/plan-$name.log" 2>&1
    PLAN_EXIT=$?
    SUMMARY="{}"
    if [ "$PLAN_EXIT" -eq 1 ]; then
        tail -20 "$LOGS/plan-$name.log" | sed 's/^/   | /'
        return 1
    fi
    tf show -json "$WORK/plans/$name.plan" >"$WORK/plans/$name.json" 2>>"$LOGS/plan-$name.log" || return 1
    SUMMARY=$("$PY" "$HERE/lib/tfcheck.py" plan "$WORK/plans/$name.json") || return 1
    note "plan $name: $SUMMARY"
}

# apply_plan NAME: applies a saved plan; the output goes to logs/apply-NAME.log. Returns its status.
apply_plan() {
    tf apply -no-color -input=false "$WORK/plans/$1.plan" >"$LOGS/apply-$1.log" 2>&1
}

json_field() { "$PY" -c 'import json, sys; value = json.loads(sys.argv[1]); print(eval(sys.argv[2], {"v": value}))' "$1" "$2"; }

# rotate_cert NODE: a new key and certificate for NODE under the same CA (`hf-mirror cluster certs
# --reissue NODE`, which keeps the CA and every other node's files).
rotate_cert() {
    local node=$1
    "$BINARY" cluster certs --config "$WORK/topology.toml" --out "$WORK/certs" --reissue "$node" >>"$LOGS/rotate.log" 2>&1 ||
        fatal "cannot issue a new certificate for $node: $(tail -3 "$LOGS/rotate.log")"
    tail -1 "$LOGS/rotate.log" | sed 's/^/   | /'
}
# The sha256 of every file in the local certificates directory, "name sha" sorted (for "only X changed").
certs_hashes() { (cd "$WORK/certs" && sha256sum -- * | awk '{ print $2, $1 }' | LC_ALL=C sort); }

now_ns() { date +%s%N; }
# The next hops of the router's route to the anycast address, sorted, on one line.
anycast_hops() { ip -n "$NS_R" route show "$ANYCAST_IP/32" 2>/dev/null | grep -o 'via [0-9.]*' | cut -d' ' -f2 | sort | tr '\n' ' '; }
# Waits (bounded) until the router routes the anycast address to every node (or the nodes $1).
wait_all_announced() {
    local all
    all=$(for node in ${1:-${NODES[*]}}; do echo "${HOST_IP[$node]}"; done | sort | tr '\n' ' ')
    for _ in $(seq 1 60); do
        [ "$(anycast_hops)" = "$all" ] && return 0
        sleep 0.5
    done
    return 1
}
all_positive() { for value in "$@"; do [ "${value:-0}" -gt 0 ] 2>/dev/null || return 1; done; }
held_by_both() { [[ $1 == *'"systemd"'* && $1 == *'"hf-mirror"'* ]]; }

# ------------------------------------------------------------------------------------------------
# The network: a router namespace with a bridge, one namespace per host

stage "network and fake Hub"
ip netns add "$NS_R" || fatal "cannot create network namespace $NS_R"
CREATED_NETNS+=("$NS_R")
ip -n "$NS_R" link set lo up
ip -n "$NS_R" link add br0 type bridge
ip -n "$NS_R" link set br0 up
ip -n "$NS_R" addr add "$ROUTER_IP/24" dev br0
ip -n "$NS_R" addr add "$CDN_IP/24" dev br0
for index in "${!HOSTS[@]}"; do
    node=${HOSTS[$index]}
    ns=${NS_OF[$node]}
    ip netns add "$ns" || fatal "cannot create network namespace $ns"
    CREATED_NETNS+=("$ns")
    ip -n "$NS_R" link add "v$index" type veth peer name eth0 netns "$ns" || fatal "cannot create the veth of $node"
    ip -n "$NS_R" link set "v$index" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${HOST_IP[$node]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$ROUTER_IP"
done
ip -n "$NS_R" route | grep -q '^default' && fatal "the router namespace must have no default route"

if [ "$ANYCAST" = 1 ]; then
    # A client network behind the router; the router forwards, spreads new connections over the
    # equal-cost routes BIRD installs (hashing ports too), and keeps each connection on the host it
    # began on: the first packet's next hop becomes the connection's mark, later packets are routed
    # by the mark to that host, even once its route is withdrawn (so a drained node finishes what
    # it serves while new connections go elsewhere).
    ip netns add "$NS_C" || fatal "cannot create network namespace $NS_C"
    CREATED_NETNS+=("$NS_C")
    ip -n "$NS_R" link add c0 type veth peer name eth0 netns "$NS_C" || fatal "cannot create the client veth"
    ip -n "$NS_R" addr add "$CLIENT_NET.1/24" dev c0
    ip -n "$NS_R" link set c0 up
    ip -n "$NS_C" link set lo up
    ip -n "$NS_C" addr add "$CLIENT_NET.2/24" dev eth0
    ip -n "$NS_C" link set eth0 up
    ip -n "$NS_C" route add default via "$CLIENT_NET.1"
    ip netns exec "$NS_R" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 ||
        fatal "cannot enable forwarding in the router namespace"
    marks=""
    for index in "${!HOSTS[@]}"; do
        node=${HOSTS[$index]}
        mark=$((index + 1))
        ip -n "$NS_R" rule add fwmark "$mark" lookup $((100 + mark)) priority $((100 + mark))
        ip -n "$NS_R" route add "$ANYCAST_IP/32" via "${HOST_IP[$node]}" dev br0 table $((100 + mark))
        marks="$marks${marks:+, }${HOST_IP[$node]} : $mark"
    done
    printf '%s\n' "table ip hfro_anycast {" \
        "    chain prerouting {" \
        "        type filter hook prerouting priority mangle; policy accept;" \
        "        ip daddr $ANYCAST_IP ct state established,related meta mark set ct mark" \
        "    }" \
        "    chain postrouting {" \
        "        type filter hook postrouting priority mangle; policy accept;" \
        "        ip daddr $ANYCAST_IP ct state new ct mark set rt ip nexthop map { $marks }" \
        "    }" \
        "}" >"$WORK/anycast.nft"
    ip netns exec "$NS_R" nft -f "$WORK/anycast.nft" || fatal "cannot load the router's connection pinning (nft)"
    {
        echo "log stderr all;"
        echo "router id $ROUTER_IP;"
        echo "protocol device { }"
        echo "protocol kernel { ipv4 { import none; export all; }; merge paths on; }"
        echo "template bgp hosts {"
        echo "  local as $ROUTER_AS; hold time 9; keepalive time 3;"
        echo "  connect delay time 1; connect retry time 5; error wait time 1, 10;"
        echo "  ipv4 { import all; export none; };"
        echo "}"
        for index in "${!HOSTS[@]}"; do
            echo "protocol bgp ${HOSTS[$index]} from hosts { neighbor ${HOST_IP[${HOSTS[$index]}]} as $((65101 + index)); }"
        done
    } >"$WORK/bird-router.conf"
    ip netns exec "$NS_R" bird -f -c "$WORK/bird-router.conf" -s "$WORK/bird-router.ctl" >"$LOGS/bird-router.log" 2>&1 </dev/null &
    BIRD_PID=$!
    sleep 0.5
    kill -0 "$BIRD_PID" 2>/dev/null || fatal "the router's BIRD did not start: $(tail -3 "$LOGS/bird-router.log")"
    note "router: BIRD (AS $ROUTER_AS) for anycast $ANYCAST_IP; client namespace $CLIENT_NET.2"
fi

# The fake Hub with the rollout's own repo of LFS shards (lib/fakehub.py; item 7).
# Started with `ip netns exec` itself, not the in_router function: a function run in the background
# is a subshell, and $! would name the subshell, which the cleanup stops while the Hub runs on.
ip netns exec "$NS_R" "$PY" "$HERE/lib/fakehub.py" --shards 24 --shard-size 262144 --host "$ROUTER_IP" --port 8000 --cdn-host "$CDN_IP" --cdn-port 8001 \
    >"$LOGS/fakehub.log" 2>&1 </dev/null &
FAKEHUB_PID=$!
for _ in $(seq 1 50); do
    grep -q '^fakehub ' "$LOGS/fakehub.log" && break
    sleep 0.2
done
grep -q '^fakehub ' "$LOGS/fakehub.log" || fatal "the fake Hub did not start: $(tail -3 "$LOGS/fakehub.log")"
note "$(head -1 "$LOGS/fakehub.log")"

# ------------------------------------------------------------------------------------------------
# The hosts: overlay roots, masked services, per-host SSH keys, systemd-nspawn --boot

stage "hosts"
ssh-keygen -q -t ed25519 -N '' -C "rollout-test" -f "$WORK/keys/id" || fatal "ssh-keygen failed"
: >"$WORK/keys/known_hosts"

# The image's own services that a mirror host does not run (and that would take its ports or CPU).
MASKED=(postgresql.service postgresql@.service nginx.service apache2.service mysql.service mariadb.service
    redis-server.service memcached.service docker.service docker.socket containerd.service cron.service
    rsyslog.service exim4.service rsync.service x11-common.service hwclock.service cryptdisks.service
    cryptdisks-early.service e2scrub_reap.service systemd-timesyncd.service systemd-pstore.service
    systemd-resolved.service systemd-networkd.service systemd-networkd-wait-online.service
    networking.service ifupdown-pre.service systemd-logind.service polkit.service packagekit.service
    unattended-upgrades.service getty@.service serial-getty@.service console-getty.service
    container-getty@.service getty-static.service autovt@.service)
for unit in /etc/systemd/system/*.timer /etc/systemd/system/*/*.timer /lib/systemd/system/*.timer; do
    [ -e "$unit" ] && MASKED+=("${unit##*/}")
done
for unit in /etc/systemd/system/*.wants/*.service; do
    name=${unit##*/}
    case $name in ssh.service | sshd.service | dbus.service | systemd-journald*) ;; *) [ -e "$unit" ] && MASKED+=("$name") ;; esac
done

for node in "${HOSTS[@]}"; do
    dir=$WORK/hosts/$node
    mkdir -p "$dir/upper" "$dir/work" "$dir/root" "$WORK/data/$node"
    mount -t overlay "$PREFIX-$node" -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/root" ||
        fatal "cannot mount the overlay root of $node"
    MERGED_MOUNTS+=("$dir/root")
    root=$dir/root
    echo "$node" >"$root/etc/hostname"
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
    echo >>"$root/etc/machine-id"
    mkdir -p "$root/etc/systemd/system"
    for unit in "${MASKED[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$unit"; done
    ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
    # One SSH host key per host, and only one type offered: Terraform pins exactly that key.
    rm -f "$root"/etc/ssh/ssh_host_*
    ssh-keygen -q -t ed25519 -N '' -C "$node" -f "$root/etc/ssh/ssh_host_ed25519_key" || fatal "host key of $node"
    mkdir -p "$root/etc/ssh/sshd_config.d"
    printf '%s\n' 'HostKey /etc/ssh/ssh_host_ed25519_key' 'PermitRootLogin prohibit-password' \
        'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'UsePAM no' >"$root/etc/ssh/sshd_config.d/rollout-test.conf"
    mkdir -p "$root/root/.ssh"
    chmod 700 "$root/root/.ssh"
    cp "$WORK/keys/id.pub" "$root/root/.ssh/authorized_keys"
    chmod 600 "$root/root/.ssh/authorized_keys"
    echo "${HOST_IP[$node]} $(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" >>"$WORK/keys/known_hosts"
    chmod 755 "$WORK/data/$node"
    # CAP_NET_ADMIN: nspawn drops it for a network namespace it did not make; a host needs it (the
    # anycast address on lo). The namespace is the host's own, so it reaches nothing else.
    systemd-nspawn --boot --keep-unit --register=no --link-journal=no --resolv-conf=off --timezone=off \
        --capability=CAP_NET_ADMIN --console=pipe --directory="$root" --machine="${MACHINE[$node]}" \
        --network-namespace-path="/run/netns/${NS_OF[$node]}" \
        --bind="$WORK/data/$node:/var/lib/hf-mirror" \
        >"$LOGS/console-$node.log" 2>&1 </dev/null &
    NSPAWN_PID[$node]=$!
done
for node in "${HOSTS[@]}"; do
    up=no
    for _ in $(seq 1 60); do
        if ! kill -0 "${NSPAWN_PID[$node]}" 2>/dev/null; then break; fi
        [ -z "${INIT_PID[$node]:-}" ] && INIT_PID[$node]=$(pgrep -P "${NSPAWN_PID[$node]}" | head -1)
        if hx "$node" true 2>/dev/null; then up=yes; break; fi
        sleep 1
    done
    if [ "$up" != yes ]; then
        tail -20 "$LOGS/console-$node.log" | sed 's/^/   | /'
        fatal "host $node did not boot to SSH: systemd-nspawn --boot cannot run here (this test needs it; CI must run the full form)"
    fi
    note "$node: $(hx "$node" 'systemctl is-system-running 2>/dev/null; systemctl --version | head -1' | tr '\n' ' ') at ${HOST_IP[$node]}"
done

# ------------------------------------------------------------------------------------------------
# The operator's side: test topology, certificates, binaries, Terraform configuration

stage "topology, certificates, Terraform configuration"
addresses=()
for node in "${NODES[@]}"; do addresses+=("$node=${HOST_IP[$node]}"); done
"$PY" "$HERE/lib/topology.py" "$ROOT/topology.toml" "$WORK/topology.toml" --hub "$HUB_URL" \
    --client-prefix "10.64.0.0/10" "${addresses[@]}" >/dev/null || fatal "cannot derive the test topology"
# Item 7's topology: the same with the fifth host appended.
"$PY" "$HERE/lib/topology.py" "$ROOT/topology.toml" "$WORK/topology5.toml" --hub "$HUB_URL" \
    --client-prefix "10.64.0.0/10" --extra-node "$EXTRA_NODE=${HOST_IP[$EXTRA_NODE]}" "${addresses[@]}" >/dev/null ||
    fatal "cannot derive the test topology with a fifth node"
"$BINARY" cluster certs --config "$WORK/topology.toml" --out "$WORK/certs" >"$LOGS/certs.log" 2>&1 ||
    fatal "hf-mirror cluster certs failed: $(tail -3 "$LOGS/certs.log")"
for node in "${NODES[@]}"; do
    [ -s "$WORK/certs/$node.pem" ] && [ -s "$WORK/certs/$node.key" ] || fatal "no certificate for $node"
done
[ -s "$WORK/certs/gossip.key" ] || fatal "hf-mirror cluster certs made no gossip.key"
# The cluster's operator token: one for every node, next to the certificates (an operator's file).
(umask 077 && openssl rand -hex 32 >"$WORK/certs/operator-token") || fatal "cannot make the operator token"

# B1: the binary under test; B2: the same code with bytes appended (another sha256, still runs);
# B3: a release that cannot start.
B1=$BINARY
B2=$WORK/bin/hf-mirror-b2
B3=$WORK/bin/hf-mirror-bad
cp "$B1" "$B2" && printf '\nrollout test build %s\n' "$RUN_ID" >>"$B2" && chmod 755 "$B2"
printf '#!/bin/sh\necho "this release cannot start (rollout test)" >&2\nexit 1\n' >"$B3" && chmod 755 "$B3"
SHA1=$(sha256sum "$B1" | cut -d' ' -f1)
SHA2=$(sha256sum "$B2" | cut -d' ' -f1)
SHA3=$(sha256sum "$B3" | cut -d' ' -f1)
"$B2" --version >/dev/null || fatal "the appended copy of the binary does not run"

cp -r "$ROOT/deploy/terraform" "$TF_DIR"
rm -rf "$TF_DIR/.terraform" "$TF_DIR/terraform.tfstate"* "$TF_DIR/.terraform.lock.hcl"
mkdir -p "$WORK/no-provider-mirror"
cat >"$WORK/terraform.rc" <<EOF
# The rollout test's own Terraform CLI configuration: no checkpoint calls, and no provider may come
# from anywhere (the configuration needs only the built-in one).
disable_checkpoint = true
provider_installation {
  filesystem_mirror {
    path    = "$WORK/no-provider-mirror"
    include = ["*/*/*"]
  }
}
EOF
# tfvars_json TOPOLOGY NODE=ADDRESS...: the test's variables for these hosts (the JSON on stdout).
tfvars_json() {
    "$PY" - "$WORK" "$B1" "$ANYCAST" "$ANYCAST_IP" "$ROUTER_IP" "$ROUTER_AS" "$@" <<'PY'
import json, sys
work, binary, anycast, anycast_ip, router_ip, router_as, topology, pairs = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7], sys.argv[8:]
hosts = {}
for index, pair in enumerate(pairs):
    node, address = pair.split("=", 1)
    key = open(f"{work}/hosts/{node}/root/etc/ssh/ssh_host_ed25519_key.pub").read().strip()
    hosts[node] = {"host": address, "host_key": key, "http_listen": "0.0.0.0:80", "operator_listen": "0.0.0.0:9090",
                   "dns_listen": "0.0.0.0:53"}
    if anycast:
        hosts[node]["bgp"] = {"neighbor": router_ip, "neighbor_as": router_as, "local_as": 65101 + index}
extra = {"anycast": {"address": anycast_ip, "withdraw_delay": 1}} if anycast else {}
json.dump({
    **extra,
    "topology": topology,
    "binary": binary,
    "certs_dir": f"{work}/certs",
    "operator_token_file": f"{work}/certs/operator-token",
    "ssh_private_key_file": f"{work}/keys/id",
    "nodes": hosts,
    "ready_timeout": 120,
    "peers_timeout": 120,
}, sys.stdout, indent=2)
PY
}
tfvars_json "$WORK/topology.toml" "${addresses[@]}" >"$TF_DIR/terraform.tfvars.json" || fatal "cannot write terraform.tfvars.json"
# Item 7: the topology and hosts with the fifth node (given with -var-file, after the defaults).
tfvars_json "$WORK/topology5.toml" "${addresses[@]}" "$EXTRA_NODE=${HOST_IP[$EXTRA_NODE]}" >"$WORK/five-nodes.tfvars.json" ||
    fatal "cannot write the variables of five nodes"
note "releases: B1 ${SHA1:0:12}  B2 ${SHA2:0:12}  B3 (cannot start) ${SHA3:0:12}"

# ------------------------------------------------------------------------------------------------
stage "1. init offline; only the built-in provider"
tf init -no-color -input=false >"$LOGS/init.log" 2>&1
check "terraform init succeeds in a namespace with no route out" [ $? -eq 0 ]
tf providers -no-color >"$LOGS/providers.log" 2>&1
providers=$(grep -o 'provider\[[^]]*\]' "$LOGS/providers.log" | sort -u | tr '\n' ' ')
expect "terraform providers lists only the built-in provider" "$providers" "provider[terraform.io/builtin/terraform] "
check "nothing was downloaded (.terraform/providers absent)" test ! -e "$TF_DIR/.terraform/providers"
# The precondition: a host name that is not a node of the topology stops the plan.
bad_nodes=$("$PY" -c 'import json, sys; v = json.load(open(sys.argv[1])); v["nodes"]["nowhere1"] = dict(v["nodes"][sys.argv[2]]); print(json.dumps(v["nodes"]))' "$TF_DIR/terraform.tfvars.json" "${NODES[0]}")
tf plan -no-color -input=false -var "nodes=$bad_nodes" >"$LOGS/plan-unknown-node.log" 2>&1
plan_status=$?
check "a host that is not a node of topology.toml fails the plan (precondition)" \
    sh -c "[ $plan_status -ne 0 ] && grep -q 'must be a node of topology.toml' '$LOGS/plan-unknown-node.log'"

# ------------------------------------------------------------------------------------------------
stage "2. first apply: every node up"
plan_summary first || fatal "the first plan failed"
expect "the first plan creates every node, in topology order" "$(json_field "$SUMMARY" '" ".join(v["create"])')" "${NODES[*]}"
apply_plan first
apply_status=$?
grep -E '^Apply complete|^Error' "$LOGS/apply-first.log" | sed 's/^/   | /'
[ "$apply_status" -eq 0 ] || { tail -40 "$LOGS/apply-first.log" | sed 's/^/   | /'; fatal "the first apply failed"; }
check "first apply: 4 added" grep -q "Resources: ${#NODES[@]} added, 0 changed, 0 destroyed" "$LOGS/apply-first.log"
order=$("$PY" "$HERE/lib/tfcheck.py" apply-log "$LOGS/apply-first.log")
expect "nodes were created one at a time in topology order" "$(json_field "$order" '" ".join(v["created"]) + " overlaps=" + str(v["overlaps"])')" "${NODES[*]} overlaps=0"
for node in "${NODES[@]}"; do
    read -r active ready current user pid exe <<<"$(host_state "$node")"
    expect "$node: systemctl is-active hf-mirror" "$active" active
    expect "$node: /readyz" "$ready" 200
    expect "$node: current -> releases/<B1 sha>" "$current" "releases/$SHA1"
    expect "$node: the node runs as user hf-mirror" "$user" hf-mirror
    expect "$node: the process runs the B1 release" "$exe" "/opt/hf-mirror/releases/$SHA1/hf-mirror"
    holders=$(hx "$node" "ss -Hltnp 'sport = :80' 2>/dev/null")
    check "$node: port 80 is held by systemd (hf-mirror.socket) and handed to hf-mirror" held_by_both "$holders"
    certs=$(hx "$node" 'stat -c "%a %U:%G %n" /etc/hf-mirror/certs/* /etc/hf-mirror/certs/.[!.]* 2>/dev/null' | LC_ALL=C sort | tr "\n" ";")
    wanted=$(printf '640 root:hf-mirror /etc/hf-mirror/certs/%s\n' ca.pem "$node.pem" "$node.key" gossip.key | LC_ALL=C sort | tr "\n" ";")
    expect "$node: certs dir holds exactly ca.pem, its own certificate and key, gossip.key, 0640 root:hf-mirror" "$certs" "$wanted"
    expect "$node: the cluster's gossip key and operator token on the host are the operator's files" \
        "$(hx "$node" 'sha256sum < /etc/hf-mirror/certs/gossip.key; sha256sum < /etc/hf-mirror/operator-token' | cut -d' ' -f1 | tr '\n' ' ')" \
        "$(for file in gossip.key operator-token; do sha256sum <"$WORK/certs/$file" | cut -d' ' -f1; done | tr '\n' ' ')"
    expect "$node: operator token 0640 root:hf-mirror" "$(hx "$node" 'stat -c "%a %U:%G" /etc/hf-mirror/operator-token')" "640 root:hf-mirror"
    # The operator plane is on the operator port only, and its routes want the token.
    planes=$(hx "$node" "for url in http://127.0.0.1:80/_hfm/status http://127.0.0.1:80/metrics http://127.0.0.1:$OPERATOR_PORT/_hfm/status http://127.0.0.1:$OPERATOR_PORT/metrics; do
            curl -s -o /dev/null -w '%{http_code} ' --max-time 5 \$url; done
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H @- http://127.0.0.1:$OPERATOR_PORT/_hfm/status <<EOF
Authorization: Bearer \$(cat /etc/hf-mirror/operator-token)
EOF")
    expect "$node: public port 404 for /_hfm/status and /metrics; operator port: status 401 without the token, metrics 200, status 200 with it" \
        "$planes" "404 404 401 200 200"
    answer=$(in_router dig +short +time=2 +tries=2 "@${HOST_IP[$node]}" "$node.hf-mirror.eu" A 2>/dev/null | head -1)
    expect "$node: DNS on the handed-over port 53 answers its own name" "$answer" "${HOST_IP[$node]}"
done
note "resident memory of each node: $(for node in "${NODES[@]}"; do printf '%s %s MiB  ' "$node" "$(hx "$node" 'ps -o rss= -p "$(systemctl show -p MainPID --value hf-mirror.service)"' | awk '{ printf "%d", $1 / 1024 }')"; done)"
note "cluster as ${NODES[0]} sees it:"
document=$(wait_cluster_settled "${NODES[0]}")
settled=$?
status_table_on "${NODES[0]}" 2>&1 | sed 's/^/   | /'
check "hf-mirror status --json on ${NODES[0]}: every node live, a catalog leader, the ${#NODES[@]} nodes voters, no learner" [ $settled -eq 0 ]
# Every member's own /_hfm/status, as `hf-mirror status --json` collected it through their operator
# ports (their gossiped operator_url, the one cluster token): same leader, exactly one node leads
# (its own name), every node sees every node live.
leaders=$(printf '%s\n' "$document" | jq -r '[.members[] | .status] | "\(length) \([.[].raft.leader_name] | unique | length) \([.[] | select(.raft.leader_name == .node)] | length) \([.[].members[] | select(.state == "live")] | length) \([.[] | select((.members[].operator_url // "") | test("^http://10\\."))] | length > 0)"' 2>/dev/null)
expect "every node's /_hfm/status (through its gossiped operator_url): same leader, exactly one node leads, all see all live" "$leaders" \
    "${#NODES[@]} 1 1 $((${#NODES[@]} * ${#NODES[@]})) true"
hosts_arg=$(for node in "${NODES[@]}"; do printf '%s=http://%s,' "$node" "${HOST_IP[$node]}"; done)
in_router timeout 300 env HF_HOME="$WORK/hfhome" "$PY" "$HERE/lib/client_loop.py" --hub "$HUB_URL" --hosts "$hosts_arg" \
    --count $((${#NODES[@]} * 10)) --scratch "$WORK/scratch" --out "$LOGS/client-first.json" >"$LOGS/client-first.log" 2>&1
client_status=$?
note "$(tail -1 "$LOGS/client-first.log")"
check "real huggingface_hub HEADs and downloads (small and LFS) through every host, every byte checked" [ $client_status -eq 0 ]
"$PY" "$HERE/lib/tfcheck.py" secrets "$TF_DIR/terraform.tfstate" "$WORK/certs/"*.key "$WORK/certs/operator-token" >"$LOGS/secrets-first.json"
expect "the Terraform state holds no key material" "$(json_field "$(cat "$LOGS/secrets-first.json")" 'v["clean"]')" True
if [ "$ANYCAST" = 1 ]; then
    wait_all_announced
    check "anycast: the router has one equal-cost route per node to $ANYCAST_IP (BGP from each host's BIRD)" [ $? -eq 0 ]
    note "router: $(ip -n "$NS_R" route show "$ANYCAST_IP/32" | tr -s ' \n\t' ' ')"
    ip netns exec "$NS_C" timeout 300 env HF_HOME="$WORK/hfhome" "$PY" "$HERE/lib/client_loop.py" --hub "$HUB_URL" \
        --hosts "anycast=http://$ANYCAST_IP" --count 10 --scratch "$WORK/scratch" \
        --out "$LOGS/anycast-first.json" >"$LOGS/anycast-first.log" 2>&1
    client_status=$?
    note "$(tail -1 "$LOGS/anycast-first.log")"
    check "anycast: real huggingface_hub HEADs and downloads through $ANYCAST_IP from the client network" [ $client_status -eq 0 ]
fi

# ------------------------------------------------------------------------------------------------
stage "3. a second plan: no changes"
plan_summary second
expect "plan -detailed-exitcode exits 0 (no changes)" "$PLAN_EXIT" 0

# ------------------------------------------------------------------------------------------------
stage "4. rolling upgrade under a client loop"
declare -A PID_BEFORE DRAINED_BEFORE
for node in "${NODES[@]}"; do
    PID_BEFORE[$node]=$(main_pid "$node")
    DRAINED_BEFORE[$node]=$(drained_count "$node")
done
plan_summary upgrade -var "binary=$B2" || fatal "the upgrade plan failed"
expect "the plan replaces every node, in topology order" "$(json_field "$SUMMARY" '" ".join(v["replace"])')" "${NODES[*]}"
rm -f "$WORK/stop-client"
since=$(now_ns)
ip netns exec "$NS_R" timeout 900 env HF_HOME="$WORK/hfhome" "$PY" "$HERE/lib/client_loop.py" --hub "$HUB_URL" --hosts "$hosts_arg" \
    --count 20000 --pause 0.05 --stop-file "$WORK/stop-client" --scratch "$WORK/scratch" \
    --out "$LOGS/client-upgrade.json" >"$LOGS/client-upgrade.log" 2>&1 </dev/null &
CLIENT_PID=$!
if [ "$ANYCAST" = 1 ]; then
    ip -n "$NS_R" -ts monitor route >"$LOGS/routes-upgrade.log" 2>&1 </dev/null &
    MONITOR_PID=$!
    ip netns exec "$NS_C" timeout 900 env HF_HOME="$WORK/hfhome" "$PY" "$HERE/lib/client_loop.py" --hub "$HUB_URL" \
        --hosts "anycast=http://$ANYCAST_IP" --count 20000 --pause 0.05 --stop-file "$WORK/stop-client" \
        --scratch "$WORK/scratch" --out "$LOGS/anycast-upgrade.json" >"$LOGS/anycast-upgrade.log" 2>&1 </dev/null &
    ANYCAST_CLIENT_PID=$!
fi
sleep 2
apply_plan upgrade
apply_status=$?
[ "$ANYCAST" = 1 ] && wait_all_announced
sleep 2
touch "$WORK/stop-client"
for pid in "$CLIENT_PID" "$ANYCAST_CLIENT_PID"; do
    [ -n "$pid" ] || continue
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    stop_pid "$pid" 5
    wait "$pid" 2>/dev/null
done
stop_pid "$MONITOR_PID" 5
CLIENT_PID=""
ANYCAST_CLIENT_PID=""
MONITOR_PID=""
grep -E '^Apply complete|^Error' "$LOGS/apply-upgrade.log" | sed 's/^/   | /'
check "the upgrade apply succeeds" [ "$apply_status" -eq 0 ]
check "upgrade: 4 replaced (4 added, 4 destroyed)" grep -q "Resources: ${#NODES[@]} added, 0 changed, ${#NODES[@]} destroyed" "$LOGS/apply-upgrade.log"
order=$("$PY" "$HERE/lib/tfcheck.py" apply-log "$LOGS/apply-upgrade.log")
expect "Terraform replaced the nodes one at a time in topology order" "$(json_field "$order" '" ".join(v["created"]) + " overlaps=" + str(v["overlaps"])')" "${NODES[*]} overlaps=0"
for node in "${NODES[@]}"; do hx "$node" 'cat /var/log/hf-mirror-rollout.log' >"$LOGS/rollout-$node.log" 2>/dev/null; done
windows=$("$PY" "$HERE/lib/tfcheck.py" rollout-log "$LOGS"/rollout-*.log --since "$since")
expect "the hosts restarted one at a time in topology order (their own logs)" "$(json_field "$windows" '" ".join(v["order"]) + " overlaps=" + str(v["overlaps"])')" "${NODES[*]} overlaps=0"
for node in "${NODES[@]}"; do
    read -r active ready current user pid exe <<<"$(host_state "$node")"
    expect "$node: upgraded (active, ready, current -> B2, running B2)" "$active $ready $current $exe" \
        "active 200 releases/$SHA2 /opt/hf-mirror/releases/$SHA2/hf-mirror"
    check "$node: a new process (PID ${PID_BEFORE[$node]} -> $pid)" [ "$pid" != "${PID_BEFORE[$node]}" ]
    after=$(drained_count "$node")
    expect "$node: drained exactly once" "$((after - DRAINED_BEFORE[$node]))" 1
    previous=$(hx "$node" 'readlink /opt/hf-mirror/previous')
    expect "$node: previous -> the B1 release" "$previous" "releases/$SHA1"
done
note "client: $(tail -1 "$LOGS/client-upgrade.log")"
# The nodes' own start and stop lines, with their times (for the requests held in the backlog).
for node in "${NODES[@]}"; do
    hx "$node" 'journalctl -u hf-mirror.service -o short-unix --no-pager 2>/dev/null | grep -E "shutting down|node (stopped|ready)"' >"$LOGS/journal-$node.log" 2>/dev/null
done
if [ -s "$LOGS/client-upgrade.json" ]; then
    client=$("$PY" - "$LOGS/client-upgrade.json" "$windows" "$LOGS" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
windows = json.loads(sys.argv[2])["windows"]
covered = []
queued = []
for node, window in sorted(windows.items()):
    start, end = window["restarting"], window["deployed"]
    hits = [r for r in report["records"] if r["host"] == node and start and end and r["end"] >= start and r["start"] <= end]
    covered.append(f"{node}:{len(hits)}")
    # Requests that waited across the new process's start: sent before its "node ready", answered
    # after it. The old process had stopped accepting, so the kernel held them in the socket's
    # backlog (hf-mirror.socket) until the new process took them.
    ready = []
    for line in open(f"{sys.argv[3]}/journal-{node}.log", errors="replace"):
        parts = line.split()
        if parts and "node ready" in line and parts[0].replace(".", "").isdigit():
            stamp = int(float(parts[0]) * 1e9)
            if start and end and start <= stamp <= end:
                ready.append(stamp)
    if ready:
        waited = [r for r in report["records"] if r["host"] == node and r["ok"] and r["start"] >= start and r["start"] < ready[0] < r["end"]]
        queued.append(f"{node}:{len(waited)}")
print(report["requests"], report["failed"], report["by_kind"]["HEAD"], report["by_kind"]["GET"], report["lfs_gets_ok"], " ".join(covered))
print(" ".join(queued))
for failure in report["failures"][:5]:
    print("failure:", failure["host"], failure["kind"], failure["path"], failure["error"][:200], file=sys.stderr)
PY
)
    read -r requests failed heads gets lfs covered_text <<<"$(printf '%s\n' "$client" | head -1)"
    covered=$(printf '%s\n' "$client" | head -1 | cut -d' ' -f6-)
    note "client loop: $requests requests ($heads HEAD, $gets GET, $lfs LFS downloads), during each restart: $covered"
    queued=$(printf '%s\n' "$client" | sed -n 2p)
    note "requests held in the socket's backlog while the node restarted (sent before the new process was ready, answered by it): $queued"
    check "some requests waited in a held socket across a restart and were answered (socket activation)" \
        all_positive "$(printf '%s\n' "$queued" | tr ' ' '\n' | awk -F: '{ total += $2 } END { print total + 0 }')"
    expect "0 failed client requests during the rolling upgrade" "$failed" 0
    check "the client loop made HEADs and GETs of small and LFS files" all_positive "$heads" "$gets" "$lfs"
    for item in $covered; do
        check "requests reached ${item%%:*} while it restarted (${item#*:})" [ "${item#*:}" -gt 0 ]
    done
else
    fail "the client loop wrote no report"
fi
table=$(wait_cluster_settled "${NODES[0]}")
check "after the upgrade: every node live and a catalog leader" [ $? -eq 0 ]
if [ "$ANYCAST" = 1 ]; then
    note "anycast client: $(tail -1 "$LOGS/anycast-upgrade.log")"
    anycast=$("$PY" - "$LOGS/anycast-upgrade.json" "$LOGS/routes-upgrade.log" "$windows" "$LOGS" "${addresses[@]}" <<'PY'
import datetime, json, re, sys
report = json.load(open(sys.argv[1]))
windows = json.loads(sys.argv[3])["windows"]
logs = sys.argv[4]
address = dict(pair.split("=", 1) for pair in sys.argv[5:])
# Route events: (time ns, next hops) for the anycast route, from `ip -ts monitor route`.
events = []
current = None
for line in open(sys.argv[2], errors="replace"):
    match = re.match(r"^\[([0-9T:.\-]+)\] (.*)$", line.rstrip("\n"))
    if match:
        if current:
            events.append(current)
        stamp = int(datetime.datetime.fromisoformat(match.group(1)).timestamp() * 1e9)
        body = match.group(2)
        current = [stamp, body, set(re.findall(r"via ([0-9.]+)", body))] if "10.77.100.1" in body else None
        if current and body.startswith("Deleted"):
            current[2] = set()
    elif current and line.startswith("\t"):
        current[2] |= set(re.findall(r"via ([0-9.]+)", line))
if current:
    events.append(current)
out = []
for node, window in sorted(windows.items()):
    ip = address[node]
    start, end = window["restarting"], window["deployed"]
    sigterm = None
    ready = None
    for line in open(f"{logs}/journal-{node}.log", errors="replace"):
        parts = line.split()
        if not parts or not parts[0].replace(".", "").isdigit():
            continue
        stamp = int(float(parts[0]) * 1e9)
        if start and end and start <= stamp <= end:
            if "shutting down" in line and sigterm is None:
                sigterm = stamp
            if "node ready" in line:
                ready = stamp
    withdrawn = next((t for t, _, hops in events if start and end and start <= t <= end and ip not in hops), None)
    back = next((t for t, _, hops in events if withdrawn and t > withdrawn and ip in hops), None)
    ok = bool(sigterm and withdrawn and withdrawn < sigterm and back and ready and back > ready)
    out.append(f"{node}:{'ok' if ok else 'no'}:{(sigterm - withdrawn) / 1e9 if sigterm and withdrawn else 'nan'}")
print(report["requests"], report["failed"], " ".join(out))
PY
)
    read -r any_requests any_failed any_rest <<<"$anycast"
    note "anycast: withdrawn before SIGTERM, announced again after ready (node:ok:seconds between): $any_rest"
    expect "anycast: 0 failed client requests through $ANYCAST_IP during the rolling upgrade ($any_requests requests)" "$any_failed" 0
    check "anycast: the client loop through $ANYCAST_IP made requests" all_positive "$any_requests"
    for item in $any_rest; do
        node=${item%%:*}
        rest=${item#*:}
        expect "anycast: $node's route was withdrawn before it stopped and came back once it was ready" "${rest%%:*}" ok
    done
    check "anycast: after the upgrade every node is announced again" wait_all_announced
fi

# ------------------------------------------------------------------------------------------------
stage "5. a release that cannot start"
declare -A PID_B5
for node in "${NODES[@]}"; do PID_B5[$node]=$(main_pid "$node"); done
plan_summary bad -var "binary=$B3" || fatal "the plan of the bad release failed"
since=$(now_ns)
apply_plan bad
apply_status=$?
grep -E 'hf-mirror-step .*(FAILED|rolled back|rolling back)|^Error' "$LOGS/apply-bad.log" | sed 's/^/   | /'
check "the apply of a release that cannot start fails" [ "$apply_status" -ne 0 ]
first=${NODES[0]}
read -r active ready current user pid exe <<<"$(host_state "$first")"
expect "$first: rolled back (active, ready, current -> B2, running B2)" "$active $ready $current $exe" \
    "active 200 releases/$SHA2 /opt/hf-mirror/releases/$SHA2/hf-mirror"
check "$first: rolled back by the step (its log says so)" hx "$first" "grep -q 'rolled back' /var/log/hf-mirror-rollout.log"
rolled=0
for node in "${NODES[@]}"; do
    if hx "$node" "awk -v since=$since '\$1 > since' /var/log/hf-mirror-rollout.log | grep -q 'rolled back'"; then rolled=$((rolled + 1)); fi
done
expect "exactly one node rolled back" "$rolled" 1
for node in "${NODES[@]:1}"; do
    read -r active ready current user pid exe <<<"$(host_state "$node")"
    expect "$node: untouched (same PID, current -> B2)" "$pid $current" "${PID_B5[$node]} releases/$SHA2"
    check "$node: the bad release never reached it" hx "$node" "test ! -e /opt/hf-mirror/releases/$SHA3"
done
# Recovery: the next apply with a good release resumes at the node that failed.
plan_summary recover -var "binary=$B2" || fatal "the recovery plan failed"
expect "recovery plan: only $first is created again" "$(json_field "$SUMMARY" '" ".join(v["create"])')" "$first"
apply_plan recover
check "the recovery apply succeeds" [ $? -eq 0 ]
plan_summary after-recover -var "binary=$B2"
expect "then no changes" "$PLAN_EXIT" 0
[ "$ANYCAST" = 1 ] && check "anycast: every node announced again after the rollback and recovery" wait_all_announced

# ------------------------------------------------------------------------------------------------
stage "6. one node's certificate changes"
target=${NODES[2]:-${NODES[1]}}
declare -A PID_B6
for node in "${NODES[@]}"; do PID_B6[$node]=$(main_pid "$node"); done
hashes_before=$(certs_hashes)
rotate_cert "$target"
expect "hf-mirror cluster certs --reissue $target: only $target.pem and $target.key changed (CA, gossip key and the others kept)" \
    "$(diff <(printf '%s\n' "$hashes_before") <(certs_hashes) | awk '/^>/ { print $2 }' | tr '\n' ' ')" "$target.key $target.pem "
plan_summary cert -var "binary=$B2" || fatal "the certificate plan failed"
expect "the plan replaces exactly $target" "$(json_field "$SUMMARY" '" ".join(v["replace"])')" "$target"
apply_plan cert
check "the certificate apply succeeds" [ $? -eq 0 ]
check "certificate change: 1 replaced" grep -q "Resources: 1 added, 0 changed, 1 destroyed" "$LOGS/apply-cert.log"
for node in "${NODES[@]}"; do
    pid=$(main_pid "$node")
    if [ "$node" = "$target" ]; then
        check "$target: restarted (PID ${PID_B6[$node]} -> $pid)" [ "$pid" != "${PID_B6[$node]}" ]
        remote=$(hx "$node" "sha256sum < /etc/hf-mirror/certs/$node.pem" | cut -d' ' -f1)
        expect "$target: has the new certificate" "$remote" "$(sha256sum <"$WORK/certs/$target.pem" | cut -d' ' -f1)"
    else
        expect "$node: untouched (same PID)" "$pid" "${PID_B6[$node]}"
    fi
done
table=$(wait_cluster_settled "${NODES[0]}")
check "with the new certificate (mutual TLS to every peer): every node live and a catalog leader" [ $? -eq 0 ]
"$PY" "$HERE/lib/tfcheck.py" secrets "$TF_DIR/terraform.tfstate" "$WORK/certs/"*.key "$WORK/certs/operator-token" >"$LOGS/secrets-cert.json"
expect "the Terraform state holds no key material" "$(json_field "$(cat "$LOGS/secrets-cert.json")" 'v["clean"]')" True

# ------------------------------------------------------------------------------------------------
stage "6b. the gate: no node is stopped while another is down"
first=${NODES[0]}
down=${NODES[${#NODES[@]} - 1]}
hx "$down" 'systemctl stop hf-mirror.socket hf-mirror.service'
for _ in $(seq 1 60); do
    [ "$(member_state "$(status_on "$first" 2>/dev/null)" "$down")" != live ] && break
    sleep 1
done
note "$down stopped by hand; $first sees it as $(member_state "$(status_on "$first" 2>/dev/null)" "$down")"
pid_first=$(main_pid "$first")
rotate_cert "$first"
plan_summary gate -var "binary=$B2" -var peers_timeout=10 || fatal "the gate plan failed"
expect "the plan replaces exactly $first" "$(json_field "$SUMMARY" '" ".join(v["replace"])')" "$first"
apply_plan gate
gate_status=$?
grep -E 'hf-mirror-step .*(refusing|FAILED)' "$LOGS/apply-gate.log" | sed 's/^/   | /'
check "the apply fails: $first refuses to stop while $down is down" \
    sh -c "[ $gate_status -ne 0 ] && grep -q 'refusing to stop $first' '$LOGS/apply-gate.log'"
expect "$first: not stopped (same PID)" "$(main_pid "$first")" "$pid_first"
hx "$down" 'systemctl start hf-mirror.socket hf-mirror.service'
table=$(wait_cluster_settled "$first")
check "$down started again by hand: every node live and a catalog leader" [ $? -eq 0 ]
plan_summary gate-again -var "binary=$B2" || fatal "the second gate plan failed"
apply_plan gate-again
check "with every node live, the same change applies" [ $? -eq 0 ]
check "$first: restarted this time" [ "$(main_pid "$first")" != "$pid_first" ]

# ------------------------------------------------------------------------------------------------
stage "7. a fifth node added and removed"
new=$EXTRA_NODE
FOUR="${NODES[*]}"
FIVE="${NODES[*]} $new"
# blobs_fetch NAME HOSTS [--through-each]: the LFS shards of rollout/blobs through HOSTS, hashed.
blobs_fetch() {
    local name=$1 hosts=$2
    shift 2
    in_router timeout 600 env HF_HOME="$WORK/hfhome" "$PY" "$HERE/lib/blobs.py" fetch --hub "$HUB_URL" --hosts "$hosts" \
        --scratch "$WORK/scratch" --out "$LOGS/blobs-$name.json" "$@" >"$LOGS/blobs-$name.log" 2>&1
    local status=$?
    note "$(tail -1 "$LOGS/blobs-$name.log")"
    return $status
}
# Upstream GETs of the shards' bytes so far (the fake Hub's request log: CDN and /resolve/).
blobs_upstream() { in_router "$PY" "$HERE/lib/blobs.py" upstream --hub "$HUB_URL"; }
upstream_total() { printf '%s\n' "$1" | jq -r .total; }
mapfile -t SHARDS < <(in_router "$PY" "$HERE/lib/blobs.py" etags --hub "$HUB_URL")
note "rollout/blobs: ${#SHARDS[@]} LFS shards"

# 7a. Blobs the cluster holds before the fifth node exists.
blobs_fetch before "$hosts_arg"
check "the ${#SHARDS[@]} LFS shards downloaded through the four hosts before adding $new (every byte checked)" [ $? -eq 0 ]
UPSTREAM_HELD=$(blobs_upstream)
note "upstream asked for the shards' bytes so far: $UPSTREAM_HELD"
check "each shard was fetched from upstream once at most (the cluster coalesces fills)" \
    [ "$(printf '%s\n' "$UPSTREAM_HELD" | jq -r .per_blob_max)" -le 1 ]

# 7b. The operator's steps: topology.toml gets the node at the end, nodes its host, certs its certificate.
hashes_before=$(certs_hashes)
"$BINARY" cluster certs --config "$WORK/topology5.toml" --out "$WORK/certs" >"$LOGS/certs-five.log" 2>&1
check "hf-mirror cluster certs with the new topology succeeds" [ $? -eq 0 ]
note "$(tail -1 "$LOGS/certs-five.log")"
changes=$(diff <(printf '%s\n' "$hashes_before") <(certs_hashes))
expect "cluster certs issued $new's certificate and key only (CA, gossip key and the other nodes' files kept)" \
    "$(printf '%s\n' "$changes" | awk '/^</ { old = old " " $2 } /^>/ { new = new " " $2 } END { print "changed:" old "; new:" new }')" \
    "changed:; new: $new.key $new.pem"
declare -A PID_B7
for node in "${NODES[@]}"; do PID_B7[$node]=$(main_pid "$node"); done
# -var-file first: its binary (B1) is overridden by the -var after it.
plan_summary add -var-file="$WORK/five-nodes.tfvars.json" -var "binary=$B2" || fatal "the plan that adds $new failed"
expect "the plan replaces the four nodes in topology order (the topology changed) and creates $new last" \
    "$(json_field "$SUMMARY" '" ".join(v["replace"]) + " + " + " ".join(n for n in v["create"] if n not in v["replace"])')" "$FOUR + $new"
since=$(now_ns)
apply_plan add
apply_status=$?
grep -E '^Apply complete|^Error|hf-mirror-step .*(FAILED|topology:)' "$LOGS/apply-add.log" | sed 's/^/   | /'
check "the apply that adds $new succeeds" [ "$apply_status" -eq 0 ]
check "add: 5 added, 4 destroyed" grep -q "Resources: 5 added, 0 changed, 4 destroyed" "$LOGS/apply-add.log"
order=$("$PY" "$HERE/lib/tfcheck.py" apply-log "$LOGS/apply-add.log")
expect "one node at a time, in topology order, $new last" "$(json_field "$order" '" ".join(v["created"]) + " overlaps=" + str(v["overlaps"])')" "$FIVE overlaps=0"
for node in "${NODES[@]}"; do hx "$node" 'cat /var/log/hf-mirror-rollout.log' >"$LOGS/rollout-add-$node.log" 2>/dev/null; done
check "${NODES[0]}'s step did not wait for $new (in the new topology, not deployed yet)" \
    sh -c "awk -v since=$since '\$1 > since' '$LOGS/rollout-add-${NODES[0]}.log' | grep -q 'topology: adding $new'"
read -r active ready current user pid exe <<<"$(host_state "$new")"
expect "$new: active, ready, current -> B2, running B2 as hf-mirror" "$active $ready $current $exe $user" \
    "active 200 releases/$SHA2 /opt/hf-mirror/releases/$SHA2/hf-mirror hf-mirror"
for node in "${NODES[@]}"; do
    check "${node}: restarted on the five-node topology (PID ${PID_B7[$node]} -> $(main_pid "$node"))" [ "$(main_pid "$node")" != "${PID_B7[$node]}" ]
done
certs=$(hx "$new" 'stat -c "%a %U:%G %n" /etc/hf-mirror/certs/* 2>/dev/null' | LC_ALL=C sort | tr "\n" ";")
expect "$new: certs dir holds exactly ca.pem, its own certificate and key, gossip.key" "$certs" \
    "$(printf '640 root:hf-mirror /etc/hf-mirror/certs/%s\n' ca.pem "$new.pem" "$new.key" gossip.key | LC_ALL=C sort | tr "\n" ";")"
check "$new: its step waited until it was a catalog voter" hx "$new" "grep -q 'catalog caught up: a voter' /var/log/hf-mirror-rollout.log"
document=$(wait_cluster_settled "${NODES[0]}" "$FIVE")
settled=$?
note "${NODES[0]} sees: $(status_summary "$document")"
check "hf-mirror status --json on ${NODES[0]}: 5 voters ($FIVE), 0 learners, all 5 live, a leader" [ $settled -eq 0 ]
VOTERS_ADDED=$(printf '%s\n' "$document" | jq -r '.node.raft.voters | length')
document=$(wait_cluster_settled "$new" "$FIVE")
check "hf-mirror status --json on $new: the same (5 voters, 0 learners, all live)" [ $? -eq 0 ]
steps=$(for node in "${NODES[@]}"; do hx "$node" "journalctl -u hf-mirror.service -o cat --no-pager 2>/dev/null | grep -E 'added to the catalog as a learner|promoted to catalog voter' | grep -w $new"; done)
printf '%s\n' "$steps" | sed 's/^/   | /'
check "the catalog leader added $new as a learner, then promoted it to voter" \
    sh -c "printf '%s\n' \"\$1\" | grep -q 'as a learner' && printf '%s\n' \"\$1\" | grep -q 'promoted to catalog voter'" _ "$steps"
[ "$ANYCAST" = 1 ] && check "anycast: $new announces $ANYCAST_IP too (5 next hops)" wait_all_announced "$FIVE"
# Its share of the blobs: the replica keeper copies, from the nodes that hold them, the blobs
# placement now gives it (bounded wait: it copies two at a time, a round every 5 s).
new_blobs=0
shards_here=0
for _ in $(seq 1 60); do
    own=$(status_on "$new" 2>/dev/null | jq '.node' 2>/dev/null)
    new_blobs=$(printf '%s\n' "$own" | jq -r '.store.blobs // 0' 2>/dev/null)
    settled_copies=$(printf '%s\n' "$own" | jq -r '.replicas as $r | ($r.reconciliations // 0) >= 2 and ($r.copies_started // 0) == (($r.copies_completed // 0) + ($r.copies_failed // 0))' 2>/dev/null)
    [ "${new_blobs:-0}" -gt 0 ] && [ "$settled_copies" = true ] && break
    sleep 1
done
held=$(hx "$new" 'find /var/lib/hf-mirror/blobs -type f 2>/dev/null' | awk -F/ '{ print $NF }')
shards_here=$(for etag in "${SHARDS[@]}"; do printf '%s\n' "$held" | grep -qx "$etag" && echo "$etag"; done | wc -l)
note "$new: store.blobs $new_blobs, of them $shards_here of the ${#SHARDS[@]} shards; replica keeper: $(printf '%s\n' "$own" | jq -c .replicas 2>/dev/null)"
check "$new received its share of the blobs from the other nodes ($shards_here of ${#SHARDS[@]} shards; store.blobs $new_blobs)" \
    all_positive "$shards_here" "$new_blobs"
UPSTREAM_ADDED=$(blobs_upstream)
expect "no upstream request for the shards while $new received them" "$(upstream_total "$UPSTREAM_ADDED")" "$(upstream_total "$UPSTREAM_HELD")"
blobs_fetch through-new "$new=http://${HOST_IP[$new]}"
check "every shard fetchable through $new (every byte checked)" [ $? -eq 0 ]
expect "and upstream still not asked for any of them" "$(upstream_total "$(blobs_upstream)")" "$(upstream_total "$UPSTREAM_HELD")"
plan_summary added -var-file="$WORK/five-nodes.tfvars.json" -var "binary=$B2"
expect "then a plan with five nodes has no changes" "$PLAN_EXIT" 0

# 7c. Remove it again: topology.toml and nodes without it (the four-node variables).
for node in "${NODES[@]}"; do PID_B7[$node]=$(main_pid "$node"); done
drained_new_before=$(drained_count "$new")
plan_summary remove -var "binary=$B2" || fatal "the plan that removes $new failed"
expect "the plan replaces the four nodes in topology order and deletes $new" \
    "$(json_field "$SUMMARY" '" ".join(v["replace"]) + " - " + " ".join(n for n in v["delete"] if n not in v["replace"])')" "$FOUR - $new"
since=$(now_ns)
apply_plan remove
apply_status=$?
grep -E '^Apply complete|^Error|hf-mirror-step .*(FAILED|topology:|draining|decommission)' "$LOGS/apply-remove.log" | sed 's/^/   | /'
check "the apply that removes $new succeeds" [ "$apply_status" -eq 0 ]
check "remove: 4 added, 5 destroyed" grep -q "Resources: 4 added, 0 changed, 5 destroyed" "$LOGS/apply-remove.log"
order=$("$PY" "$HERE/lib/tfcheck.py" apply-log "$LOGS/apply-remove.log")
expect "the four restarted one at a time in topology order; $new destroyed" \
    "$(json_field "$order" '" ".join(v["created"]) + " overlaps=" + str(v["overlaps"]) + " destroyed=" + " ".join(v["destroyed"])')" \
    "$FOUR overlaps=0 destroyed=$new"
last_created=$(grep -n 'Creation complete' "$LOGS/apply-remove.log" | tail -1 | cut -d: -f1)
destroying=$(grep -n "module.node_5\[\"$new\"\].terraform_data.node: Destroying" "$LOGS/apply-remove.log" | head -1 | cut -d: -f1)
check "$new was drained and stopped after the four others run the topology without it (its destroy came last)" \
    [ "${destroying:-0}" -gt "${last_created:-999999}" ]
for node in "${NODES[@]}"; do
    check "${node}: restarted on the four-node topology" [ "$(main_pid "$node")" != "${PID_B7[$node]}" ]
done
state=$(hx "$new" 'printf "%s %s %s" "$(systemctl is-active hf-mirror.service hf-mirror.socket 2>/dev/null | tr "\n" ,)" "$(pgrep -u hf-mirror | wc -l)" "$(ss -Hltn "sport = :80" | wc -l)"')
expect "$new: stopped (service and socket inactive, no hf-mirror process, port 80 closed)" "$state" "inactive,inactive, 0 0"
check "$new: decommissioned by its destroy-time step (units, release, keys, token gone; data kept)" hx "$new" \
    "awk -v since=$since '\$1 > since' /var/log/hf-mirror-rollout.log | grep -q decommissioned && test ! -e /opt/hf-mirror && test ! -e /etc/hf-mirror/certs && test ! -e /etc/hf-mirror/operator-token && test -s /var/lib/hf-mirror/catalog.redb && test -d /var/lib/hf-mirror/blobs"
check "$new: drained before it stopped" [ "$(drained_count "$new")" -gt "$drained_new_before" ]
document=$(wait_cluster_settled "${NODES[0]}" "$FOUR")
settled=$?
note "${NODES[0]} sees: $(status_summary "$document")"
check "hf-mirror status --json on ${NODES[0]}: $new left the voters (4 voters, 0 learners, all 4 live)" [ $settled -eq 0 ]
VOTERS_REMOVED=$(printf '%s\n' "$document" | jq -r '.node.raft.voters | length')
steps=$(for node in "${NODES[@]}"; do hx "$node" "journalctl -u hf-mirror.service -o cat --no-pager 2>/dev/null | grep -E 'removed from the catalog (voters|learners)' | grep -w $new"; done)
printf '%s\n' "$steps" | sed 's/^/   | /'
check "the catalog leader removed $new from the voters" sh -c "printf '%s\n' \"\$1\" | grep -q 'removed from the catalog voters'" _ "$steps"
[ "$ANYCAST" = 1 ] && check "anycast: $new's route is gone (4 next hops)" wait_all_announced "$FOUR"
blobs_fetch after-remove "$hosts_arg" --through-each
check "nothing lost: every shard fetchable through every remaining host (every byte checked)" [ $? -eq 0 ]
UPSTREAM_REMOVED=$(blobs_upstream)
expect "upstream not asked again for blobs the cluster held (shard fetches before the add: $(upstream_total "$UPSTREAM_HELD"))" \
    "$(upstream_total "$UPSTREAM_REMOVED")" "$(upstream_total "$UPSTREAM_HELD")"
note "item 7: voters $VOTERS_ADDED after the add, $VOTERS_REMOVED after the removal; $new held $shards_here of ${#SHARDS[@]} shards (store.blobs $new_blobs); upstream shard GETs: $(upstream_total "$UPSTREAM_HELD") before, $(upstream_total "$UPSTREAM_REMOVED") at the end"
plan_summary removed -var "binary=$B2"
expect "then a plan with four nodes has no changes" "$PLAN_EXIT" 0
"$PY" "$HERE/lib/tfcheck.py" secrets "$TF_DIR/terraform.tfstate" "$WORK/certs/"*.key "$WORK/certs/operator-token" >"$LOGS/secrets-membership.json"
expect "the Terraform state holds no key material" "$(json_field "$(cat "$LOGS/secrets-membership.json")" 'v["clean"]')" True

# ------------------------------------------------------------------------------------------------
stage "8. destroy"
for node in "${NODES[@]}"; do DRAINED_BEFORE[$node]=$(drained_count "$node"); done
since=$(now_ns)
tf destroy -no-color -input=false -auto-approve >"$LOGS/destroy.log" 2>&1
destroy_status=$?
grep -E '^Destroy complete|^Error' "$LOGS/destroy.log" | sed 's/^/   | /'
check "terraform destroy succeeds" [ "$destroy_status" -eq 0 ]
check "destroy: 4 destroyed" grep -q "Resources: ${#NODES[@]} destroyed" "$LOGS/destroy.log"
order=$("$PY" "$HERE/lib/tfcheck.py" apply-log "$LOGS/destroy.log")
reversed=$(for ((index = ${#NODES[@]} - 1; index >= 0; index--)); do printf '%s ' "${NODES[$index]}"; done)
expect "nodes destroyed in reverse topology order" "$(json_field "$order" '" ".join(v["destroyed"])') " "$reversed"
for node in "${NODES[@]}"; do
    state=$(hx "$node" 'printf "%s %s %s" "$(systemctl is-active hf-mirror.service hf-mirror.socket 2>/dev/null | tr "\n" ,)" "$(pgrep -u hf-mirror | wc -l)" "$(ss -Hltn "sport = :80" | wc -l)"')
    expect "$node: stopped (service and socket inactive, no hf-mirror process, port 80 closed)" "$state" "inactive,inactive, 0 0"
    check "$node: data directory kept (catalog.redb and blobs on the host)" hx "$node" 'test -s /var/lib/hf-mirror/catalog.redb && test -d /var/lib/hf-mirror/blobs'
    check "$node: release, units and keys removed" hx "$node" 'test ! -e /opt/hf-mirror && test ! -e /etc/systemd/system/hf-mirror.service && test ! -e /etc/hf-mirror/certs'
    check "$node: decommissioned by the destroy-time step" hx "$node" "awk -v since=$since '\$1 > since' /var/log/hf-mirror-rollout.log | grep -q decommissioned"
    expect "$node: drained exactly once on the way out" "$(($(drained_count "$node") - DRAINED_BEFORE[$node]))" 1
done
if [ "$ANYCAST" = 1 ]; then
    for _ in $(seq 1 40); do [ -z "$(anycast_hops)" ] && break; sleep 0.5; done
    expect "anycast: no node announces $ANYCAST_IP any more" "$(anycast_hops)" ""
fi
"$PY" "$HERE/lib/tfcheck.py" secrets "$TF_DIR/terraform.tfstate" "$WORK/certs/"*.key "$WORK/certs/operator-token" >"$LOGS/secrets-destroy.json"
expect "the Terraform state holds no key material" "$(json_field "$(cat "$LOGS/secrets-destroy.json")" 'v["clean"]')" True
ca_line=$(grep -v -- '-----' "$WORK/certs/ca.key" | head -1)
CA_KEY_SHA256=$(sha256sum "$WORK/certs/ca.key" | cut -d' ' -f1)
for node in "${HOSTS[@]}"; do
    # Files named ca.key (the image has unrelated ones, e.g. in Python packages): none is the cluster's.
    named=$(hx "$node" 'find /etc /opt /var/lib /var/tmp /tmp /root /home -xdev -path /root/.pyenv -prune -o -name ca.key -type f -exec sha256sum {} + 2>/dev/null' |
        grep -c "^$CA_KEY_SHA256 ")
    expect "$node: no file on the host is the cluster's ca.key (searched by name and compared)" "$named" 0
    # Everything a host ever wrote is in its overlay's upper layer or its data directory.
    if grep -rqF -- "$ca_line" "$WORK/hosts/$node/upper" "$WORK/data/$node" 2>/dev/null; then
        fail "$node: the CA key's bytes are on the host"
    else
        pass "$node: the CA key's bytes are nowhere on the host (upper layer and data directory searched)"
    fi
done
stage_end
exit 0
