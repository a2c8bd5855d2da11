#!/usr/bin/env bash
# The first-boot check: boots a Debian 12 VM under QEMU with the README's cloud-init user data
# (packaging/cloud-init/user-data.yaml) and checks, from outside, that it did what the README says:
# troops installed from the freshly built .deb and its service enabled and running, the node
# initialised with its SSH key printed into /var/log/cloud-init-output.log, and the first deploy
# (a signed commit, require_signed as the user data sets it) run during the boot and healthy. Then
# it boots a second, fresh VM from the same image, the deploy repo one commit newer: a replaced
# host comes up on the newest commit.
#
# What the VM gets, besides its image: a NoCloud seed (the "cidata" disk: meta-data, and the user
# data with only its CHANGE lines filled in, below) and one ext4 disk, mounted at /srv/boot-check,
# holding the .deb, the deploy repo (and a mirror of it), and report.sh. The VM has no network
# (-nic none), so everything it installs is in the image (debootstrap: a kernel, systemd,
# cloud-init, curl, git, openssh-client) or on that disk. The image's one addition for the test,
# boot-check-report.service, runs report.sh after cloud-init's last stage: it writes what the boot
# did onto the disk and powers the VM off; this script reads the disk back with debugfs. QEMU
# runs with KVM, or, where the machine's KVM is PVM (as on this project's CI machines), with an
# emulated CPU (see accel below).
#
# What it does not prove: real cloud metadata (the seed is NoCloud), a network (package_update
# runs, and apt-get update only warns that it cannot reach the mirror), downloading the .deb over
# https, SSH or https remotes, an official Debian cloud image (this one is debootstrapped).
#
# Run as root (.ci/run does, after ci-check.sh). Where /dev/kvm does not exist it prints
# "SKIPPED: <reason>" and exits 0. It installs what it needs with apt (debootstrap,
# qemu-system-x86, genisoimage, e2fsprogs). The base image is cached in
# /var/cache/troops-boot-check/, keyed by a hash of its recipe (build_image below and its
# package list), so only the first run (or a changed recipe) runs debootstrap. Apart from that
# cache and the tools, it leaves the machine as it found it. KEEP=1 keeps its temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

say() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'boot-check: FAILED: %s\n' "$*" >&2
    show_logs >&2
    exit 1
}
show_logs() { # the tails of what the last VM said, where there is one
    [ -n "${vm:-}" ] || return 0
    if [ -s "$tmp/$vm.serial" ]; then
        printf '\n-- the last 60 lines of the serial console of %s (%s):\n' "$vm" "$tmp/$vm.serial"
        tail -n 60 "$tmp/$vm.serial"
    fi
    if [ -s "$tmp/$vm/results/cloud-init-output.log" ]; then
        printf '\n-- the last 40 lines of its /var/log/cloud-init-output.log:\n'
        tail -n 40 "$tmp/$vm/results/cloud-init-output.log"
    fi
    if [ -s "$tmp/$vm/results/troops.journal" ]; then
        printf '\n-- the last 20 lines of its journalctl -u troops:\n'
        tail -n 20 "$tmp/$vm/results/troops.journal"
    fi
}
check() { # check DESCRIPTION COMMAND...: runs COMMAND quietly; says ok, or fails with DESCRIPTION.
    local what=$1; shift
    "$@" >/dev/null 2>&1 || fail "$what"
    echo "  ok: $what"
}

[ "$(id -u)" -eq 0 ] || fail "run as root: it runs debootstrap and writes /var/cache/troops-boot-check"
if [ ! -e /dev/kvm ]; then
    echo "SKIPPED: no /dev/kvm on this machine (the boot check runs on machines that have one)"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/troops-boot-check.XXXXXX")
