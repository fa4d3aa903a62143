#!/usr/bin/env bash
# Installs a pinned Apache Kafka broker (KRaft, single node) from Maven Central into
# .tools/kafka-<version>/ for kubetrail's integration tests (kubetrail-testkit's `KafkaBroker`
# formats the storage and starts it on free ports) and `just kafka`. Nothing is compiled: Maven
# resolves the broker's jars (scripts/kafka/pom.xml) and they are copied to libs/; the
# classpath is libs/*. A second run does nothing. Needs Java 17+ and Maven with Maven Central.
#
# Prints the install directory on its last line. Environment: KAFKA_VERSION (default below).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
version="${KAFKA_VERSION:-4.1.1}"
dir="$root/.tools/kafka-$version"

done_marker="$dir/.installed"
if [[ -f "$done_marker" ]]; then
    echo "kafka: $dir already installed" >&2
    echo "$dir"
    exit 0
fi
for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-kafka: $tool is needed (Java 17+ and Maven reaching Maven Central)" >&2
        exit 1
    fi
done
mkdir -p "$root/.tools"
# Serialise concurrent installs (several test binaries may ask at once).
exec 9>"$dir.lock"
flock 9
if [[ -f "$done_marker" ]]; then echo "$dir"; exit 0; fi

start=$(date +%s)
rm -rf "$dir"
mkdir -p "$dir/libs"
mvn -q -B -f "$root/scripts/kafka/pom.xml" \
    -Dmaven.repo.local="$root/.tools/m2" \
    -Dkafka.version="$version" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir/libs" >&2
if [[ ! -f "$dir/libs/kafka_2.13-$version.jar" ]]; then
    echo "install-kafka: kafka_2.13-$version.jar was not resolved" >&2
    exit 1
fi
cat > "$dir/log4j2.properties" <<'LOG'
# Broker logs for tests: warnings and errors (and the start line) to stdout, which the harness
# writes to a file.
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
LOG
touch "$done_marker"
echo "kafka: installed $dir ($(ls "$dir/libs" | wc -l) jars) in $(( $(date +%s) - start )) s" >&2
echo "$dir"
