#!/usr/bin/env bash
# Pushpin comparison anchor: Debian's pushpin 1.36 (condure, pushpin-proxy,
# pushpin-handler) in front of backend.js, a GRIP backend in Node that serves
# SPEC.md's endpoints (long-poll, EventSource, WebSocket-over-HTTP, POST /chat),
# so bench/loadgen drives it with the pushwire flavour.
#
#   run.sh start PORT    Pushpin on 127.0.0.1:PORT, its publish API on PORT+1,
#                        the backend on a free port; both ports must be free
#   run.sh stop  PORT
#
# Everything (config, routes, pids, logs) lives in /tmp/pushpin-anchor-PORT.
# Settings that differ from Debian's /etc/pushpin/pushpin.conf, each said:
#   message_rate 2500 -> 1000000 and message_hwm 25000 -> 1000000: the
#     defaults pace deliveries at 2,500 a second (4 s for one message to
#     10,000 subscribers); a user who benchmarks fan-out raises them;
#   client_maxconn 50000 -> 120000; log_level 2 -> 1; IPC sockets in the run
#     directory instead of fixed TCP ports (several instances side by side);
#   zurl (the proxy's client to the backend) started by the runner with its
#     sockets in the run directory (Debian expects a system zurl service).
set -eu
cmd=${1:?start|stop} port=${2:?PORT}
dir=/tmp/pushpin-anchor-$port
here=$(cd "$(dirname "$0")" && pwd)

# shellcheck source=bench/anchors/lib.sh
. "$here/../lib.sh"
stop() { stop_pidfiles "$dir/backend.pid" "$dir/pushpin.pid"; }

case $cmd in
start)
    command -v pushpin >/dev/null || { echo "pushpin is not installed (apt-get install pushpin)" >&2; exit 2; }
    command -v node >/dev/null || { echo "node is not installed (apt-get install nodejs)" >&2; exit 2; }
    stop
    rm -rf "$dir" && mkdir -p "$dir/run" "$dir/log"
    bport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    sed -e "s|^rundir=.*|rundir=$dir/run|" -e "s|^logdir=.*|logdir=$dir/log|" \
        -e "s|^http_port=.*|http_port=127.0.0.1:$port|" -e "s|^log_level=.*|log_level=1|" \
        -e "s|^client_maxconn=.*|client_maxconn=120000|" \
        -e "s|^routesfile=.*|routesfile=$dir/routes|" \
        -e "s|^push_in_spec=.*|push_in_spec=ipc://{rundir}/push-in|" \
        -e "s|^push_in_sub_specs=.*|push_in_sub_specs=ipc://{rundir}/push-in-sub|" \
        -e "s|^push_in_http_port=.*|push_in_http_port=$((port + 1))|" \
        -e "s|^command_spec=tcp.*|command_spec=ipc://{rundir}/handler-command|" \
        -e "s|^message_rate=.*|message_rate=1000000|" -e "s|^message_hwm=.*|message_hwm=1000000|" \
        -e "s|^services=.*|services=condure,zurl,pushpin-proxy,pushpin-handler|" \
        -e "s|^\[proxy\]|[proxy]\nzurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in\nzurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream\nzurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out|" \
        /etc/pushpin/pushpin.conf > "$dir/pushpin.conf"
    echo "* 127.0.0.1:$bport,over_http" > "$dir/routes"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    setsid node "$here/backend.js" "$bport" "$((port + 1))" > "$dir/log/backend.log" 2>&1 < /dev/null &
    echo $! > "$dir/backend.pid"
    setsid pushpin --config "$dir/pushpin.conf" --logfile "$dir/log/pushpin.log" > /dev/null 2>&1 < /dev/null &
    echo $! > "$dir/pushpin.pid"
    for _ in $(seq 100); do
        listening "$port" "$((port + 1))" "$bport" && exit 0
        sleep 0.1
    done
    echo "pushpin did not start: $(tail -5 "$dir/log/pushpin.log" 2>/dev/null)" >&2
    stop
    exit 1
    ;;
stop) stop ;;
*) echo "usage: run.sh start|stop PORT" >&2; exit 2 ;;
esac
