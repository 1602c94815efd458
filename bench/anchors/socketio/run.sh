#!/usr/bin/env bash
# Socket.IO comparison anchor: Socket.IO 4.8 with @socket.io/redis-adapter 8.3
# (npm; the versions are pinned by package-lock.json), two Node worker
# processes under Node's cluster module, and a Redis of its own.
#
#   run.sh start PORT [WORKERS]   Socket.IO on 127.0.0.1:PORT, its Redis on
#                                 PORT+1 (both must be free); WORKERS default 2
#   run.sh stop  PORT
#
# The first start installs the packages into node_modules here (npm ci, from
# npm's registry). Everything else (pids, logs) lives in /tmp/socketio-anchor-PORT.
set -eu
cmd=${1:?start|stop} port=${2:?PORT} workers=${3:-2}
dir=/tmp/socketio-anchor-$port
here=$(cd "$(dirname "$0")" && pwd)

# shellcheck source=bench/anchors/lib.sh
. "$here/../lib.sh"
stop() { stop_pidfiles "$dir/server.pid" "$dir/redis.pid"; }

case $cmd in
start)
    command -v node >/dev/null || { echo "node is not installed (apt-get install nodejs)" >&2; exit 2; }
    command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 2; }
    if [ ! -d "$here/node_modules/socket.io" ]; then
        command -v npm >/dev/null || { echo "npm is not installed (apt-get install npm)" >&2; exit 2; }
        (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) >&2
    fi
    stop
    rm -rf "$dir" && mkdir -p "$dir"
    redis-server --port "$((port + 1))" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log"
    for _ in $(seq 50); do listening "$((port + 1))" && break; sleep 0.1; done
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    setsid node "$here/server.js" "$port" "$((port + 1))" "$workers" > "$dir/server.log" 2>&1 < /dev/null &
    echo $! > "$dir/server.pid"
    for _ in $(seq 100); do
        listening "$port" && exit 0
        sleep 0.1
    done
    echo "socket.io did not start: $(tail -5 "$dir/server.log" 2>/dev/null)" >&2
    stop
    exit 1
    ;;
stop) stop ;;
*) echo "usage: run.sh start|stop PORT [WORKERS]" >&2; exit 2 ;;
esac
