#!/usr/bin/env bash
# Build a small busybox image from Debian's busybox-static, as a `docker save`
# tarball, without Docker or network access to a registry:
#
#   bash examples/build-busybox-image.sh [OUT.tar] [TAG...]
#   shoal image import OUT.tar        # then pods can say `image: busybox`
#
# Default OUT is busybox.tar, default tags busybox:latest and busybox:1.36. The
# build is reproducible (fixed owners, order and times), so the same busybox
# binary always gives the same image digest.
set -euo pipefail

out=${1:-busybox.tar}
if [ $# -gt 0 ]; then shift; fi
tags=("$@")
if [ ${#tags[@]} -eq 0 ]; then tags=(busybox:latest busybox:1.36); fi

bb=${BUSYBOX:-/bin/busybox}
if [ ! -x "$bb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  fi
fi
[ -x "$bb" ] || { echo "error: $bb missing (apt-get install busybox-static)" >&2; exit 1; }

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/root
mkdir -p "$root"/{bin,etc,tmp,root,var/www,proc,sys,dev}
cp "$bb" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in sh ash echo cat env ls sleep httpd wget nc ping ps id hostname \
  mkdir rm cp mv ln true false date printf grep sed head tail wc uname kill \
  test touch chmod dd df du free mount umount vi top which whoami yes; do
  ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
printf '<h1>hello from shoal</h1>\n' >"$root/var/www/index.html"
chmod 1777 "$root/tmp"

out_dir=$work/out
mkdir -p "$out_dir"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name \
  -C "$root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir -p "$out_dir/$diff_id"
mv "$work/layer.tar" "$out_dir/$diff_id/layer.tar"

cat >"$work/config.json" <<EOF
{"architecture":"$arch","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"examples/build-busybox-image.sh"}]}
EOF
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$out_dir/$config_id.json"

repo_tags=$(printf '"%s",' "${tags[@]}")
printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]\n' \
  "$config_id" "${repo_tags%,}" "$diff_id" >"$out_dir/manifest.json"

tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name \
  -C "$out_dir" -cf "$out" manifest.json "$config_id.json" "$diff_id"
echo "wrote $out (${tags[*]}, image id sha256:$config_id)"
