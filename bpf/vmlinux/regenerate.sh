#!/usr/bin/env bash
# Regenerates bpf/vmlinux/<arch>/vmlinux.h for an architecture this machine cannot boot, from
# Debian's kernel image package for that architecture: the image carries the kernel's BTF, which
# is cut out of it and dumped as C with bpftool. Only type names matter to CO-RE; offsets are
# relocated against the running kernel at load time.
#   bpf/vmlinux/regenerate.sh aarch64        (needs apt, bpftool, python3; downloads ~30 MB)
# x86_64's header comes from a running kernel: bpftool btf dump file /sys/kernel/btf/vmlinux format c
set -euo pipefail
arch=${1:?usage: regenerate.sh aarch64}
case "$arch" in
  aarch64) debarch=arm64 ;;
  *) echo "no Debian mapping for $arch" >&2; exit 1 ;;
esac
out="$(cd "$(dirname "$0")" && pwd)/$arch/vmlinux.h"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/dl"
echo "deb [arch=$debarch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$work/sources.list"
opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
      -o "APT::Architecture=$debarch" -o "APT::Architectures=$debarch")
apt-get "${opts[@]}" update -qq
pkg=$(apt-cache "${opts[@]}" search --names-only "^linux-image-[0-9.]+\\+deb[0-9]+-cloud-$debarch-unsigned\$" | sort -V | tail -n 1 | cut -d' ' -f1)
echo "using $pkg"
(cd "$work/dl" && apt-get "${opts[@]}" download "$pkg" 2>/dev/null)
dpkg-deb -x "$work"/dl/*.deb "$work/x"
python3 - "$work"/x/boot/vmlinuz-* "$work/vmlinux.btf" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
if data[:2] == b"\x1f\x8b":
    data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
# BTF header: magic 0xeB9F, version 1, flags 0, hdr_len 24, then type/string section offsets
best, start = None, 0
while (i := data.find(b"\x9f\xeb\x01\x00\x18\x00\x00\x00", start)) >= 0:
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", data, i + 4)
    total = hdr_len + str_off + str_len
    if type_off == 0 and str_off == type_len and i + total <= len(data) and (best is None or total > best[1]):
        best = (i, total)
    start = i + 1
if best is None:
    sys.exit("no BTF found in the kernel image")
open(sys.argv[2], "wb").write(data[best[0]:best[0] + best[1]])
PY
mkdir -p "$(dirname "$out")"
bpftool btf dump file "$work/vmlinux.btf" format c > "$out"
echo "wrote $out from $pkg"
