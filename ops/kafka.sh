#!/bin/sh
# kafka.sh - one Apache Kafka 4.x broker on 127.0.0.1 for the tests, `make chaos` and anyone
# trying the worker by hand: a single-node KRaft broker+controller run with OpenJDK 17 from
# the jars ops/install-deps.sh copied from Maven Central into .kafka/libs (ops/kafka/pom.xml
# pins the version).
#
#   sh ops/kafka.sh start [--dir DIR] [--owner PID] [--tls-cert PEM --tls-key KEY]
#       Starts the broker in DIR (default tmp/kafka) and prints, once it serves:
#         bootstrap.servers=127.0.0.1:PORT     PLAINTEXT, unauthenticated, for admin and tests
#         sasl_ssl.servers=127.0.0.1:PORT      only with --tls-cert/--tls-key: SASL_SSL with
#                                              SCRAM-SHA-512 users and ACLs (the authorizer is on;
#                                              the PLAINTEXT listener's anonymous user is a
#                                              super user, so keep it on loopback)
#       A DIR that holds a broker already (its ports, its log) is started again as it was:
#       that is how `make chaos` restarts a broker it killed. With --owner, the broker is
#       killed when process PID exits (a test run that dies leaves no broker behind).
#   sh ops/kafka.sh stop [--dir DIR]   SIGTERM (a controlled shutdown), SIGKILL after 30 s
#   sh ops/kafka.sh kill [--dir DIR]   SIGKILL at once (the chaos run's broker crash)
#
# Topics are never created automatically: the worker and `perflow submit` name a missing
# topic. Ports are free ones picked at the first start; every wait is bounded
# (KAFKA_START_TIMEOUT, default 120 s, for the broker to serve). KAFKA_HEAP (default 512m)
# is the JVM heap: small, as several brokers may share a 2-core machine.
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIBS=$ROOT/.kafka/libs
cmd=${1:-}
[ $# -gt 0 ] && shift
dir=$ROOT/tmp/kafka owner="" cert="" key=""
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --owner) owner=$2; shift 2 ;;
        --tls-cert) cert=$2; shift 2 ;;
        --tls-key) key=$2; shift 2 ;;
        *) echo "kafka.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
die() {
    echo "kafka.sh: $*" >&2
    exit 1
}

# free_port: prints a TCP port nobody listens on at 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# alive PIDFILE: whether the process the file names runs.
alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# configure: writes DIR/server.properties with fresh ports and formats DIR/data.
configure() {
    mkdir -p "$dir/data"
    port=$(free_port) cport=$(free_port)
    listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    advertised="PLAINTEXT://127.0.0.1:$port"
    if [ -n "$cert" ]; then
        sport=$(free_port)
        listeners="$listeners,SASL_SSL://127.0.0.1:$sport"
        advertised="$advertised,SASL_SSL://127.0.0.1:$sport"
        # Kafka reads a PEM key store: the unencrypted PKCS#8 key, then the certificate.
        cat "$key" "$cert" > "$dir/keystore.pem"
        chmod 600 "$dir/keystore.pem"
    fi
    cat > "$dir/server.properties" <<EOF
# written by ops/kafka.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
EOF
    if [ -n "$cert" ]; then
        cat >> "$dir/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/keystore.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
    fi
    # A cluster id is 16 random bytes in URL-safe base64 without padding. One
    # starting with '-' (1 in 64) reads as an option to StorageTool's parser
    # ("--cluster-id: expected one argument"): draw again.
    cluster=-
    while [ "${cluster#-}" != "$cluster" ]; do
        cluster=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    java_run kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
        > "$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting $dir/data failed"; }
}

# java_run CLASS ARG...: runs a Kafka main class with the small JVM settings. C1 only
# (TieredStopAtLevel=1) and the serial collector: a broker here serves a few test clients,
# and a quick start matters more on two shared cores than peak throughput.
java_run() {
    ${exec:-} java -Xms64m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Djava.awt.headless=true -Dkafka.logs.dir="$dir" \
        -Dlog4j2.configurationFile="$ROOT/ops/kafka/log4j2.properties" \
        -cp "$LIBS/*" "$@"
}

# print_servers: the listeners' addresses, from DIR/server.properties.
print_servers() {
    adv=$(sed -n 's/^advertised.listeners=//p' "$dir/server.properties")
    echo "$adv" | tr ',' '\n' | sed -n 's#^PLAINTEXT://#bootstrap.servers=#p; s#^SASL_SSL://#sasl_ssl.servers=#p'
}

start() {
    [ -d "$LIBS" ] || die "Kafka is not installed in $LIBS: run 'sh ops/install-deps.sh'"
    command -v java > /dev/null || die "java (OpenJDK 17) is not installed: run 'sh ops/install-deps.sh'"
    if alive "$dir/broker.pid"; then
        print_servers
        return
    fi
    [ -n "$cert" ] && { [ -r "$cert" ] && [ -r "$key" ] || die "--tls-cert and --tls-key name readable files"; }
    [ -f "$dir/server.properties" ] || configure
    rm -f "$dir/started"
    # setsid: the broker leads a process group of its own, which stop and the tests'
    # clean-up signal; its output goes to DIR/broker.out, its log to DIR/server.log.
    # The shell that writes the pid file becomes the JVM (exec all the way down).
    : > "$dir/server.log"
    setsid sh -c 'echo $$ > "$1/broker.pid"; exec sh "$2" exec --dir "$1"' sh "$dir" "$ROOT/ops/kafka.sh" \
        > "$dir/broker.out" 2>&1 < /dev/null &
    waited=0
    while [ ! -s "$dir/broker.pid" ] && [ $waited -lt 50 ]; do sleep 0.1; waited=$((waited + 1)); done
    pid=$(cat "$dir/broker.pid")
    if [ -n "$owner" ]; then
        # The watchdog: kills the broker's group once the owner has gone.
        setsid sh -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
                      kill -KILL "-$2" 2>/dev/null' sh "$owner" "$pid" > /dev/null 2>&1 < /dev/null &
    fi
    limit=${KAFKA_START_TIMEOUT:-120} waited=0
    until grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/broker.out" "$dir/server.log" >&2
            die "the broker exited while starting (logs in $dir)"
        fi
        if [ $waited -ge $((limit * 5)) ]; then
            kill -KILL "-$pid" 2>/dev/null || true
            die "the broker did not start within ${limit}s (logs in $dir)"
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    print_servers
}

# stop_with SIGNAL SECONDS: sends SIGNAL to the broker's group and waits for it to end,
# SIGKILL after SECONDS.
stop_with() {
    alive "$dir/broker.pid" || { rm -f "$dir/broker.pid"; return 0; }
    pid=$(cat "$dir/broker.pid")
    kill "-$1" "-$pid" 2>/dev/null || true
    # A killed JVM takes a moment to go: wait for it (its ports are free only then),
    # SIGKILL after SECONDS, and give up 10 s later.
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
        [ $waited -eq $(($2 * 10)) ] && kill -KILL "-$pid" 2>/dev/null
        [ $waited -ge $(($2 * 10 + 100)) ] && die "the broker (pid $pid) did not exit"
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$dir/broker.pid"
}

case $cmd in
    start) start ;;
    stop) stop_with TERM 30 ;;
    kill) stop_with KILL 5 ;;
    exec) exec=exec java_run kafka.Kafka "$dir/server.properties" ;;  # start's broker process
    *) echo "usage: sh ops/kafka.sh start|stop|kill [--dir DIR] [--owner PID] [--tls-cert PEM --tls-key KEY]" >&2
       exit 2 ;;
esac
