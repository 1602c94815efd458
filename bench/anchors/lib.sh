# shellcheck shell=bash
# Sourced by the anchors' run.sh scripts (bash).

# stop_pidfiles FILE...: for each pid file that exists, SIGTERM its process,
# wait up to 5 s for it to go, SIGKILL it if it did not, remove the file.
stop_pidfiles() {
    local f pid
    for f in "$@"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

# listening PORT...: true when something accepts on 127.0.0.1 at every PORT.
listening() {
    local p
    for p in "$@"; do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || return 1
    done
}
