#!/bin/bash
# Builds the container images the test fixtures use, coord/redis:local
# (redis-server, redis-cli) and coord/etcd:local (etcd), from the Debian
# packages, without any registry: it downloads the .debs with
# `apt-get download`, unpacks them, copies each binary with the shared
# libraries `ldd` lists into a root folder, and `docker import`s that folder.
# Needs a running container engine (`docker info`) and apt. `.ci/run` calls
# it when an image is missing; run it yourself after `docker rmi`.
# TAG=other builds coord/redis:other and coord/etcd:other instead.
set -euo pipefail
TAG=${TAG:-local}
docker info >/dev/null 2>&1 || {
  echo "build-images.sh: no container engine answers \`docker info\`; start one first" >&2
  exit 1
}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
mkdir debs stage
download() { (cd debs && apt-get download -q redis-server redis-tools etcd-server libjemalloc2 liblzf1 >/dev/null 2>&1); }
if ! download; then
  # A fresh machine has no package lists yet.
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  download
fi
for d in debs/*.deb; do dpkg -x "$d" stage; done
mkroot() { # $1=rootdir, rest = binaries
  local r=$1; shift
  mkdir -p "$r"/{tmp,data,etc,usr/bin}; chmod 1777 "$r/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"; echo 'root:x:0:' > "$r/etc/group"
  echo 'hosts: files dns' > "$r/etc/nsswitch.conf"
  for b in "$@"; do
    cp -L "stage/usr/bin/$b" "$r/usr/bin/$b"
    LD_LIBRARY_PATH=stage/usr/lib/x86_64-linux-gnu ldd "stage/usr/bin/$b" | grep -o '/[^ ]*' | while read -r l; do
      case $l in stage/*) dst=${l#stage};; *) dst=$l;; esac
      mkdir -p "$r$(dirname "$dst")"; cp -L "$l" "$r$dst"
    done
  done
}
mkroot redis redis-server redis-cli
mkroot etcd etcd
tar -C redis -c . | docker import \
  --change 'WORKDIR /data' --change 'EXPOSE 6379' \
  --change 'CMD ["/usr/bin/redis-server","--bind","0.0.0.0","--protected-mode","no","--save","","--appendonly","no"]' \
  - "coord/redis:$TAG" >/dev/null
tar -C etcd -c . | docker import \
  --change 'WORKDIR /data' --change 'EXPOSE 2379' --change 'ENV ETCDCTL_API=3' \
  --change 'CMD ["/usr/bin/etcd","--name","default","--data-dir","/data/etcd","--listen-client-urls","http://0.0.0.0:2379","--advertise-client-urls","http://127.0.0.1:2379","--listen-peer-urls","http://127.0.0.1:2380","--initial-advertise-peer-urls","http://127.0.0.1:2380","--initial-cluster","default=http://127.0.0.1:2380"]' \
  - "coord/etcd:$TAG" >/dev/null
echo "built coord/redis:$TAG and coord/etcd:$TAG"
