#!/usr/bin/env bash
# Backing services for kafka-retry on the local machine, without Docker: a real Redis and a real
# Apache Kafka broker (KRaft combined mode), plus an optional 3-broker Kafka cluster for fault
# tests. Redis and kcat come from apt; the Kafka broker is run from its Maven Central jars
# (scripts/kafka/pom.xml), downloaded once into a cache folder.
#
# Usage: scripts/services.sh COMMAND
#   up              install what is missing, start Redis and one Kafka broker, wait until both
#                   answer (Redis PING, Kafka metadata and a produce); safe to repeat
#   down            stop what `up` started; safe when nothing runs
#   status          print whether Redis and Kafka are up; exit 0 if both are, 1 otherwise
#   up-cluster      start a 3-broker KRaft cluster (all three are controllers and voters) or
#                   restart its stopped nodes; wait until each node lists 3 brokers on its own
#                   port and an acks=all produce succeeds
#   down-cluster    stop that cluster: SIGTERM to all nodes at once; a node still running after
#                   15 s is killed (the last voter standing cannot finish a controlled shutdown)
#   status-cluster  print whether each cluster node is up; exit 0 if all three are
#
# Environment (defaults in brackets):
#   REDIS_PORT             Redis port, bound to 127.0.0.1 [6379]
#   KAFKA_PORT             single broker client port, 127.0.0.1 [9092]
#   KAFKA_CONTROLLER_PORT  single broker KRaft controller port [KAFKA_PORT+10001, i.e. 19093]
#   KAFKA_CLUSTER_BASE     cluster node n=1..3 listens for clients on BASE+n-1 and as controller
#                          on BASE+100+n-1 [29092: clients 29092-29094, controllers 29192-29194]
#   KAFKA_RETRY_CACHE      download cache; jars go to <cache>/kafka-4.1.1/libs
#                          [$HOME/.cache/kafka-retry]
#   KAFKA_RETRY_STATE      data, pid and log files [<repo>/.run]
#   KAFKA_JVM_OPTS         JVM flags for each broker
#                          [-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 ...]
#   SERVICES_TIMEOUT       seconds to wait for readiness before giving up [120]
#
# State folder layout (one folder per port, so instances on other ports can run side by side):
#   redis-<port>/          data/ (appendonly yes, appendfsync everysec, no RDB snapshots),
#                          redis.pid, redis.log
#   kafka-<port>/          server.properties, cluster.id, data/, kafka.pid, kafka.log
#   kafka-cluster-<base>/  cluster.id, node1/ node2/ node3/ (each laid out like kafka-<port>/)
# Log dirs are formatted on first start only; later starts reuse the data.
#
# A Redis that already answers PING on REDIS_PORT but was not started by this script (for
# example the one Debian's redis-server package starts through systemd on 6379) is used as is:
# `up` and `status` report it as external and `down` leaves it running. A Kafka port held by a
# process this script did not start is an error.
#
# Broker settings: auto.create.topics.enable=true, num.partitions=1,
# group.initial.rebalance.delay.ms=0, internal topics with one partition. Single broker:
# replication factor 1. Cluster: default.replication.factor=3, min.insync.replicas=2, internal
# topics with replication factor 3 (min ISR 2).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

KAFKA_VERSION=4.1.1 # keep in step with scripts/kafka/pom.xml
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 10001))}
KAFKA_CLUSTER_BASE=${KAFKA_CLUSTER_BASE:-29092}
CACHE_DIR=${KAFKA_RETRY_CACHE:-$HOME/.cache/kafka-retry}
STATE_DIR=${KAFKA_RETRY_STATE:-$REPO_DIR/.run}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}
SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-120}

KAFKA_HOME_DIR=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME_DIR/libs
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_LOG4J=$SCRIPT_DIR/kafka/log4j2.properties
READY_TOPIC=__kafka_retry_ready
CLUSTER_SIZE=3
STOP_GRACE=30
# Stopping a whole cluster: the last node(s) cannot finish a controlled shutdown once the other
# voters are gone (no quorum left to acknowledge it), so they are killed after this grace.
CLUSTER_STOP_GRACE=15

LOG_TAG=services
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

