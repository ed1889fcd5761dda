#!/usr/bin/env bash
# The device install, tested on 64-bit ARM under emulation: an arm64 Debian root file
# system run by qemu-user on this x86 machine, the offline bundle installed in it with
# no network, and the bundle's own install check run there as INSTALL.txt says: its
# films (JPEG; DICOM uncompressed, MONOCHROME1, JPEG 2000, JPEG-LS) predicted by
# cxr-predict and compared with the records made here on x86: the same decisions, and
# p_pneumonia within --tolerance (XNNPACK's ARM and x86 int8 kernels may round
# differently).
#
# Usage (as root, from the repository root; Debian with network for the first run):
#   scripts/check_arm64.sh [--model=out/export/model_int8.tflite] [--tolerance=0.02] WORK/
#   (default model: the released one, edge/released/model_int8.tflite)
#
# WORK/rootfs, the arm64 root file system (Debian bookworm: Python 3.11, glibc 2.36, as
# 64-bit Raspberry Pi OS), is built once with mmdebstrap and reused. Emulation needs
# binfmt_misc (the script registers qemu there; a container must allow it). It says
# nothing about speed on a real board. Not in CI: it takes minutes (it ends saying how
# long).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$ROOT/edge/released/model_int8.tflite" TOLERANCE="0.02" WORK=""
for arg in "$@"; do
  case "$arg" in
    --model=*) MODEL="${arg#*=}" ;;
    --tolerance=*) TOLERANCE="${arg#*=}" ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "check_arm64: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) WORK="$arg" ;;
  esac
done
fail() { echo "check_arm64: error: $*" >&2; exit 1; }
say() { echo "check_arm64: $*" >&2; }
[ -n "$WORK" ] || fail "give a work folder (see --help)"
[ -f "$MODEL" ] || fail "--model '$MODEL' does not exist (scripts/run.sh exports one)"
[ "$(id -u)" = 0 ] || fail "run it as root (it builds and enters a root file system)"
START=$(date +%s)
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
RFS="$WORK/rootfs"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || fail "no $PY: run scripts/test.sh or scripts/run.sh once first"

need=()
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static binfmt-support)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# binfmt_misc lets the kernel hand arm64 programs to qemu: chroot and subprocesses work.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
# qemu's -L prefix, without binfmt, is no way round: the guest would read this
# machine's /proc/cpuinfo (x86), which the prefix cannot hide, and on which LiteRT's
# CPU detection crashes.
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || fail "qemu-aarch64 is not registered in" \
  "binfmt_misc and cannot be here (a container must allow it: docker run --privileged)"

if [ ! -x "$RFS/usr/bin/python3" ]; then
  say "building an arm64 Debian bookworm root file system in $RFS (once)"
  rm -rf "$RFS"
  mmdebstrap --quiet --arch=arm64 --variant=minbase --include=python3,python3-venv \
    bookworm "$RFS" http://deb.debian.org/debian
fi
say "root file system: $(cat "$RFS/etc/debian_version" 2>/dev/null) arm64," \
    "$(ls "$RFS"/usr/bin/python3.* | grep -o 'python3\.[0-9]*$' | head -1)"

say "building the aarch64 bundle"
rm -rf "$RFS/opt/cxr" && mkdir -p "$RFS/opt/cxr"
bash "$ROOT/scripts/device_bundle.sh" --platform=aarch64 --python=3.11 --model="$MODEL" \
  "$RFS/opt/cxr/bundle"
NAME="$(basename "$MODEL")"

# Inside: INSTALL.txt's commands, with no network at all (a new network namespace) and a
# clean environment (this machine's pip settings stay outside).
INSIDE='set -e
cd /opt/cxr/bundle
echo "inside: $(uname -m), $(python3 --version)"
python3 -m venv /opt/cxr/venv
/opt/cxr/venv/bin/pip install --quiet --no-index --find-links "$PWD" "cxr-edge[edge]"
/opt/cxr/venv/bin/cxr-predict --version
/opt/cxr/venv/bin/cxr-predict --model=model/'"$NAME"' --info | head -3
/opt/cxr/venv/bin/cxr-predict --model=model/'"$NAME"' check/films --output=check/here.jsonl
/opt/cxr/venv/bin/python check/device_check.py compare check/expected.jsonl \
  check/here.jsonl --tolerance='"$TOLERANCE"
say "installing offline and running the install check inside the arm64 system"
# /sys and /dev, not /proc: LiteRT's CPU detection reads /proc/cpuinfo, which here
# describes this machine's x86 CPUs and crashes it under emulation. Without it LiteRT
# runs its baseline ARM kernels; on a board its own cpuinfo may pick tuned ones, which
# this check cannot exercise (under qemu 7.2 they gave one output for every film).
for fs in sys dev; do mkdir -p "$RFS/$fs"; mount --bind "/$fs" "$RFS/$fs"; done
trap 'for fs in sys dev; do umount "$RFS/$fs" 2>/dev/null || true; done' EXIT
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  unshare --net chroot "$RFS" /bin/sh -c "$INSIDE" && STATUS=0 || STATUS=1
cp "$RFS/opt/cxr/bundle/check/here.jsonl" "$WORK/arm64.jsonl" 2>/dev/null || true
say "took $(( $(date +%s) - START )) s; $( [ $STATUS = 0 ] && echo PASSED || echo FAILED)"
exit $STATUS
