#!/usr/bin/env bash
# The packaging check, as root on a throwaway Debian 12 machine (.ci/run runs it after the tests;
# it runs by hand too). It builds the .deb and installs it with dpkg -i; checks what it installed,
# what postinst did (group, troops init, enabled unit), `troops --version`, `man troops`, the
# completions, and `systemd-analyze verify` on the unit; runs a push deploy and a pull deploy with
# the installed binaries against a temp node, and a push by a member of the group troops to the
# installed node; upgrades to a newer revision; removes, reinstalls and purges the package,
# checking that the node's state stays. There is no running systemd here, so the service is never
# started: the daemon's own tests cover it.
#
# It changes the machine as installing troops does (group "troops", /var/lib/troops, /etc/troops,
# safe.directory in /etc/gitconfig), plus a user troops-ci-member, and at the end undoes what it
# added: the package is purged and what did not exist before is removed. KEEP=1 leaves it all.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'ci-check: FAILED: %s\n' "$*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND...: runs COMMAND quietly; says ok, or fails with DESCRIPTION.
    local what=$1; shift
    "$@" >/dev/null || fail "$what"
    echo "  ok: $what"
}

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and removes the troops package"
if dpkg-query -W -f='${Status}' troops 2>/dev/null | grep -q 'install ok installed'; then
    fail "troops is installed on this machine; this check installs and purges it, so run it on a throwaway one"
fi

# What exists before, so that the clean-up at the end removes only what this check added.
had_group=$(getent group troops >/dev/null && echo yes || echo no)
had_state=$([ -e /var/lib/troops ] && echo yes || echo no)
had_etc=$([ -e /etc/troops ] && echo yes || echo no)
member=troops-ci-member
cleanup() {
    status=$?
    if [ "${KEEP:-0}" = 1 ]; then
        echo "KEEP=1: left the package state, /var/lib/troops, /etc/troops and $tmp in place"
        exit "$status"
    fi
    dpkg --purge troops >/dev/null 2>&1 || true
    [ "$had_state" = yes ] || rm -rf /var/lib/troops
    [ "$had_etc" = yes ] || rm -rf /etc/troops
    if id "$member" >/dev/null 2>&1; then userdel "$member"; fi
    [ "$had_group" = yes ] || groupdel troops 2>/dev/null || true
    # postinst adds safe.directory to /etc/gitconfig and purge takes it out; leave it as it was.
    if [ -e "$tmp/gitconfig.before" ]; then cp -p "$tmp/gitconfig.before" /etc/gitconfig; else rm -f /etc/gitconfig; fi
    rm -rf "$tmp"
    exit "$status"
}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/troops-ci.XXXXXX")
if [ -e /etc/gitconfig ]; then cp -p /etc/gitconfig "$tmp/gitconfig.before"; fi
trap cleanup EXIT

say "tools: cargo-deb, dpkg-dev (library dependencies), man-db, systemd (systemd-analyze, sysusers)"
missing=()
for pkg in dpkg-dev man-db systemd git openssh-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked --version '^3.8'

say "build the package"
# First the same as a newer revision, for the upgrade below, into $tmp: cargo-deb clears the
# packages it made before out of target/debian, where the one under test goes next.
mkdir -p "$tmp/newer"
newer=$(packaging/build-deb.sh --deb-revision 2 --output "$tmp/newer/")
[ -f "$newer" ] || fail "building the newer revision (got: $newer)"
deb=$(packaging/build-deb.sh)
[ -f "$deb" ] || fail "build-deb.sh did not print the package's path (got: $deb)"
[ -f "$newer" ] || fail "cargo-deb removed $newer"
echo "$deb ($(du -h "$deb" | cut -f1))"
version=$(dpkg-deb -f "$deb" Version)
upstream=${version%-*}

