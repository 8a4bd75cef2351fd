# shellcheck shell=bash
# Installs (as root) or names (otherwise) the Debian packages Keelson's scripts need.
# Sourced by scripts/run.sh and scripts/test.sh.

keelson_packages=(
  qemu-system-x86 qemu-utils ovmf       # boot images (qemu-img, qemu-io come with qemu-utils)
  dosfstools mtools squashfs-tools e2fsprogs  # make filesystems in plain files, no mounts
  gdisk cryptsetup-bin cpio              # tests compare against sgdisk, veritysetup, cpio
  iproute2 dnsmasq-base util-linux       # the DHCP test: a namespace, a tap, a real server
  socat                                  # guests reach test HTTP servers through guestfwd
  apt dpkg ca-certificates curl gcc libc6-dev pkg-config
  libclang-dev                           # bindgen, for the loopdev-3 crate (loop devices)
  skopeo umoci busybox-static            # the tests build real OCI images and archives
  docker-registry apache2-utils          # a real registry the pull tests start on 127.0.0.1
                                         # (htpasswd writes its basic-auth users)
  crun runc                              # the runtime benchmark's baselines (bench image only)
  nftables                               # nft reads back the NAT table the agent writes by netlink
)

ensure_host_packages() {
  local missing=()
  for package in "${keelson_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "Keelson needs these Debian packages: ${missing[*]}" >&2
    echo "Install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-system-x86 must match qemu-utils' version; a newer qemu-utils from backports would
  # otherwise block the install, so pin qemu-utils to the candidate of qemu-system-x86.
  local qemu_version
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  local pinned=()
  for package in "${missing[@]}"; do
    if [ "$package" = qemu-utils ] || [ "$package" = qemu-system-x86 ]; then
      continue
    fi
    pinned+=("$package")
  done
  # docker-registry's package script would start a registry on the host's port 5000; the
  # tests start their own on 127.0.0.1, so no service may start during the install.
  local blocker=/usr/sbin/policy-rc.d
  local blocked=no
  if [ ! -e "$blocker" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$blocker" && chmod +x "$blocker" && blocked=yes
  fi
  local status=0
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    qemu-system-x86 "qemu-utils=${qemu_version}" "${pinned[@]}" >/dev/null || status=$?
  if [ "$blocked" = yes ]; then rm -f "$blocker"; fi
  return "$status"
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust from https://rustup.rs (stable, 1.85 or newer)" >&2
    exit 1
  fi
}
