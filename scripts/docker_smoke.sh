#!/usr/bin/env bash
# Build the Docker image, run it, and check that it really serves:
# /healthz answers, POST /generate?label=5 returns a PNG, the container runs as
# a non-root user and its HEALTHCHECK turns healthy.
#
#   bash scripts/docker_smoke.sh            # from the repository root
#
# Uses a running Docker engine if there is one; otherwise (as root) installs
# docker.io and starts a private dockerd, stopped again on exit. The base image
# is python:3.11-slim when it can be pulled; where no container registry is
# reachable, a stand-in is made locally with debootstrap (Debian bookworm ships
# Python 3.11), the recipe of the workplace's docker-smoke tool.
#
# Environment: HOST_PORT (18000), BASE_IMAGE (skip the pull/stand-in logic),
# SMOKE_WORK (/tmp/digitgen-smoke; short: dockerd's socket paths must be short).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST_PORT=${HOST_PORT:-18000}
WORK=${SMOKE_WORK:-/tmp/digitgen-smoke}
IMG=digitgen:smoke
NAME=digitgen-smoke-$$
LOCAL_BASE=digitgen-localbase:bookworm
DOCKERD_PID=""
mkdir -p "$WORK"
t0=$(date +%s)
say() { echo "[docker-smoke +$(( $(date +%s) - t0 ))s] $*"; }

cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    umount "$WORK/exec/netns/default" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# ---- 1. a Docker engine -----------------------------------------------------
wait_docker() { for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "no Docker engine answers and we are not root to start one" >&2; exit 1; }
  if ! command -v dockerd >/dev/null; then
    say "installing docker.io"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  for driver in overlay2 vfs; do  # vfs works anywhere but is slower
    dockerd --storage-driver="$driver" --iptables=false --data-root "$WORK/data-$driver" \
      --exec-root "$WORK/exec" -H unix:///var/run/docker.sock >"$WORK/dockerd-$driver.log" 2>&1 &
    DOCKERD_PID=$!
    if wait_docker; then break; fi
    kill "$DOCKERD_PID" 2>/dev/null || true; wait "$DOCKERD_PID" 2>/dev/null || true; DOCKERD_PID=""
  done
  [ -n "$DOCKERD_PID" ] || { echo "dockerd would not start; see $WORK/dockerd-*.log" >&2; exit 1; }
fi
say "engine ready"

# ---- 2. base image ------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim
  else
    BASE_IMAGE=$LOCAL_BASE
    if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
      say "no registry: making a local python:3.11-slim stand-in with debootstrap"
      command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
      MIRROR=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2}';
                  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                    awk '/^deb /{for(i=2;i<=NF;i++) if($i ~ /^https?:/){print $i; break}}'; } |
                awk '!/-security/' | head -n1 ) || true
      [ -n "$MIRROR" ] || { echo "no Debian mirror configured in /etc/apt" >&2; exit 1; }
      RFS="$WORK/rootfs"; rm -rf "$RFS"
      debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        bookworm "$RFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1
      rm -f "$RFS"/usr/lib/python3*/EXTERNALLY-MANAGED   # like python:3.11-slim: pip as root is allowed
      if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then  # same extra CAs as the host
        cp /usr/local/share/ca-certificates/*.crt "$RFS/usr/local/share/ca-certificates/"
        chroot "$RFS" update-ca-certificates >/dev/null
      fi
      chroot "$RFS" apt-get clean; rm -rf "$RFS"/var/lib/apt/lists/*
      tar -C "$RFS" -c . | docker import \
        -c 'ENV LANG=C.UTF-8' -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' -c 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
      rm -rf "$RFS"
    fi
  fi
fi
say "base image: $BASE_IMAGE"

# ---- 3. build (host network: a private dockerd without iptables has no NAT) ----
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMG" . >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log" >&2; echo "docker build failed" >&2; exit 1; }
say "built $IMG ($(docker image inspect -f '{{.Size}}' "$IMG" | awk '{printf "%.0f MB", $1/1e6}'))"

# ---- 4. run: docker run -p HOST_PORT:8000 ---------------------------------------
if docker network inspect bridge >/dev/null 2>&1; then
  docker run -d --name "$NAME" -p "127.0.0.1:$HOST_PORT:8000" "$IMG" >/dev/null
  BASE_URL="http://127.0.0.1:$HOST_PORT"
else  # a dockerd without a bridge network cannot publish ports
  docker run -d --name "$NAME" --network host "$IMG" >/dev/null
  BASE_URL="http://127.0.0.1:8000"
fi
ok=""
for _ in $(seq 120); do
  if curl -fsS "$BASE_URL/healthz" >/dev/null 2>&1; then ok=1; break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.5
done
[ -n "$ok" ] || { docker logs "$NAME" >&2 || true; echo "container did not answer on $BASE_URL/healthz" >&2; exit 1; }
say "/healthz answers"

curl -fsS -X POST "$BASE_URL/generate?label=5&seed=7" -D "$WORK/headers.txt" -o "$WORK/digit.png"
head -c 8 "$WORK/digit.png" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a" ||
  { echo "POST /generate did not return a PNG" >&2; exit 1; }
grep -qi '^content-type: image/png' "$WORK/headers.txt" || { echo "wrong content type" >&2; exit 1; }
say "POST /generate?label=5 -> PNG ($(stat -c %s "$WORK/digit.png") bytes)"

# the page and every module it imports are in the installed package
curl -fsS "$BASE_URL/" | grep -q '/static/js/main.js' || { echo "the page does not load /static/js/main.js" >&2; exit 1; }
for m in $(curl -fsS "$BASE_URL/static/js/main.js" | sed -n 's/.*from "\.\/\([a-z]*\.js\)".*/\1/p') main.js; do
  curl -fsS -o /dev/null "$BASE_URL/static/js/$m" || { echo "the image lacks app/static/js/$m" >&2; exit 1; }
done
say "the page and its modules are served"

uid=$(docker exec "$NAME" id -u)
[ "$uid" != 0 ] || { echo "the container runs as root" >&2; exit 1; }
say "runs as uid $uid"

# the HEALTHCHECK command itself, as Docker runs it
docker exec "$NAME" sh -c "$(docker inspect -f '{{join .Config.Healthcheck.Test " "}}' "$IMG" | sed 's/^CMD-SHELL //; s/^CMD //')" ||
  { echo "HEALTHCHECK command fails inside the container" >&2; exit 1; }
say "HEALTHCHECK command passes; smoke test OK"