say "what the package says and holds"
control="$tmp/control"; mkdir -p "$control"
dpkg-deb -e "$deb" "$control/DEBIAN"
check "Depends names git" grep -Eq '^Depends:.*\bgit\b' "$control/DEBIAN/control"
check "the config is a conffile" grep -qx /etc/troops/troops.toml "$control/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    check "$script is valid sh" sh -n "$control/DEBIAN/$script"
    check "cargo-deb filled in $script" grep -q 'Automatically added by cargo-deb' "$control/DEBIAN/$script"
    if grep -q '#DEBHELPER#' "$control/DEBIAN/$script"; then fail "$script still has the token"; fi
done
check "postinst enables the unit" grep -q 'deb-systemd-helper enable troops.service' "$control/DEBIAN/postinst"
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for path in usr/bin/troops usr/bin/troops-hook usr/lib/systemd/system/troops.service \
    usr/lib/sysusers.d/troops.conf usr/lib/tmpfiles.d/troops.conf etc/troops/troops.toml \
    usr/share/man/man1/troops.1.gz usr/share/man/man1/troops-init.1.gz \
    usr/share/bash-completion/completions/troops usr/share/zsh/vendor-completions/_troops \
    usr/share/fish/vendor_completions.d/troops.fish; do
    grep -qx "./$path" <<<"$contents" || fail "the package lacks /$path"
done

say "dpkg -i"
# --path-include: slim images tell dpkg to skip man pages (path-exclude); these ones are checked.
dpkg --path-include='/usr/share/man/man1/troops*' -i "$deb"
check "dpkg -V: installed files match the package" test -z "$(dpkg -V troops)"
for path in /usr/bin/troops /usr/bin/troops-hook; do
    check "$path is executable" test -x "$path"
done
check "the group troops exists" getent group troops
check "enabled: multi-user.target wants troops.service" \
    test -L /etc/systemd/system/multi-user.target.wants/troops.service

say "postinst ran troops init for /var/lib/troops"
node=/var/lib/troops
check "the node repo exists" test -f $node/repo/main.git/HEAD
check "the node has its SSH key" test -s $node/ssh/id_ed25519
check "ssh/ is root's alone" test "$(stat -c %a $node/ssh)" = 700
for hook in pre-receive post-receive; do
    check "$hook runs /usr/bin/troops-hook" grep -q "exec '/usr/bin/troops-hook' $hook" $node/repo/main.git/hooks/$hook
done
check "the repo records the state dir" test "$(git --git-dir=$node/repo/main.git config troops.stateDir)" = $node
check "the repo records the config" test "$(git --git-dir=$node/repo/main.git config troops.config)" = /etc/troops/troops.toml
check "the node repo belongs to admin_group" test "$(stat -c %G $node/repo/main.git)" = troops
key_before=$(sha256sum $node/ssh/id_ed25519.pub)

say "troops --version, man troops, completions"
out=$(/usr/bin/troops --version)
echo "$out"
check "troops --version ($out) names version $upstream" test "$out" = "troops $upstream"
check "the example config parses (troops roles with the shipped troops.toml)" \
    /usr/bin/troops --state-dir $node --config /etc/troops/troops.toml roles >/dev/null
man_out=$(MANPAGER=cat MANWIDTH=100 man troops 2>&1) || fail "man troops: $man_out"
check "man troops lists the subcommands" grep -q 'troops-init(1)' <<<"$man_out"
check "man troops has EXIT STATUS" grep -q 'EXIT STATUS' <<<"$man_out"
check "man troops-pull works" sh -c 'MANPAGER=cat man troops-pull | grep -q "fetch every remote"'
bash_completes() { # bash_completes WORD...: what bash completion offers after `troops WORD...`
    bash -c 'source /usr/share/bash-completion/completions/troops
        COMP_WORDS=(troops "$@"); COMP_CWORD=$#; COMP_LINE="troops $*"; COMP_POINT=${#COMP_LINE}
        _troops troops "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf "%s\n" "${COMPREPLY[@]}"' _ "$@"
}
check "bash completes subcommands" grep -qx init <(bash_completes in)
check "bash completes flags of init" grep -qx -- --remote <(bash_completes init --re)
if command -v zsh >/dev/null; then check "the zsh completion parses" zsh -n /usr/share/zsh/vendor-completions/_troops; fi
if command -v fish >/dev/null; then check "the fish completion parses" fish -n /usr/share/fish/vendor_completions.d/troops.fish; fi

