#!/usr/bin/env bash
# The Docker tier: the same stack as a compose project, tested against a real Docker engine.
#
#   bash stack/scripts/docker-tier.sh            # everything below, then clean up (CI: `make test-docker`)
#   bash stack/scripts/docker-tier.sh start      # install + start the tier's engine + base image; prints DOCKER_HOST
#   bash stack/scripts/docker-tier.sh base-image # (engine running) make the offline Debian base image
#   bash stack/scripts/docker-tier.sh stop       # stop the engine, remove the networks and rules it made
#   bash stack/scripts/docker-tier.sh nodes-up N [IMAGE...]  # (engine running) N worker engines in network
#                                                # namespaces, one swarm with the tier's engine as manager
#   bash stack/scripts/docker-tier.sh nodes-down # stop them, leave that swarm, remove namespaces and links
#
# 1. installs Debian's docker.io, docker-compose and debootstrap (apt) when missing;
# 2. starts its own dockerd: own socket, data root, exec root and pid file, so it never touches
#    another engine on this machine. No registry is reachable here, so builds use the host's
#    network and containers need no NAT; no docker0 either. iptables is on by default
#    (SCALELAB_DOCKER_IPTABLES=1): Swarm's published ports are iptables rules on docker_gwbridge;
#    SCALELAB_DOCKER_IPTABLES=0 runs the engine without any rules (compose only);
# 3. makes the base image with debootstrap + docker import (kept in the data root: skipped
#    when it exists), then builds the stack's four images on it;
# 4. runs tests/test_docker*.py and tests/test_swarm*.py with SCALELAB_DOCKER_TESTS=1: they
#    FAIL (never skip) when the engine is unusable. The Swarm tests put the engine in Swarm
#    mode (SwarmStack.up) and leave it again (down); tests/test_swarm_multinode.py makes it the
#    manager of two worker engines in network namespaces (nodes-up) and removes them (nodes-down).
#    Then the lesson notebooks, unchanged, with nbval: $DOCKER_LESSONS and the lab solutions
#    $DOCKER_SOLUTIONS on the docker backend (SCALELAB_BACKEND=docker), then $SWARM_LESSONS and
#    $SWARM_SOLUTIONS on the swarm backend (SCALELAB_BACKEND=swarm);
# 5. always (trap): removes the containers, stops dockerd by its pid, and removes the bridges,
#    iptables rules and chains, and mounts that appeared while it ran.
# Prints the time of every phase. Needs root (it installs packages and runs dockerd).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DOCKER_ROOT=${SCALELAB_DOCKER_ROOT:-/var/lib/scalelab-docker}
RUN_ROOT=${SCALELAB_DOCKER_RUN:-/run/scalelab-docker}
SOCK=$RUN_ROOT/docker.sock
PIDFILE=$RUN_ROOT/dockerd.pid
LOG=$DOCKER_ROOT/dockerd.log
SNAP=$RUN_ROOT/before
BASE_IMAGE=${SCALELAB_DOCKER_BASE_IMAGE:-scalelab/debian-base:bookworm}
export DOCKER_HOST=unix://$SOCK
DOCKER=/usr/bin/docker                 # Debian's client, matched to its engine
[ -x "$DOCKER" ] || DOCKER=docker

# -- timing --------------------------------------------------------------------------
T0=$(date +%s.%N)
PHASES=()
PHASE=""
PHASE_T=""
phase() {   # phase NAME: end the current phase (if any), start NAME ("" just ends)
    local now; now=$(date +%s.%N)
    if [ -n "$PHASE" ]; then
        PHASES+=("$(printf '%-28s %7.1f s' "$PHASE" "$(echo "$now - $PHASE_T" | bc)")")
    fi
    PHASE=$1; PHASE_T=$now
    [ -n "$1" ] && echo "== $1"
    return 0
}
report() {
    phase ""
    echo "== Docker tier timings"
    printf '  %s\n' "${PHASES[@]}"
    printf '  %-28s %7.1f s\n' "total" "$(echo "$(date +%s.%N) - $T0" | bc)"
}

die() { echo "docker-tier: $*" >&2; exit 1; }

