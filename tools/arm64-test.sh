#!/usr/bin/env bash
# Run part of the test suite on emulated aarch64: Debian arm64 rootfs + qemu-user, PyPI's aarch64 wheels.
#
#   sudo tools/arm64-test.sh                 # kernels + tiny golden-model exactness (default set)
#   ARM64_TESTS="tests/test_kernels.py" sudo tools/arm64-test.sh
#
# The first run builds the rootfs (~10 minutes); later runs reuse it and the Numba compile cache
# (under the rootfs). Emulated Numba compiles ~15-20x slower than native. Needs root (chroot,
# binfmt_misc) and the network to Debian's mirror and PyPI.
set -euo pipefail
ROOTFS=${ARM64_ROOTFS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeqwen/arm64-rootfs}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TESTS=${ARM64_TESTS:-"tests/test_kernels.py tests/test_golden.py tests/test_quant.py tests/test_gguf.py"}
MIRROR=${ARM64_MIRROR:-http://deb.debian.org/debian}

say() { printf '\033[2m[arm64] %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then echo "arm64-test: needs root (chroot, binfmt_misc)" >&2; exit 1; fi
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing qemu-user-static, binfmt-support, debootstrap"
  apt-get install -y -q qemu-user-static binfmt-support debootstrap >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true

in_root() { chroot "$ROOTFS" env -i HOME=/root PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
  NUMBA_CACHE_DIR=/var/cache/numba NUMBA_NUM_THREADS=2 LANG=C.UTF-8 "$@"; }

if [ ! -f "$ROOTFS/.edgeqwen-ready" ]; then
  say "building the arm64 rootfs in $ROOTFS (first run only)"
  if [ ! -f "$ROOTFS/.debootstrap-done" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    debootstrap --arch=arm64 --foreign --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
    cp "$(command -v qemu-aarch64-static)" "$ROOTFS/usr/bin/"
    chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >/dev/null
    touch "$ROOTFS/.debootstrap-done"
  fi
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  in_root apt-get update -q >/dev/null
  in_root apt-get install -y -q python3 python3-venv ca-certificates >/dev/null
  mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/* "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
  in_root update-ca-certificates >/dev/null
  say "python venv and PyPI's aarch64 wheels"
  in_root python3 -m venv /opt/venv
  in_root pip install -q numpy numba tokenizers safetensors click jinja2 gguf pytest hypothesis pexpect
  mkdir -p "$ROOTFS/var/cache/numba"
  touch "$ROOTFS/.edgeqwen-ready"
fi

mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
trap 'umount "$ROOTFS/proc" 2>/dev/null || true' EXIT
say "copying the repository"
rm -rf "$ROOTFS/src"
mkdir -p "$ROOTFS/src"
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=models --exclude='__pycache__' -cf - . | tar -C "$ROOTFS/src" -xf -
in_root pip install -q --no-deps -e /src
in_root python -c "import platform, numba; print('arch', platform.machine(), 'numba', numba.__version__)"
say "running: $TESTS"
cd "$ROOTFS/src"
# shellcheck disable=SC2086
in_root sh -c "cd /src && python -m pytest -q -p no:cacheprovider $TESTS"
say "emulated decode speed of a tiny golden model"
in_root python /src/tools/tiny_speed.py /src/tests/fixtures/golden/tied-gqa2-f32
