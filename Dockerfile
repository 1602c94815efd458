# pushwire images, one Dockerfile with a target per service:
#
#   docker build --target worker -t pushwire-worker .   FastCGI worker on 0.0.0.0:9000
#   docker build --target relay  -t pushwire-relay  .   WebSocket relay on 0.0.0.0:9100
#   docker build --target nginx  -t pushwire-nginx  .   nginx rendering nginx/pushwire.conf.in at start
#   docker build --target redis  -t pushwire-redis  .   redis:7, append-only, noeviction, optional AUTH
#
# docker-compose.yml builds all four; docs/DEPLOY.md explains the settings.
# Binaries are built on debian:bookworm and run on debian:bookworm-slim with
# only the shared libraries they link (hiredis 0.14, jansson, libjwt, libcrypto) plus
# curl for the health checks; every pushwire process runs as the unprivileged
# user "pushwire" (uid 10001). The binaries speak FastCGI themselves
# (src/fcgi_proto.c): only libfcgi-dev's fastcgi.h (the protocol's
# constants) is used at build time, and no libfcgi at run time.

# ---- build ----------------------------------------------------------------------
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential make libfcgi-dev libjansson-dev libhiredis-dev libssl-dev libjwt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY src/ src/
RUN make -j"$(nproc)" all \
 && strip --strip-debug build/pushwire-worker build/pushwire-relay \
 && build/pushwire-worker --help >/dev/null \
 && build/pushwire-relay --help >/dev/null

# ---- common runtime base ---------------------------------------------------------
FROM debian:bookworm-slim AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pushwire \
 && useradd --system --uid 10001 --gid pushwire --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pushwire
COPY docker/healthcheck /usr/local/bin/pushwire-healthcheck

# Shared libraries of the two binaries (Debian 12 runtime package names):
# libhiredis.so.0.14 (libhiredis0.14), libjansson.so.4 (libjansson4),
# libjwt.so.0 (libjwt0, tokens for private channels, with its libb64.so.0d
# from libb64-0d) and libcrypto.so.3 (libssl3) for both (curl needs libssl3
# too). The
# compose test checks with ldd inside the built images that this is exactly
# what they link.
FROM base AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libhiredis0.14 libjansson4 libjwt0 libb64-0d libssl3 \
 && rm -rf /var/lib/apt/lists/*

# ---- worker: POST /chat, GET /status (long-poll, EventSource), GET /healthz ------
FROM runtime AS worker
COPY --from=build /src/build/pushwire-worker /usr/local/bin/pushwire-worker
# Every flag has an environment variable (pushwire-worker --help).
ENV PW_LISTEN=0.0.0.0:9000 \
    PW_METRICS=127.0.0.1:9001 \
    REDIS_URL=redis://redis:6379
USER pushwire
EXPOSE 9000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pushwire-healthcheck", "worker"]
ENTRYPOINT ["pushwire-worker"]

# ---- relay: WebSocket upgrades of /status and /ws ----------------------------------
FROM runtime AS relay
COPY --from=build /src/build/pushwire-relay /usr/local/bin/pushwire-relay
ENV PW_RELAY_LISTEN=0.0.0.0:9100 \
    PW_METRICS=127.0.0.1:9101 \
    REDIS_URL=redis://redis:6379
USER pushwire
EXPOSE 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pushwire-healthcheck", "relay"]
ENTRYPOINT ["pushwire-relay"]

# ---- nginx: the page, and the routes to workers and relays ----------------------
# The configuration is rendered at container start from the environment by
# nginx/render, from the same template as `make run` and the tests, and
# rendered again (then nginx reloaded) by docker/nginx-start whenever the
# addresses behind WORKER_ADDRS/RELAY_ADDRS change: no manual reload after
# scaling or recreating workers and relays.
FROM base AS nginx
# (policy-rc.d: the package must not try to start a system nginx while building)
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
 && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && mkdir -p /run/pushwire \
 && chown pushwire:pushwire /run/pushwire \
 && ln -sf /run/pushwire/nginx.conf /etc/nginx/nginx.conf
COPY nginx/ /opt/pushwire/nginx/
COPY html/ /opt/pushwire/html/
COPY docker/nginx-start /usr/local/bin/pushwire-nginx-start
ENV LISTEN=0.0.0.0:8080 \
    WORKER_ADDRS=worker:9000 \
    RELAY_ADDRS=relay:9100 \
    ERROR_LOG=stderr
USER pushwire
EXPOSE 8080
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["pushwire-healthcheck", "nginx"]
ENTRYPOINT ["pushwire-nginx-start"]

# ---- redis: the official image, started by docker/redis-start ---------------------
# Last, so that the classic builder (which builds every stage before the
# target) does not pull redis:7 for the other targets. (The compose test,
# which has no registry, builds a stand-in redis:7: tests/docker/redis.)
FROM redis:7 AS redis
COPY docker/redis-start /usr/local/bin/pushwire-redis-start
COPY docker/sentinel-start /usr/local/bin/pushwire-sentinel-start
COPY docker/cluster-start /usr/local/bin/pushwire-cluster-start
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \
    CMD ["sh", "-c", "REDISCLI_AUTH=\"${REDIS_PASSWORD:-}\" redis-cli ping | grep -q PONG"]
ENTRYPOINT ["pushwire-redis-start"]
CMD []