# The jars count as present when the broker jar is there, unless the pom they were downloaded
# with (kept next to libs/) differs from scripts/kafka/pom.xml.
kafka_jars_present() {
  [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || return 1
  [ ! -f "$KAFKA_HOME_DIR/pom.xml" ] || cmp -s "$KAFKA_POM" "$KAFKA_HOME_DIR/pom.xml"
}

# ensure_tools [redis]: redis-server/redis-cli (when asked), kcat, Java 17+ and, if the Kafka jars
# still have to be downloaded, Maven.
ensure_tools() {
  local pkgs=()
  if [ "${1:-}" = redis ] && ! { command -v redis-server && command -v redis-cli; } >/dev/null 2>&1; then
    pkgs+=(redis-server)
  fi
  command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  if ! kafka_jars_present && ! command -v mvn >/dev/null 2>&1; then
    pkgs+=(maven)
  fi
  apt_install "${pkgs[@]}"

  local version major
  version=$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  major=${version%%.*}
  if ! [[ $major =~ ^[0-9]+$ ]] || [ "$major" -lt 17 ]; then
    die "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java' is '${version:-unknown}'"
  fi
}

ensure_kafka_jars() {
  if kafka_jars_present; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to download the Kafka jars"
  log "downloading Apache Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS"
  mkdir -p "$KAFKA_HOME_DIR"
  local tmp
  tmp=$(mktemp -d "$KAFKA_HOME_DIR/.download.XXXXXX")
  cp "$KAFKA_POM" "$tmp/pom.xml"
  if ! (cd "$tmp" && mvn -B -f pom.xml \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1); then
    tail -n 40 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "Maven could not download the Kafka jars (see its output above)"
  fi
  [ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || {
    rm -rf "$tmp"
    die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
  }
  rm -rf "$KAFKA_LIBS"
  mv "$tmp/libs" "$KAFKA_LIBS"
  mv "$tmp/pom.xml" "$KAFKA_HOME_DIR/pom.xml"
  rm -rf "$tmp"
  log "$(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS"
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

# running_pid PIDFILE PATTERN: print the pid from PIDFILE if that process runs and its command
# line contains PATTERN (guards against a recycled pid).
running_pid() {
  local pidfile=$1 pattern=$2 pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# stop_pids NAME GRACE PID...: SIGTERM, wait up to GRACE seconds, then SIGKILL what is left.
stop_pids() {
  local name=$1 grace=$2 pid left waited=0
  shift 2
  [ "$#" -gt 0 ] || return 0
  log "stopping $name (pid $*)"
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    left=()
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); fi
    done
    [ "${#left[@]}" -gt 0 ] || return 0
    if [ "$waited" -ge $((grace * 5)) ]; then
      log "$name still running after ${grace}s; sending SIGKILL to ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      sleep 0.5
      return 0
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

deadline() { echo $(($(date +%s) + SERVICES_TIMEOUT)); }

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

REDIS_DIR=$STATE_DIR/redis-$REDIS_PORT

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
redis_pid() { running_pid "$REDIS_DIR/redis.pid" redis-server; }

redis_start() {
  local pid
  if pid=$(redis_pid); then
    log "Redis already running on 127.0.0.1:$REDIS_PORT (pid $pid)"
    return 0
  fi
  rm -f "$REDIS_DIR/redis.pid"
  if redis_ping; then
    log "Redis on 127.0.0.1:$REDIS_PORT was not started by this script; using it as it is"
    return 0
  fi
  if port_open "$REDIS_PORT"; then
    die "port $REDIS_PORT is taken by something that does not answer Redis PING"
  fi
  mkdir -p "$REDIS_DIR/data"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --dir "$REDIS_DIR/data" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --save '' 9>&- </dev/null
}

redis_wait() {
  local until=$1
  until redis_ping; do
    if [ "$(date +%s)" -ge "$until" ]; then
      log "Redis did not answer PING on 127.0.0.1:$REDIS_PORT within ${SERVICES_TIMEOUT}s"
      tail -n 30 "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
  log "Redis ready on 127.0.0.1:$REDIS_PORT"
}

redis_stop() {
  local pid
  if pid=$(redis_pid); then
    stop_pids Redis "$STOP_GRACE" "$pid"
  elif redis_ping; then
    log "Redis on 127.0.0.1:$REDIS_PORT was not started by this script; leaving it running"
  fi
  rm -f "$REDIS_DIR/redis.pid"
}

redis_status() {
  local pid
  if pid=$(redis_pid) && redis_ping; then
    echo "redis   up    127.0.0.1:$REDIS_PORT (pid $pid)"
  elif redis_ping; then
    echo "redis   up    127.0.0.1:$REDIS_PORT (external, not started by this script)"
  else
    echo "redis   down  127.0.0.1:$REDIS_PORT"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Kafka nodes (shared by the single broker and the cluster)
#
# A node is a folder holding server.properties, data/, kafka.pid and kafka.log. Its settings
# live in the generated server.properties, rewritten on every start.
# ---------------------------------------------------------------------------------------------

# kafka_tool CLASS ARGS...: run a short-lived Kafka command line tool (StorageTool).
kafka_tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" "$@" 9>&-
}

# cluster_id FILE: the cluster id stored in FILE, created on first use.
cluster_id() {
  local file=$1
  local id
  if [ ! -s "$file" ]; then
    mkdir -p "$(dirname "$file")"
    id=$(kafka_tool kafka.tools.StorageTool random-uuid | tail -n 1)
    [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid printed '$id', not a cluster id"
    echo "$id" >"$file"
  fi
  cat "$file"
}

kafka_node_pid() { running_pid "$1/kafka.pid" "$1/server.properties"; }
kafka_node_port() { sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*|\1|p' "$1/server.properties"; }

# kafka_write_config DIR NODE_ID PORT CONTROLLER_PORT VOTERS REPLICATION_FACTOR
kafka_write_config() {
  local dir=$1 id=$2 port=$3 cport=$4 voters=$5 rf=$6 isr=1
  if [ "$rf" -gt 1 ]; then isr=2; fi
  cat >"$dir/server.properties" <<EOF
# Generated by scripts/services.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
share.coordinator.state.topic.num.partitions=1
EOF
}

# kafka_node_start DIR NODE_ID PORT CONTROLLER_PORT VOTERS REPLICATION_FACTOR CLUSTER_ID
# Starts the node in the background unless it already runs; formats DIR/data on first start.
kafka_node_start() {
  local dir=$1 id=$2 port=$3 cport=$4 voters=$5 rf=$6 cid=$7 pid p
  mkdir -p "$dir"
  if pid=$(kafka_node_pid "$dir"); then
    log "Kafka node $id already running on 127.0.0.1:$port (pid $pid)"
    return 0
  fi
  rm -f "$dir/kafka.pid"
  for p in "$port" "$cport"; do
    if port_open "$p"; then
      die "port $p is taken by a process this script did not start (see: ss -ltnp)"
    fi
  done
  kafka_write_config "$dir" "$id" "$port" "$cport" "$voters" "$rf"
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting $dir/data (node $id, cluster $cid)"
    if ! kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1; then
      cat "$dir/format.log" >&2
      die "formatting the log dir of Kafka node $id failed"
    fi
  fi
  if [ -f "$dir/kafka.log" ]; then mv "$dir/kafka.log" "$dir/kafka.log.1"; fi
  log "starting Kafka node $id on 127.0.0.1:$port (controller 127.0.0.1:$cport)"
  local opts
  read -r -a opts <<<"$KAFKA_JVM_OPTS"
  # No job control here, so setsid runs java in place (and $! is its pid) in a session of its own.
  setsid nohup java "${opts[@]}" -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 </dev/null 9>&- &
  echo "$!" >"$dir/kafka.pid"
}

kafka_metadata() { kcat -L -b "$1" -m 2 2>/dev/null; }

# kafka_nodes_ready NODE_DIR...: every node answers metadata on its own client port and lists
# all the nodes as brokers (asking each node, not any one of them, matters right after a node
# restarts: the others keep listing it until its broker session times out).
kafka_nodes_ready() {
  local dir meta
  for dir in "$@"; do
    meta=$(kafka_metadata "127.0.0.1:$(kafka_node_port "$dir")") || return 1
    grep -qE "^ *$# brokers:" <<<"$meta" || return 1
  done
}

# kafka_wait BOOTSTRAP DEADLINE NODE_DIR...: wait until every node is ready and a message
# (acks=all) to READY_TOPIC is delivered through BOOTSTRAP. Fails early when a node process
# exits; prints the tail of each node's log on failure.
kafka_wait() {
  local bootstrap=$1 until=$2 dir
  shift 2
  while :; do
    if kafka_nodes_ready "$@" &&
      printf 'ready\n' | timeout 30 kcat -P -b "$bootstrap" -t "$READY_TOPIC" \
        -X acks=all -X message.timeout.ms=15000 >/dev/null 2>&1; then
      log "Kafka ready on $bootstrap ($# broker(s))"
      return 0
    fi
    for dir in "$@"; do
      if ! kafka_node_pid "$dir" >/dev/null; then
        log "Kafka node in $dir is not running"
        kafka_log_tails "$@"
        return 1
      fi
    done
    if [ "$(date +%s)" -ge "$until" ]; then
      log "Kafka on $bootstrap not ready within ${SERVICES_TIMEOUT}s"
      kafka_log_tails "$@"
      return 1
    fi
    sleep 1
  done
}

kafka_log_tails() {
  local dir
  for dir in "$@"; do
    log "---- last lines of $dir/kafka.log ----"
    tail -n 40 "$dir/kafka.log" >&2 2>/dev/null || true
  done
}

# kafka_nodes_stop NAME GRACE NODE_DIR...: stop the nodes together (all get SIGTERM at once).
kafka_nodes_stop() {
  local name=$1 grace=$2 dir pid pids=()
  shift 2
  for dir in "$@"; do
    if pid=$(kafka_node_pid "$dir"); then pids+=("$pid"); fi
  done
  if [ "${#pids[@]}" -eq 0 ]; then
    log "$name not running"
  else
    stop_pids "$name" "$grace" "${pids[@]}"
  fi
  for dir in "$@"; do rm -f "$dir/kafka.pid"; done
}

# kafka_node_status LABEL DIR PORT: one status line; exit 0 if the node runs and answers metadata.
kafka_node_status() {
  local label=$1 dir=$2 port=$3 pid
  if pid=$(kafka_node_pid "$dir") && kafka_metadata "127.0.0.1:$port" >/dev/null; then
    echo "$label up    127.0.0.1:$port (pid $pid)"
  elif [ -n "$pid" ]; then
    echo "$label down  127.0.0.1:$port (pid $pid runs but does not answer)"
    return 1
  else
    echo "$label down  127.0.0.1:$port"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Single broker and cluster
# ---------------------------------------------------------------------------------------------

SINGLE_DIR=$STATE_DIR/kafka-$KAFKA_PORT
CLUSTER_DIR=$STATE_DIR/kafka-cluster-$KAFKA_CLUSTER_BASE

single_start() {
  local cid
  cid=$(cluster_id "$SINGLE_DIR/cluster.id")
  kafka_node_start "$SINGLE_DIR" 1 "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" \
    "1@127.0.0.1:$KAFKA_CONTROLLER_PORT" 1 "$cid"
}

cluster_node_dirs() {
  local n
  for n in $(seq 1 "$CLUSTER_SIZE"); do echo "$CLUSTER_DIR/node$n"; done
}

cluster_bootstrap() {
  local n out=()
  for n in $(seq 1 "$CLUSTER_SIZE"); do out+=("127.0.0.1:$((KAFKA_CLUSTER_BASE + n - 1))"); done
  (IFS=,; echo "${out[*]}")
}

cluster_start() {
  local n cid voters=() voter_list
  cid=$(cluster_id "$CLUSTER_DIR/cluster.id")
  for n in $(seq 1 "$CLUSTER_SIZE"); do
    voters+=("$n@127.0.0.1:$((KAFKA_CLUSTER_BASE + 100 + n - 1))")
  done
  voter_list=$(IFS=,; echo "${voters[*]}")
  # Start every node before waiting: the quorum needs a majority of voters.
  for n in $(seq 1 "$CLUSTER_SIZE"); do
    kafka_node_start "$CLUSTER_DIR/node$n" "$n" "$((KAFKA_CLUSTER_BASE + n - 1))" \
      "$((KAFKA_CLUSTER_BASE + 100 + n - 1))" "$voter_list" 3 "$cid"
  done
}

lock_state() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 600 9 || die "another scripts/services.sh holds $STATE_DIR/.lock"
}

cmd_up() {
  local until
  ensure_tools redis
  ensure_kafka_jars
  lock_state
  until=$(deadline)
  redis_start
  single_start
  redis_wait "$until"
  kafka_wait "127.0.0.1:$KAFKA_PORT" "$until" "$SINGLE_DIR"
}

cmd_down() {
  lock_state
  kafka_nodes_stop "Kafka (127.0.0.1:$KAFKA_PORT)" "$STOP_GRACE" "$SINGLE_DIR"
  redis_stop
}

cmd_status() {
  local rc=0
  redis_status || rc=1
  kafka_node_status "kafka  " "$SINGLE_DIR" "$KAFKA_PORT" || rc=1
  return "$rc"
}

cmd_up_cluster() {
  local until dirs
  ensure_tools
  ensure_kafka_jars
  lock_state
  until=$(deadline)
  cluster_start
  mapfile -t dirs < <(cluster_node_dirs)
  kafka_wait "$(cluster_bootstrap)" "$until" "${dirs[@]}"
}

cmd_down_cluster() {
  local dirs
  lock_state
  mapfile -t dirs < <(cluster_node_dirs)
  kafka_nodes_stop "Kafka cluster ($(cluster_bootstrap))" "$CLUSTER_STOP_GRACE" "${dirs[@]}"
}

cmd_status_cluster() {
  local rc=0 n
  for n in $(seq 1 "$CLUSTER_SIZE"); do
    kafka_node_status "node$n  " "$CLUSTER_DIR/node$n" "$((KAFKA_CLUSTER_BASE + n - 1))" || rc=1
  done
  return "$rc"
}

usage() {
  sed -n '/^# Usage:/,/^#$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  up-cluster) cmd_up_cluster ;;
  down-cluster) cmd_down_cluster ;;
  status-cluster) cmd_status_cluster ;;
  *) usage ;;
esac
