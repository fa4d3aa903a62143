#!/usr/bin/env bash
# Runs a single-node Apache Kafka broker (KRaft) for development (`just kafka`): installs the
# pinned broker (scripts/install-kafka.sh) if needed, formats a data directory on first use and
# runs the broker in the foreground on 127.0.0.1:PORT (default 9092). Ctrl-C stops it; the
# data stays in DIR (default .tools/kafka-dev) for the next run.
#
# Usage: scripts/run-kafka.sh [--dir DIR] [--port PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.tools/kafka-dev"
port=9092
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        *) echo "usage: $0 [--dir DIR] [--port PORT]" >&2; exit 2 ;;
    esac
done
home="$(bash scripts/install-kafka.sh)"
controller=$((port + 1))
mkdir -p "$dir"
cat > "$dir/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controller}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dir}/data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
CONF
java_opts=(-Xmx1g "-Dlog4j2.configurationFile=$home/log4j2.properties" -cp "$home/libs/*")
if [[ ! -f "$dir/data/meta.properties" ]]; then
    java "${java_opts[@]}" kafka.tools.StorageTool format -t a3VidGV0cmFpbC1kZXZlbG9w \
        -c "$dir/server.properties"
fi
echo "kafka: 127.0.0.1:${port} (data in $dir/data)" >&2
exec java "${java_opts[@]}" kafka.Kafka "$dir/server.properties"