# -- 1. packages -------------------------------------------------------------------------
install_packages() {
    local need=()
    [ -x /usr/sbin/dockerd ] || need+=(docker.io)
    command -v docker-compose >/dev/null || need+=(docker-compose)
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
    command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
    command -v bc >/dev/null || need+=(bc)
    [ ${#need[@]} -eq 0 ] && { echo "docker.io, docker-compose and debootstrap are installed"; return 0; }
    [ "$(id -u)" = 0 ] || die "needs root to install ${need[*]}: sudo apt-get install ${need[*]}"
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# -- 2. the engine -----------------------------------------------------------------------
engine_pid() {   # the pid of *our* dockerd, if it runs
    [ -f "$PIDFILE" ] || return 1
    local pid; pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "dockerd" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

snapshot() {   # what exists before our engine: only what appears later is removed
    mkdir -p "$SNAP"
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | sort > "$SNAP/links"
    for table in filter nat; do
        iptables -w -t "$table" -S 2>/dev/null > "$SNAP/iptables-$table" || true
    done
    sysctl -n net.ipv4.ip_forward > "$SNAP/ip_forward" 2>/dev/null || true
}

# launch_dockerd DATA_ROOT EXEC_ROOT SOCK PIDFILE LOG [--netns NAME --hostname NAME] [FLAGS...]:
# one dockerd in the background, stdin closed (it outlives this script; stopped by its pid).
# With --netns it runs in that network namespace (nsenter: the host's mount namespace and
# cgroups stay, which dockerd needs; `ip netns exec` remounts /sys and hides the cgroups)
# and its own UTS namespace, so `docker node ls` tells the nodes apart. Echoes the pid.
launch_dockerd() {
    local data=$1 exec_root=$2 sock=$3 pidfile=$4 log=$5; shift 5
    local wrap=()
    if [ "${1:-}" = --netns ]; then
        wrap=(nsenter "--net=/run/netns/$2" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$4")
        shift 4
    fi
    "${wrap[@]}" /usr/sbin/dockerd --data-root "$data" --exec-root "$exec_root" \
        -H "unix://$sock" --pidfile "$pidfile" --log-level warn "$@" >> "$log" 2>&1 < /dev/null &
    echo $!
}

wait_dockerd() {   # wait_dockerd SOCK PID LOG: until the engine answers; dies with its log if it does not
    local sock=$1 pid=$2 log=$3
    for _ in $(seq 1 200); do
        DOCKER_HOST=unix://$sock "$DOCKER" version >/dev/null 2>&1 && { echo "engine answers on $sock"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "--- last lines of $log" >&2
    tail -n 20 "$log" >&2 || true
    die "dockerd did not start (see above): Docker cannot run here, so the Docker tier fails"
}

start_engine() {
    [ "$(id -u)" = 0 ] || die "needs root to run dockerd (rootless Docker is another setup)"
    if pid=$(engine_pid); then
        echo "the tier's dockerd already runs (pid $pid)"
    else
        mkdir -p "$DOCKER_ROOT" "$RUN_ROOT"
        [ -f "$SNAP/links" ] || snapshot
        local net_flags=(--iptables=false --ip6tables=false --ip-forward=false --bridge=none)
        # Swarm's ingress routing mesh (published service ports) is made of iptables rules:
        # iptables on, still no docker0 (the stacks use their own networks).
        [ "${SCALELAB_DOCKER_IPTABLES:-1}" = 1 ] && net_flags=(--iptables=true --ip-forward=false --bridge=none)
        pid=$(launch_dockerd "$DOCKER_ROOT/data" "$RUN_ROOT/exec" "$SOCK" "$PIDFILE" "$LOG" "${net_flags[@]}")
        echo "started dockerd (pid $pid), log $LOG"
    fi
    wait_dockerd "$SOCK" "$pid" "$LOG"
}

stop_engine() {
    local pid
    nodes_down    # worker engines a test left (tests/test_swarm_multinode.py removes its own)
    if pid=$(engine_pid); then
        # A swarm a failed run left: its services would outlive the containers removed below.
        "$DOCKER" swarm leave --force >/dev/null 2>&1 && echo "left the swarm a test had left behind"
        local ids; ids=$("$DOCKER" ps -aq 2>/dev/null || true)
        if [ -n "$ids" ]; then
            echo "removing $(echo "$ids" | wc -l) leftover container(s)"
            "$DOCKER" rm -f $ids >/dev/null 2>&1 || true
        fi
        for net in $("$DOCKER" network ls -q --filter type=custom 2>/dev/null); do
            "$DOCKER" network rm "$net" >/dev/null 2>&1 || true
        done
        # Data volumes a crashed run left would outlive the secrets of its (deleted) state dir.
        local volumes; volumes=$("$DOCKER" volume ls -q 2>/dev/null || true)
        [ -n "$volumes" ] && "$DOCKER" volume rm -f $volumes >/dev/null 2>&1 || true
        kill -TERM "$pid"
        for _ in $(seq 1 200); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && { echo "dockerd ignored SIGTERM for 20 s: SIGKILL"; kill -KILL "$pid"; }
        echo "stopped dockerd (pid $pid)"
    fi
    rm -f "$PIDFILE"
    # Our engine's helpers (containerd, shims, docker-proxy) name our exec root: stop any left, by pid.
    for pid in $(pgrep -f -- "$RUN_ROOT/exec" 2>/dev/null || true); do
        kill -TERM "$pid" 2>/dev/null && echo "stopped leftover engine helper (pid $pid)"
    done
    # Mounts under our roots (overlay layers, network namespaces), deepest first.
    awk -v a="$RUN_ROOT" -v b="$DOCKER_ROOT/data" 'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/mounts \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    cleanup_network
    rm -rf "$RUN_ROOT"    # sockets and runtime state only; images and build cache stay in $DOCKER_ROOT
}

cleanup_network() {   # remove only what appeared since the snapshot and looks like Docker's
    [ -f "$SNAP/links" ] || return 0
    local removed=0
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | sort \
                  | comm -13 "$SNAP/links" - | grep -E '^(docker0|docker_gwbridge|br-[0-9a-f]{12}|veth[0-9a-f]+)$' || true); do
        ip link delete "$link" 2>/dev/null && removed=$((removed + 1))
    done
    if command -v iptables >/dev/null; then
        for table in filter nat; do
            local now; now=$(iptables -w -t "$table" -S 2>/dev/null || true)
            # Rules Docker added (they name a DOCKER chain or a Docker bridge), newest first.
            { comm -13 <(grep '^-A ' "$SNAP/iptables-$table" | sort) <(echo "$now" | grep '^-A ' | sort) \
                | grep -E 'DOCKER|docker0|docker_gwbridge|br-[0-9a-f]{12}' || true; } | tac | while read -r rule; do
                    eval iptables -w -t "$table" "-D ${rule#-A }" 2>/dev/null || true
                done
            local chains
            chains=$(comm -13 <(grep '^-N ' "$SNAP/iptables-$table" | sort || true) \
                              <(echo "$now" | grep '^-N ' | sort || true) | awk '$2 ~ /^DOCKER/ {print $2}')
            for chain in $chains; do iptables -w -t "$table" -F "$chain" 2>/dev/null || true; done
            for chain in $chains; do
                iptables -w -t "$table" -X "$chain" 2>/dev/null && removed=$((removed + 1))
            done
            # Policies Docker changed (FORWARD -> DROP when it turns forwarding on).
            { grep '^-P ' "$SNAP/iptables-$table" || true; } | while read -r _ chain policy; do
                iptables -w -t "$table" -P "$chain" "$policy" 2>/dev/null || true
            done
        done
    fi
    if [ -s "$SNAP/ip_forward" ]; then
        sysctl -qw "net.ipv4.ip_forward=$(cat "$SNAP/ip_forward")" 2>/dev/null || true
    fi
    left=$(ip -o link show 2>/dev/null | grep -cE ': (docker0|docker_gwbridge|br-[0-9a-f]{12})[:@]' || true)
    chains=$(iptables -w -S 2>/dev/null | grep -c '^-N DOCKER' || true)
    echo "network clean-up: removed $removed link(s)/chain(s); now $left Docker bridge(s), $chains DOCKER chain(s) on this host"
    rm -rf "$SNAP"
}

# -- 2b. more nodes: a swarm of engines on this machine (tests/test_swarm_multinode.py) -------------
# The tier's engine (host network namespace) is the manager: host-mode published ports then listen
# in the host's namespace, so 127.0.0.1:PORT reaches them with no proxy, and its images are there.
# Each worker is a dockerd in its own network namespace (two engines in one namespace would both
# claim docker_gwbridge and the same iptables chains), with its own data root, exec root, socket
# and pid file, on a veth pair to a bridge on the host that carries Swarm's control (2377),
# gossip (7946) and VXLAN (4789) traffic. The workers run without iptables rules; whatever they
# make lives in their namespace and goes with it.
NODES_RUN=$RUN_ROOT/nodes
NODES_ROOT=$DOCKER_ROOT/nodes
NODES_NET=${SCALELAB_SWARM_NODES_NET:-192.168.231}     # a /24, manager .1, worker i .(10+i)
NODES_BRIDGE=scalelab-br0
NODE_PREFIX=scalelab-w                                  # netns and host-side veth of worker i

nodes_up() {   # nodes_up N [IMAGE...]: N workers joined to a swarm the tier's engine manages
    local n=${1:?usage: nodes-up N [IMAGE...]}; shift
    local pid i; pid=$(engine_pid) || die "the tier's engine is not running (docker-tier.sh start)"
    [ "$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')" = inactive ] \
        || die "the tier's engine is already in a swarm: cannot make it the manager of a new one"
    ip -o addr show | grep -q " $NODES_NET\." && die "$NODES_NET.0/24 is in use on this host (SCALELAB_SWARM_NODES_NET=...)"
    nodes_down >/dev/null 2>&1 || true         # what a killed run left
    mkdir -p "$NODES_RUN" "$NODES_ROOT"
    ip link add "$NODES_BRIDGE" type bridge
    ip addr add "$NODES_NET.1/24" dev "$NODES_BRIDGE"
    ip link set "$NODES_BRIDGE" up
    local pids=()
    for i in $(seq 1 "$n"); do
        local name=$NODE_PREFIX$i run=$NODES_RUN/w$i root=$NODES_ROOT/w$i
        mkdir -p "$run" "$root"
        ip netns add "$name"
        ip link add "$name" type veth peer name eth0 netns "$name"
        ip link set "$name" master "$NODES_BRIDGE" up
        ip -n "$name" addr add "$NODES_NET.$((10 + i))/24" dev eth0
        ip -n "$name" link set eth0 up
        ip -n "$name" link set lo up
        pids+=("$(launch_dockerd "$root/data" "$run/exec" "$run/docker.sock" "$run/dockerd.pid" "$root/dockerd.log" \
                  --netns "$name" --hostname "worker$i" \
                  --iptables=false --ip6tables=false --ip-forward=false --bridge=none)")
    done
    for i in $(seq 1 "$n"); do
        wait_dockerd "$NODES_RUN/w$i/docker.sock" "${pids[$((i - 1))]}" "$NODES_ROOT/w$i/dockerd.log" >/dev/null
    done
    echo "started $n worker engine(s) in network namespaces ${NODE_PREFIX}1..$NODE_PREFIX$n (pids ${pids[*]})"
    # Published ports on the manager listen on 127.0.0.1 only, as in a swarm SwarmStack.up makes.
    "${SCALELAB_PYTHON:-$ROOT/.venv/bin/python}" -m stack.swarm gateway-bridge
    "$DOCKER" swarm init --advertise-addr "$NODES_NET.1" --listen-addr "$NODES_NET.1:2377" >/dev/null
    touch "$NODES_RUN/manager-in-swarm"
    local token; token=$("$DOCKER" swarm join-token -q worker)
    for i in $(seq 1 "$n"); do
        DOCKER_HOST=unix://$NODES_RUN/w$i/docker.sock "$DOCKER" swarm join --token "$token" \
            --advertise-addr "$NODES_NET.$((10 + i))" "$NODES_NET.1:2377" >/dev/null &
    done
    wait_all "swarm join"
    # No registry: the images leave the manager with `docker save` and enter each worker with `docker load`.
    if [ $# -gt 0 ]; then
        "$DOCKER" save "$@" > "$NODES_ROOT/images.tar"
        for i in $(seq 1 "$n"); do
            DOCKER_HOST=unix://$NODES_RUN/w$i/docker.sock "$DOCKER" load -q -i "$NODES_ROOT/images.tar" >/dev/null &
        done
        wait_all "docker load"
        rm -f "$NODES_ROOT/images.tar"
        echo "loaded $* into every worker"
    fi
    for _ in $(seq 1 300); do
        [ "$("$DOCKER" node ls --format '{{.Status}}' | grep -c '^Ready$')" = $((n + 1)) ] && break
        sleep 0.1
    done
    "$DOCKER" node ls
}

wait_all() {   # wait_all WHAT: wait for every background job; die if one failed
    local failed=0 job
    for job in $(jobs -p); do wait "$job" || failed=1; done
    [ $failed = 0 ] || die "$1 failed on a worker"
}

nodes_down() {   # stop the workers (by pid), leave the swarm nodes_up made, remove namespaces, links, mounts
    local f pid
    for f in "$NODES_RUN"/w*/dockerd.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 150); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            [ -d "/proc/$pid" ] && kill -KILL "$pid"
            echo "stopped worker dockerd (pid $pid)"
        fi
    done
    if [ -f "$NODES_RUN/manager-in-swarm" ] && engine_pid >/dev/null; then
        "$DOCKER" swarm leave --force >/dev/null 2>&1 && echo "the tier's engine left the swarm it managed"
    fi
    # The workers' helpers (containerd, shims) name their exec roots: stop any left, by pid.
    for pid in $(pgrep -f -- "$NODES_RUN/" 2>/dev/null || true); do
        kill -TERM "$pid" 2>/dev/null && echo "stopped leftover worker helper (pid $pid)"
    done
    awk -v a="$NODES_RUN" -v b="$NODES_ROOT" 'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/mounts \
        | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NODE_PREFIX[0-9]+\$" || true); do
        ip netns delete "$ns" && echo "removed network namespace $ns"
    done
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 \
                  | grep -E "^($NODE_PREFIX[0-9]+|$NODES_BRIDGE)\$" || true); do
        ip link delete "$link" 2>/dev/null && echo "removed link $link"
    done
    rm -rf "$NODES_RUN" "$NODES_ROOT"
}

# -- 3. images ---------------------------------------------------------------------------
base_image() {
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base image $BASE_IMAGE exists (cached in $DOCKER_ROOT)"
        return 0
    fi
    local sources=/etc/apt/sources.list.d/debian.sources mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    local rootfs; rootfs=$(mktemp -d "$DOCKER_ROOT/rootfs.XXXXXX")
    echo "debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$DOCKER_ROOT/debootstrap.log" 2>&1 \
        || { tail -n 20 "$DOCKER_ROOT/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
    if [ -f "$sources" ]; then   # the same suites as debian:bookworm-slim: updates and security too
        cp "$sources" "$rootfs/etc/apt/sources.list.d/debian.sources"
        rm -f "$rootfs/etc/apt/sources.list"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    echo "imported $BASE_IMAGE"
}

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
        .venv/bin/pip install -q -r requirements.txt
        .venv/bin/pip install -q --no-deps -e .
    fi
}

# -- the tier ----------------------------------------------------------------------------
# Lessons run by the tier on the docker backend, every one (SCALELAB_DOCKER_LESSONS overrides the
# list), and on the swarm backend (SCALELAB_SWARM_LESSONS) every one but lesson 2: among them 1 (a
# paused task), 3 (strategies, weights and a consistent hash over each task's address, written into
# the running nginx; a killed task), 4 (replica settings by ALTER SYSTEM), 5 (PgBouncer pools), 6
# (shard servers as services, users moved online with the routing pushed into every task), 7 (a
# killed Redis task that Swarm replaces; config pushed into tasks) and 8 (profiles from one task's own
# port). Lesson 2 passes on swarm too (four CPU limits, each a rolling update of the app service: 21
# cells in 162 s in a full tier run) but takes CI past its 45 minutes on this 2-core machine:
# SCALELAB_SWARM_LESSONS="lessons/0[1-8]_*.ipynb" runs it.
# The lab solutions run on docker, every one (SCALELAB_DOCKER_SOLUTIONS): lab 3's ip_hash checks send
# from several 127.x addresses, which nginx in a container sees through Docker's port proxy as one; it
# takes them from X-Forwarded-For instead (stack.render.nginx.PROXY_NETWORKS). On swarm, the tier runs
# those of labs 3 and 6 (SCALELAB_SWARM_SOLUTIONS: nginx's observed split; the ring checked row by row
# on the swarm's shard servers); the others pass there too (SCALELAB_SWARM_SOLUTIONS=
# "solutions/0[1-8]_*.ipynb": 76 cells in 146 s here) and are left out for the same budget.
DOCKER_LESSONS="lessons/0[1-8]_*.ipynb"
DOCKER_SOLUTIONS="solutions/0[1-8]_*.ipynb"
SWARM_LESSONS="lessons/01_*.ipynb lessons/0[3-8]_*.ipynb"
SWARM_SOLUTIONS="solutions/03_*.ipynb solutions/06_*.ipynb"

run_tier() {
    finish() {
        local status=$?
        trap - EXIT INT TERM
        phase "stop engine + clean up"
        stop_engine || status=1
        report
        exit $status
    }
    trap finish EXIT INT TERM
    phase "install packages"
    install_packages
    phase "start dockerd"
    start_engine
    phase "base image (debootstrap)"
    base_image
    ensure_venv
    phase "build images"
    SCALELAB_DOCKER_BASE_IMAGE=$BASE_IMAGE .venv/bin/python -m stack.docker build
    phase "tests (tests/test_docker*.py, tests/test_swarm*.py)"
    mkdir -p test-artifacts
    SCALELAB_DOCKER_TESTS=1 SCALELAB_DOCKER_BASE_IMAGE=$BASE_IMAGE \
        SCALELAB_DOCKER_TIMINGS="$ROOT/test-artifacts/docker-timings.json" \
        SCALELAB_SWARM_TIMINGS="$ROOT/test-artifacts/swarm-timings.json" \
        SCALELAB_SWARM_MULTINODE_TIMINGS="$ROOT/test-artifacts/swarm-multinode-timings.json" \
        .venv/bin/pytest tests/test_docker*.py tests/test_swarm*.py "$@"
    phase "lessons + solutions on docker (nbval)"
    # The same lesson notebooks, unchanged, on the compose backend: SCALELAB_BACKEND=docker makes
    # every stack.get_stack() in them a DockerStack (own state dir and ports: stack.pytest_env).
    # A failed notebook fails the tier, after the other backend's notebooks have run too.
    local lessons_failed=""
    SCALELAB_DOCKER_TESTS=1 SCALELAB_BACKEND=docker SCALELAB_DOCKER_BASE_IMAGE=$BASE_IMAGE \
        .venv/bin/pytest ${SCALELAB_DOCKER_LESSONS:-$DOCKER_LESSONS} ${SCALELAB_DOCKER_SOLUTIONS-$DOCKER_SOLUTIONS} \
        || lessons_failed+=" docker"
    phase "lessons + solutions on swarm (nbval)"
    # The same notebooks on the swarm backend: a one-node swarm the stack initialises and leaves.
    SCALELAB_DOCKER_TESTS=1 SCALELAB_BACKEND=swarm SCALELAB_DOCKER_BASE_IMAGE=$BASE_IMAGE \
        .venv/bin/pytest ${SCALELAB_SWARM_LESSONS:-$SWARM_LESSONS} ${SCALELAB_SWARM_SOLUTIONS-$SWARM_SOLUTIONS} \
        || lessons_failed+=" swarm"
    for kind in docker swarm swarm-multinode; do
        if [ -f "test-artifacts/$kind-timings.json" ]; then
            echo "== $kind stack timings (s): $(tr -d ' \n' < "test-artifacts/$kind-timings.json")"
        fi
    done
    [ -z "$lessons_failed" ] || die "lesson notebooks failed on:$lessons_failed (see above)"
}

case "${1:-run}" in
    run) shift || true; run_tier "$@" ;;
    start) install_packages; start_engine; base_image; echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    base-image) base_image ;;
    stop) stop_engine ;;
    nodes-up) shift; nodes_up "$@" ;;
    nodes-down) nodes_down ;;
    *) die "usage: $0 [run [PYTEST ARGS]] | start | base-image | stop | nodes-up N [IMAGE...] | nodes-down" ;;
esac