say "systemd-analyze verify (the unit, as installed), sysusers and tmpfiles"
# Strict: any warning fails (it also checks that ExecStart= and the man: Documentation= exist).
verify=$(systemd-analyze verify /usr/lib/systemd/system/troops.service 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
echo "  ok: systemd-analyze verify troops.service"
systemd-tmpfiles --root="$tmp/root" --create /usr/lib/tmpfiles.d/troops.conf
check "tmpfiles makes the state dir" test -d "$tmp/root/var/lib/troops/ssh"

say "a push deploy and a pull deploy, with the installed binaries, in $tmp"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$tmp/home"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=CI GIT_AUTHOR_EMAIL=ci@example.com GIT_COMMITTER_NAME=CI GIT_COMMITTER_EMAIL=ci@example.com
mkdir -p "$HOME" "$tmp/out"
state="$tmp/node" config="$tmp/troops.toml"
troops_at() { troops --state-dir "$state" --config "$config" "$@"; }
printf 'hostname = "ci-1"\n' > "$config"
git init -q --bare -b main "$tmp/mirror.git"
troops_at init --remote "mirror=$tmp/mirror.git" --role web >/dev/null
check "the temp node's hooks run the installed troops-hook" \
    grep -q "exec '/usr/bin/troops-hook'" "$state/repo/main.git/hooks/post-receive"

git init -q -b main "$tmp/deploy"
cd "$tmp/deploy"
cat > troops.toml <<PLAN
[[step]]
name = "record"
roles = ["web"]
run = 'echo "\$TROOPS_COMMIT \$TROOPS_ROLES" > "$tmp/out/\$TROOPS_TRIGGER"; echo recorded \$TROOPS_TRIGGER'

[[step]]
name = "db-only"
roles = ["db"]
run = "exit 1"
PLAN
git add -A && git commit -q -m "plan"
push_out=$(git push "$state/repo/main.git" main 2>&1) || fail "git push to the node: $push_out"
echo "$push_out" | sed 's/^/  /'
check "the push streamed the run back" grep -q 'remote: .*recorded push' <<<"$push_out"
check "the push deploy ran with its trigger, commit and roles" \
    test "$(cat "$tmp/out/push")" = "$(git rev-parse HEAD) web"
check "the push deploy moved refs/troops/deployed" \
    test "$(git --git-dir="$state/repo/main.git" rev-parse refs/troops/deployed)" = "$(git rev-parse HEAD)"

echo v2 > VERSION && git add -A && git commit -q -m v2
git push -q "$tmp/mirror.git" main
troops_at pull
check "the pull deploy ran the mirror's tip" test "$(cat "$tmp/out/pull")" = "$(git rev-parse HEAD) web"
check "the pull deploy moved refs/troops/deployed" \
    test "$(git --git-dir="$state/repo/main.git" rev-parse refs/troops/deployed)" = "$(git rev-parse HEAD)"
troops_at status
for run in 1:push 2:pull; do
    id=${run%:*} trigger=${run#*:}
    record="$state/runs/$id/run.json"
    check "run $id is recorded as a $trigger run" grep -q "^  \"trigger\": \"$trigger\"" "$record"
    check "run $id succeeded" grep -q '^  "status": "succeeded"' "$record"
    check "run $id left out the step for role db" sh -c '! grep -q db-only "$1"' _ "$record"
done
troops_at log | tail -n 3
cd - >/dev/null

say "a member of the group troops pushes to the installed node, as themselves"
# The admin group model, as the package sets it up: the group (sysusers), the node shared with
# it (troops init), safe.directory for the root-owned repo (postinst). With no daemon running, the
# hook runs the plan in-process, as the pusher.
check "postinst named the node repo in safe.directory" \
    sh -c 'env -u GIT_CONFIG_NOSYSTEM /usr/bin/git config --system --get-all safe.directory | grep -qx /var/lib/troops/repo/main.git'
id "$member" >/dev/null 2>&1 || useradd --system --no-create-home --no-user-group --groups troops --shell /usr/sbin/nologin "$member"
chmod 711 "$tmp"
install -d -o "$member" "$tmp/member"
as_member() { (cd "$tmp/member" && env -u GIT_CONFIG_NOSYSTEM HOME="$tmp/member" setpriv --reuid "$member" --regid "$(id -g "$member")" --init-groups "$@"); }
as_member git init -q -b main deploy
printf '[[step]]\nname = "whoami"\nrun = "id -un > %s/ran-as"\n' "$tmp/member" > "$tmp/member/deploy/troops.toml"
chown "$member" "$tmp/member/deploy/troops.toml"
as_member git -C deploy add troops.toml
as_member git -C deploy commit -q -m "a member's plan"
member_out=$(as_member git -C deploy push /var/lib/troops/repo/main.git main 2>&1) || fail "a member's push: $member_out"
echo "$member_out" | sed 's/^/  /'
check "the member's push ran the plan as the member" test "$(cat "$tmp/member/ran-as")" = "$member"
check "the member's push deployed" test "$(git --git-dir=$node/repo/main.git rev-parse refs/troops/deployed)" = \
    "$(as_member git -C deploy rev-parse HEAD)"

say "an upgrade keeps the operator's config, the node and its runs"
/usr/bin/troops init --role ci >/dev/null   # edits /etc/troops/troops.toml, the conffile
dpkg --path-include='/usr/share/man/man1/troops*' -i "$newer" >/dev/null
check "the newer package is installed" test "$(dpkg-query -W -f='${Version}' troops)" = "$upstream-2"
check "the edited config stays" grep -q '"ci"' /etc/troops/troops.toml
check "the node keeps its roles" sh -c '/usr/bin/troops roles | grep -qx ci'
check "the node keeps its key" test "$(sha256sum $node/ssh/id_ed25519.pub)" = "$key_before"
check "the node keeps its runs" test -f $node/runs/1/run.json
check "the hooks still run /usr/bin/troops-hook" grep -q "exec '/usr/bin/troops-hook'" $node/repo/main.git/hooks/post-receive

say "dpkg -r: the service goes, the node stays"
dpkg -r troops
check "the binaries are gone" test ! -e /usr/bin/troops
check "the unit is masked: nothing starts it" test "$(readlink /etc/systemd/system/troops.service)" = /dev/null
check "the node repo stays" test -f $node/repo/main.git/HEAD
check "the node's runs stay" test -f $node/runs/1/run.json
check "the node's key stays, unchanged" test "$(sha256sum $node/ssh/id_ed25519.pub)" = "$key_before"
check "the config (a conffile) stays" test -f /etc/troops/troops.toml
check "the group stays" getent group troops
check "the temp node stays" test -f "$state/runs/2/run.json"

say "dpkg -i again: enabled as before, same node"
dpkg --path-include='/usr/share/man/man1/troops*' -i "$deb" >/dev/null
check "unmasked" test ! -e /etc/systemd/system/troops.service
check "enabled again" test -L /etc/systemd/system/multi-user.target.wants/troops.service
check "troops init kept the node's key" test "$(sha256sum $node/ssh/id_ed25519.pub)" = "$key_before"

say "dpkg --purge: the node still stays"
dpkg --purge troops
check "purge keeps /var/lib/troops" test -f $node/repo/main.git/HEAD
check "purge forgets the unit" test ! -e /etc/systemd/system/multi-user.target.wants/troops.service
check "purge takes the node repo out of safe.directory" \
    sh -c '! env -u GIT_CONFIG_NOSYSTEM /usr/bin/git config --system --get-all safe.directory | grep -qx /var/lib/troops/repo/main.git'

say "packaging check passed in $((SECONDS - started))s"