build=""   # the image being built, if one is
cleanup() {
    status=$?
    # A VM still running (this script interrupted, or a failure between boot and check).
    for pidfile in "$tmp"/*.pid; do
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        if grep -qaF "$tmp" "/proc/$pid/cmdline" 2>/dev/null; then kill -9 "$pid"; fi
    done
    # gpg started an agent for the signing key; it lives as long as its home.
    if [ -d "$tmp/gnupg" ]; then GNUPGHOME="$tmp/gnupg" gpgconf --kill all 2>/dev/null || true; fi
    # An image build cut short: debootstrap and apt mount /proc in it; unmount, then forget it.
    if [ -n "$build" ]; then
        { grep -o " $build/[^ ]*" /proc/mounts || true; } | sort -r | while read -r mnt; do umount -l "$mnt"; done
        rm -rf "$build"
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left $tmp in place"; else rm -rf "$tmp"; fi
    exit "$status"
}
trap cleanup EXIT

say "tools: debootstrap, qemu-system-x86, qemu-utils, genisoimage, e2fsprogs, gpg, openssh-client"
missing=()
for pkg in debootstrap qemu-system-x86 qemu-utils genisoimage e2fsprogs gpg gpg-agent openssh-client git; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# KVM, unless this machine's KVM is PVM (the kvm_pvm module: KVM on cloud VMs that have no nested
# virtualisation), which runs only guest kernels built for it: Debian's stops early in its boot.
# There QEMU emulates the CPU (TCG, one host thread per vCPU): a boot takes about two minutes.
if [ -d /sys/module/kvm_pvm ]; then accel=tcg,thread=multi; else accel=kvm; fi

# ---------------------------------------------------------------------------------------------
# The base image: Debian 12 from the Debian archive, with what the VM cannot download (it has no
# network): a kernel, systemd, cloud-init, the .deb's dependencies, and curl (the user data's
# download). Booted with -kernel/-initrd taken from it, so it needs no bootloader or partitions.
mirror=http://deb.debian.org/debian
packages=(systemd-sysv udev linux-image-amd64 cloud-init
    git openssh-client curl ca-certificates)

build_image() { # build_image DIR: DIR/root.img (ext4, raw), DIR/vmlinuz, DIR/initrd.img
    local dir=$1 root=$1/root
    debootstrap --variant=minbase bookworm "$root" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
        { tail -n 20 "$dir/debootstrap.log"; fail "debootstrap $mirror bookworm (its log above)"; }
    # apt, not debootstrap's --include, for the rest: debootstrap resolves no virtual packages.
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"   # start nothing in the chroot
    chmod 755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        apt-get install -y -q --no-install-recommends "${packages[@]}" > "$dir/apt.log" 2>&1 ||
        { tail -n 20 "$dir/apt.log"; fail "apt-get install ${packages[*]} in the image (its log above)"; }
    umount "$root/proc"
    chroot "$root" apt-get clean
    rm -f "$root/usr/sbin/policy-rc.d"

    # The root file system is /dev/vda (the kernel command line says so); the boot-check disk
    # is mounted by its label, and its absence does not stop the boot.
    cat > "$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 1
LABEL=boot-check /srv/boot-check ext4 rw,nofail,x-systemd.device-timeout=30s 0 2
EOF
    printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
    # Every boot of the image is a new machine: systemd makes its id, cloud-init names it.
    : > "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    printf 'localhost\n' > "$root/etc/hostname"
    # The system locale set, as cloud images have it (else cloud-init's locale module fails).
    printf 'LANG=C.UTF-8\n' > "$root/etc/default/locale"

    # The test's one addition: after cloud-init's last stage (runcmd), write what the boot did to
    # the boot-check disk (report.sh is on it), then power off, whether that worked or not.
    cat > "$root/etc/systemd/system/boot-check-report.service" <<'EOF'
[Unit]
Description=boot-check: write what this boot did to the boot-check disk, then power off
After=cloud-final.service
RequiresMountsFor=/srv/boot-check

SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/bin/sh /srv/boot-check/report.sh
StandardOutput=journal+console

[Install]
WantedBy=graphical.target
EOF
    # (Not multi-user.target: cloud-final starts after it, so that would be an ordering cycle.)
    mkdir -p "$root/etc/systemd/system/graphical.target.wants"
    ln -s /etc/systemd/system/boot-check-report.service \
        "$root/etc/systemd/system/graphical.target.wants/boot-check-report.service"

    cp "$root"/boot/vmlinuz-* "$dir/vmlinuz"
    cp "$root"/boot/initrd.img-* "$dir/initrd.img"
    truncate -s 3G "$dir/root.img"
    mkfs.ext4 -q -F -L root -d "$root" "$dir/root.img"
    rm -rf "$root"
}

cache=/var/cache/troops-boot-check
key=$( { declare -f build_image; echo "$mirror ${packages[*]}"; } | sha256sum | cut -c1-16)
image=$cache/$key
if [ -f "$image/root.img" ]; then
    say "the base image: cached in $image"
else
    say "the base image: building $image (debootstrap $mirror bookworm; a few minutes)"
    mkdir -p "$cache"
    build=$image.building
    rm -rf "$build"; mkdir -p "$build"
    build_image "$build"   # (not in a condition: that would turn off set -e inside it)
    mv "$build" "$image"; build=""
    # Images of other recipes are stale: keep only this one.
    find "$cache" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
    echo "built in $((SECONDS - started))s"
fi

# ---------------------------------------------------------------------------------------------
say "the .deb, freshly built"
deb=$(packaging/build-deb.sh)
[ -f "$deb" ] || fail "build-deb.sh did not print the package's path (got: $deb)"
version=$(dpkg-deb -f "$deb" Version)
echo "$deb ($version)"

say "keys: a signing key for the deploy repo, the fleet's SSH deploy key, a mirror host key"
export GNUPGHOME=$tmp/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'boot-check <boot-check@example.invalid>' ed25519 sign never
signer=$(gpg --list-keys --with-colons 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
gpg --export --armor "$signer" > "$tmp/trusted.pgp"
ssh-keygen -q -t ed25519 -N '' -C fleet-deploy-key -f "$tmp/deploy_key"
ssh-keygen -q -t ed25519 -N '' -C '' -f "$tmp/mirror_host_key"
echo "  signer $signer; deploy key $(cut -d' ' -f2 "$tmp/deploy_key.pub" | cut -c1-24)..."

say "the deploy repo: a plan whose step writes a marker and whose check reads it, signed"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=boot-check GIT_AUTHOR_EMAIL=boot-check@example.invalid
export GIT_COMMITTER_NAME=boot-check GIT_COMMITTER_EMAIL=boot-check@example.invalid
git init -q -b main "$tmp/deploy"
git -C "$tmp/deploy" config user.signingkey "$signer"
git -C "$tmp/deploy" config commit.gpgsign true
cat > "$tmp/deploy/troops.toml" <<'EOF'
# The boot-check plan: the web role records the commit it deployed; the check reads it back.
[[step]]
name = "marker"
roles = ["web"]
run = 'mkdir -p /var/lib/boot-check && echo "$TROOPS_COMMIT" > /var/lib/boot-check/marker && echo "boot-check: deployed $TROOPS_COMMIT"'

[[check]]
name = "marker"
roles = ["web"]
run = 'test "$(cat /var/lib/boot-check/marker)" = "$TROOPS_COMMIT"'
EOF
git -C "$tmp/deploy" add -A
git -C "$tmp/deploy" commit -q -m "the first plan"
first=$(git -C "$tmp/deploy" rev-parse HEAD)
git -C "$tmp/deploy" verify-commit "$first" 2>/dev/null || fail "the deploy commit is not signed"
echo "  first commit $first"

# The user data, as the README gives it, with each CHANGE line filled in for this test. Every
# line is found exactly once, and none is left: a changed user-data.yaml fails here, by name.
say "the user data: packaging/cloud-init/user-data.yaml, CHANGE lines filled in"
userdata=$tmp/user-data
cp packaging/cloud-init/user-data.yaml "$userdata"
replace_line() { # replace_line MATCH TEXT: the one line holding MATCH becomes TEXT (lines)
    local n
    n=$(grep -cF -- "$1" "$userdata" || true)
    [ "$n" = 1 ] || fail "user-data.yaml: expected one line with '$1', found $n; change boot-check.sh with it"
    MATCH=$1 TEXT=$2 awk 'index($0, ENVIRON["MATCH"]) { print ENVIRON["TEXT"]; next } { print }' \
        "$userdata" > "$userdata.new"
    mv "$userdata.new" "$userdata"
}
replace() { # replace OLD NEW: in the one line holding OLD, OLD becomes NEW, and "# CHANGE" goes
    local n
    n=$(grep -cF -- "$1" "$userdata" || true)
    [ "$n" = 1 ] || fail "user-data.yaml: expected one line with '$1', found $n; change boot-check.sh with it"
    OLD=$1 NEW=$2 awk 'i = index($0, ENVIRON["OLD"]) {
            $0 = substr($0, 1, i - 1) ENVIRON["NEW"] substr($0, i + length(ENVIRON["OLD"]))
            sub(/[ \t]*# CHANGE$/, "")
        } { print }' "$userdata" > "$userdata.new"
    mv "$userdata.new" "$userdata"
}
indent() { sed -e 's/^/      /' -e 's/^ *$//'; }   # a block's lines, indented as write_files has them
inner() { sed -e '1d' -e '$d' "$1"; }               # an armored block without its first and last line
replace 'roles = ["web"]' 'roles = ["web"]'   # as it is: the plan below is for the role web
replace_line 'CHANGE: the output of `gpg --export --armor KEYID`' "$(inner "$tmp/trusted.pgp" | indent)"
replace 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI-CHANGE-the-mirror-host-key' "$(cut -d' ' -f1,2 "$tmp/mirror_host_key.pub")"
replace_line 'CHANGE: a read-only deploy key' "$(inner "$tmp/deploy_key" | indent)"
replace 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI-CHANGE fleet-deploy-key' "$(cat "$tmp/deploy_key.pub")"
replace 'https://downloads.example.com/troops/troops_0.1.0-1_amd64.deb' 'file:///srv/boot-check/troops.deb'
replace 'ssh://git@git.example.com/ops/deploy.git' '/srv/boot-check/deploy.git'
replace 'https://mirror.example.com/ops/deploy.git' 'file:///srv/boot-check/mirror.git'
if grep -n CHANGE "$userdata" | grep -vE '^[0-9]+: *#'; then fail "user-data.yaml has CHANGE lines this check does not fill in (above)"; fi
check "the user data still starts with #cloud-config" test "$(head -n 1 "$userdata")" = "#cloud-config"
awk '/BEGIN PGP PUBLIC/,/END PGP PUBLIC/' "$userdata" | sed 's/^      //' > "$tmp/trusted-in-user-data.pgp"
check "the keyring in the user data holds the signing key" \
    grep -q "$signer" <(gpg --show-keys --with-colons "$tmp/trusted-in-user-data.pgp")

# ---------------------------------------------------------------------------------------------
# One VM: a new qcow2 layer on the cached image (which stays as it is), the seed, the disk.
# boot VM HOSTNAME: boots it, waits for it to power itself off (bounded), reads its results.
boot() {
    vm=$1
    local host=$2 dir=$tmp/$1 deadline=360
    mkdir -p "$dir/disk"
    cp "$deb" "$dir/disk/troops.deb"
    git clone -q --bare "$tmp/deploy" "$dir/disk/deploy.git"
    git clone -q --bare "$tmp/mirror-source" "$dir/disk/mirror.git"
    cp "$tmp/report.sh" "$dir/disk/report.sh"
    truncate -s 256M "$dir/disk.img"
    mkfs.ext4 -q -F -L boot-check -d "$dir/disk" "$dir/disk.img"
    printf 'instance-id: boot-check-%s\nlocal-hostname: %s\n' "$vm" "$host" > "$dir/meta-data"
    cp "$userdata" "$dir/user-data"
    genisoimage -quiet -output "$dir/seed.iso" -volid cidata -joliet -rock "$dir/user-data" "$dir/meta-data"
    qemu-img create -q -f qcow2 -F raw -b "$image/root.img" "$dir/root.qcow2"

    local t0=$SECONDS
    echo "  booting $vm ($host; $accel), at most ${deadline}s; console: $tmp/$vm.serial"
    timeout --kill-after=10 "$deadline" qemu-system-x86_64 -machine q35 -accel "$accel" -smp 2 -m 1024 \
        -display none -monitor none -serial "file:$tmp/$vm.serial" -nic none -no-reboot \
        -pidfile "$tmp/$vm.pid" \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1" \
        -drive "file=$dir/root.qcow2,format=qcow2,if=virtio" \
        -drive "file=$dir/disk.img,format=raw,if=virtio" \
        -drive "file=$dir/seed.iso,format=raw,if=virtio,readonly=on" \
        > "$tmp/$vm.qemu.log" 2>&1 || {
        status=$?
        [ "$status" -ne 124 ] || fail "$vm did not power itself off within ${deadline}s (QEMU killed)"
        fail "QEMU exited with $status: $(cat "$tmp/$vm.qemu.log")"
    }
    rm -f "$tmp/$vm.pid"
    echo "  $vm powered itself off after $((SECONDS - t0))s"
    debugfs -R "rdump /results $dir" "$dir/disk.img" >/dev/null 2>&1
    [ -f "$dir/results/done" ] || fail "$vm powered off without its report on the boot-check disk"
}
result() { cat "$tmp/$vm/results/$1"; }   # result NAME: what report.sh wrote, for the last VM

# What the VM reports (run by boot-check-report.service, after cloud-final, from the disk).
cat > "$tmp/report.sh" <<'EOF'
#!/bin/sh
# boot-check's report, run in the VM after cloud-init's last stage: what this boot did.
out=/srv/boot-check/results
rm -rf "$out"; mkdir -p "$out"; cd "$out" || exit 1
cloud-init status --long > cloud-init-status 2>&1
cp /var/log/cloud-init-output.log /var/log/cloud-init.log . 2>/dev/null
dpkg-query -W -f='${Status} ${Version}\n' troops > dpkg 2>&1
systemctl is-enabled troops > enabled 2>&1
systemctl is-active troops > active 2>&1
troops status > status 2>&1
git --git-dir=/var/lib/troops/repo/main.git rev-parse refs/troops/deployed > deployed 2>&1
cat /var/lib/boot-check/marker > marker 2>&1
cp /etc/troops/troops.toml troops.toml 2>&1
cp /var/lib/troops/ssh/id_ed25519.pub node-key.pub 2>&1
journalctl -b --no-pager > journal 2>&1
journalctl -b -u troops --no-pager > troops.journal 2>&1
echo "boot-check: report written"
touch done
sync
EOF

# ---------------------------------------------------------------------------------------------
say "first boot: a new host, from nothing to deployed"
git clone -q --bare "$tmp/deploy" "$tmp/mirror-source"
boot vm1 web-1
short=${first:0:12}
check "cloud-init ran every module without an error (cloud-init status: done)" \
    grep -qx 'status: done' "$tmp/vm1/results/cloud-init-status"
check "cloud-init found the user data valid (its schema check)" \
    sh -c '! grep -q "Invalid cloud-config provided" "$1"' _ "$tmp/vm1/results/cloud-init.log"
check "troops $version is installed" test "$(result dpkg)" = "install ok installed $version"
check "troops.service is enabled" test "$(result enabled)" = enabled
check "troops.service is running" test "$(result active)" = active
check "dpkg kept the troops.toml cloud-init wrote (--force-confold)" grep -q 'Written by cloud-init' "$tmp/vm1/results/troops.toml"
check "troops init kept the fleet deploy key cloud-init wrote" \
    test "$(cut -d' ' -f1,2 "$tmp/vm1/results/node-key.pub")" = "$(cut -d' ' -f1,2 "$tmp/deploy_key.pub")"
check "troops init printed the node's key into cloud-init-output.log" \
    grep -qF "$(cut -d' ' -f1,2 "$tmp/deploy_key.pub")" "$tmp/vm1/results/cloud-init-output.log"
# troops pull ran the first deploy (its output), or the daemon did and pull waited for it.
check "troops pull reported the first deploy in cloud-init-output.log" \
    grep -qE "^(boot-check: deployed $first|troops: $short, the tip of refs/heads/main, is deployed already by run 1 .*)$" \
    "$tmp/vm1/results/cloud-init-output.log"
grep -E "^boot-check: deployed|is deployed already by run" "$tmp/vm1/results/cloud-init-output.log" | sed 's/^/  | /'
check "troops status in cloud-init-output.log: deployed $short" \
    grep -q "^deployed  $short" "$tmp/vm1/results/cloud-init-output.log"
check "the first deploy ran the signed commit $short" test "$(result marker)" = "$first"
check "refs/troops/deployed is $short" test "$(result deployed)" = "$first"
check "troops status: deployed $short" grep -q "^deployed  $short" "$tmp/vm1/results/status"
check "troops status: healthy" grep -q '^state     healthy' "$tmp/vm1/results/status"
check "troops status: verify on, with the keyring from the user data" \
    grep -q '^verify    on .*keyring /etc/troops/trusted.pgp' "$tmp/vm1/results/status"
sed 's/^/  | /' "$tmp/vm1/results/status"

# ---------------------------------------------------------------------------------------------
say "second boot: the same image and user data, the deploy repo one commit newer (a replaced host)"
echo 2 > "$tmp/deploy/VERSION"
git -C "$tmp/deploy" add -A
git -C "$tmp/deploy" commit -q -m "a newer plan"
second=$(git -C "$tmp/deploy" rev-parse HEAD)
echo "  newer commit $second (origin has it; the mirror lags at $short)"
boot vm2 web-1
short=${second:0:12}
check "cloud-init status: done" grep -qx 'status: done' "$tmp/vm2/results/cloud-init-status"
check "troops.service is enabled and running" test "$(result enabled) $(result active)" = "enabled active"
check "the new host deployed the newer commit $short" test "$(result marker)" = "$second"
check "troops status in cloud-init-output.log: deployed $short" \
    grep -q "^deployed  $short" "$tmp/vm2/results/cloud-init-output.log"
check "it fast-forwarded to origin's tip, the lagging mirror no obstacle" \
    grep -q "main moved none -> $short from remote origin" "$tmp/vm2/results/journal"
check "troops status: deployed $short" grep -q "^deployed  $short" "$tmp/vm2/results/status"
check "troops status: healthy" grep -q '^state     healthy' "$tmp/vm2/results/status"
sed 's/^/  | /' "$tmp/vm2/results/status"

vm=""
say "boot check passed in $((SECONDS - started))s"
