#!/usr/bin/env bash
# Tests the Debian package the way hospital IT meets it (CI runs this).
#
#   scripts/test-package.sh [--bin-dir DIR]
#
# Without --bin-dir it builds the release binaries (scripts/build-release.sh)
# and also checks that rebuilding the workspace's own crates gives the same
# bytes. Then, each step timed:
#  1. reproducibility: the .deb built twice from the same binaries, sha256
#     compared;
#  2. lintian --pedantic: no error, no warning (overrides carry a reason in
#     packaging/debian/lintian-overrides);
#  3. in a clean Debian 12 root made by mmdebstrap (base cached under
#     /var/tmp/medgemma-pkgtest; apt has no package lists there, so installing
#     works exactly as offline): install an older build (0.1.0-0~prev), edit
#     a conffile, upgrade, check the edit survived; the user, group,
#     directories, units and enablement links; medgemmactl --version and
#     doctor (exit 2 without a model, and says so); the test-engine double
#     is absent; no test binary shipped; postinst started nothing (systemd
#     is not running there);
#  4. systemd-analyze verify on every unit, and systemd-analyze security
#     --offline gated: medgemmad.service <= 1.5, medgemma-proxy.service <= 1.0;
#  5. a copy of that root booted with systemd as PID 1 (systemd-nspawn):
#     after `medgemmactl setup` with the Gemma 3 270M demo model, the sockets
#     and medgemmad are active, the daemon runs as medgemma with no_new_privs,
#     seccomp and no capability, 127.0.0.1:6006 answers through the proxy with
#     the sandbox enforced, and medgemmactl status works on the admin socket;
#  6. remove keeps the audit log /var/log/medgemma; purge leaves only the
#     documented leftovers (the medgemma user and medgemma-admin group).
# Needs root (chroot, mounts); installs its tools with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
export LC_ALL=C.UTF-8

bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    *) echo "test-package: unknown argument $1" >&2; exit 64 ;;
  esac
done

t_start=$(date +%s)
step() { printf '\n== %s (%s, +%ss)\n' "$1" "$(date -u +%H:%M:%S)" "$(($(date +%s) - t_start))"; }
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

step "tools (apt, idempotent)"
need=()
for p in lintian mmdebstrap systemd systemd-container dpkg-dev binutils fakeroot; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "lintian $(lintian --version | awk '{print $2}'), mmdebstrap $(mmdebstrap --version | awk '{print $2}'), $(systemd-analyze --version | head -1)"

work="$(mktemp -d /var/tmp/medgemma-pkgtest.run.XXXXXX)"
root="$work/root"
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$bin_dir" ]; then
  step "release binaries (scripts/build-release.sh)"
  bin_dir="$(scripts/build-release.sh | tail -n 1)"
  sha_before="$(cd "$bin_dir" && sha256sum medgemmad medgemmactl)"
  echo "$sha_before"
  step "reproducible binaries: cargo clean -p medgemmad -p medgemmactl, rebuild, compare"
  mkdir -p "$work/bin1"
  cp "$bin_dir/medgemmad" "$bin_dir/medgemmactl" "$work/bin1/"
  CARGO_TARGET_DIR="$(dirname "$bin_dir")" cargo clean --release -p medgemmad -p medgemmactl
  bin_dir="$(scripts/build-release.sh | tail -n 1)"
  sha_after="$(cd "$bin_dir" && sha256sum medgemmad medgemmactl)"
  echo "$sha_after"
  [ "$sha_before" = "$sha_after" ] || fail "rebuilding medgemmad/medgemmactl changed their bytes"
  ok "rebuilt binaries are identical"
fi
ls -l "$bin_dir/medgemmad" "$bin_dir/medgemmactl"

step "build the .deb twice, and an older version for the upgrade test"
deb_a="$(scripts/build-deb.sh --bin-dir "$bin_dir" --out "$work/a" 2>/dev/null | tail -n 1)"
deb_b="$(scripts/build-deb.sh --bin-dir "$bin_dir" --out "$work/b" 2>/dev/null | tail -n 1)"
deb_prev="$(scripts/build-deb.sh --bin-dir "$bin_dir" --version 0.1.0-0~prev --out "$work/prev" 2>/dev/null | tail -n 1)"
sha_a="$(sha256sum <"$deb_a" | cut -d' ' -f1)"
sha_b="$(sha256sum <"$deb_b" | cut -d' ' -f1)"
echo "$(basename "$deb_a"): $(stat -c %s "$deb_a") bytes, installed $(dpkg-deb -f "$deb_a" Installed-Size) KiB"
echo "sha256 first build:  $sha_a"
echo "sha256 second build: $sha_b"
[ "$sha_a" = "$sha_b" ] || fail "the .deb is not reproducible"
ok "the .deb is reproducible"
dpkg-deb -f "$deb_a" Depends Recommends Suggests
if dpkg-deb -c "$deb_a" | grep -E 'sandbox-probe|audit-crash-writer|scripted'; then
  fail "a test binary is in the package"
fi
ok "no test binary in the package"

step "lintian --pedantic"
lintian_out="$work/lintian.txt"
# Root is fine here: lintian only reads the file.
lintian --pedantic --display-info --show-overrides "$deb_a" 2>&1 | grep -v 'running with root privileges' | tee "$lintian_out" || true
if grep -E '^(E|W):' "$lintian_out"; then
  fail "lintian reports errors or warnings"
fi
ok "lintian: $(grep -c '^E:' "$lintian_out" || true) errors, $(grep -c '^W:' "$lintian_out" || true) warnings, $(grep -c '^I:' "$lintian_out" || true) info, $(grep -c '^P:' "$lintian_out" || true) pedantic, $(grep -c '^O:' "$lintian_out" || true) overridden"

step "clean Debian 12 root (mmdebstrap, cached)"
# The base holds what the package depends on, so that installing it needs no
# package list and no network: the offline install hospital IT does.
deps="$(dpkg-deb -f "$deb_a" Depends | tr ',' '\n' | sed -E 's/\(.*\)//; s/\|.*//; s/ //g' | grep . | sort -u | paste -sd, -)"
cache=/var/tmp/medgemma-pkgtest
mkdir -p "$cache"
base="$cache/bookworm-$(printf '%s' "$deps" | sha256sum | cut -c1-12).tar"
if [ ! -s "$base" ]; then
  echo "making $base with: $deps"
  mmdebstrap --quiet --variant=minbase --format=tar --include="$deps" bookworm "$base.partial" \
    http://deb.debian.org/debian
  mv "$base.partial" "$base"
fi
echo "base: $base ($(stat -c %s "$base") bytes)"
mkdir -p "$root"
tar -C "$root" --numeric-owner -xf "$base"
for m in proc sys dev; do
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    *) mount --rbind "/$m" "$root/$m" ;;
  esac
  mounted=("$root/$m" "${mounted[@]}")
done
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
[ ! -e "$root/run/systemd/system" ] || fail "the test root claims systemd is running"
# Files present before the package, to compare with after the purge.
snapshot() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./tmp \
    -o -path ./var/cache/apt -o -path ./var/lib/apt -o -path ./var/lib/dpkg -o -path ./var/log \
    -o -path ./var/cache/debconf \) -prune -o -print | sort)
}
snapshot >"$work/before.txt"
cp "$deb_prev" "$deb_a" "$root/tmp/"
# Record any call that could start a unit (dpkg's PATH puts /usr/local
# first); the maintainer scripts must make none while systemd is not running.
for spy in systemctl deb-systemd-invoke; do
  printf '#!/bin/sh\necho "%s $*" >>/tmp/systemctl-calls.log\n' "$spy" >"$root/usr/local/sbin/$spy"
  chmod 0755 "$root/usr/local/sbin/$spy"
done

step "install the older build (0.1.0-0~prev), offline"
t0=$(date +%s)
in_root apt-get install -y -q "/tmp/$(basename "$deb_prev")" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "apt install of the older build"; }
grep -E '^medgemma:|Recommended|NEW' "$work/install.log" || true
echo "install took $(($(date +%s) - t0)) s"
[ "$(in_root dpkg-query -W -f '${Version}' medgemma)" = "0.1.0-0~prev" ] || fail "older build not installed"
ok "0.1.0-0~prev installed"

step "edit a conffile, upgrade to $(dpkg-deb -f "$deb_a" Version)"
sed -i 's|^label = "MedGemma 1.5 4B"$|label = "MedGemma 1.5 4B (ward 3)"|' "$root/etc/medgemma/medgemmad.toml"
grep -q '(ward 3)' "$root/etc/medgemma/medgemmad.toml" || fail "could not edit the conffile"
t0=$(date +%s)
in_root apt-get install -y -q "/tmp/$(basename "$deb_a")" </dev/null >"$work/upgrade.log" 2>&1 ||
  { cat "$work/upgrade.log"; fail "upgrade"; }
echo "upgrade took $(($(date +%s) - t0)) s"
[ "$(in_root dpkg-query -W -f '${Version}' medgemma)" = "$(dpkg-deb -f "$deb_a" Version)" ] || fail "upgrade did not happen"
grep -q '^label = "MedGemma 1.5 4B (ward 3)"$' "$root/etc/medgemma/medgemmad.toml" || fail "the conffile edit was lost on upgrade"
ok "upgraded; the administrator's conffile edit survived"
# The answer-style presets are where the packaged configuration points, as conffiles.
styles_dir="$(sed -n 's/^styles_dir = "\(.*\)"$/\1/p' "$root/etc/medgemma/medgemmad.toml")"
[ "$styles_dir" = /etc/medgemma/styles ] || fail "answers.styles_dir is '$styles_dir', not the packaged presets"
for preset in "$repo"/packaging/styles/*.txt; do
  name="$(basename "$preset")"
  cmp -s "$preset" "$root$styles_dir/$name" || fail "preset $name not installed in $styles_dir"
  dpkg-deb -I "$deb_a" conffiles | grep -qxF "$styles_dir/$name" || fail "preset $name is not a conffile"
done
ok "the answer-style presets are installed in $styles_dir as conffiles"
grep -E 'start|restart|daemon-reload' "$root/tmp/systemctl-calls.log" 2>/dev/null &&
  fail "a maintainer script tried to start a unit without systemd running"
ok "postinst started nothing: no /run/systemd/system in the root, no systemctl/deb-systemd-invoke call"

step "what the package set up"
in_root getent passwd medgemma || fail "no medgemma user"
in_root getent group medgemma-admin || fail "no medgemma-admin group"
in_root id medgemma
for d in "/var/lib/medgemma 700 medgemma medgemma" "/var/log/medgemma 700 medgemma medgemma" \
  "/run/medgemma-admin 2750 medgemma medgemma-admin"; do
  set -- $d
  got="$(in_root stat -c '%a %U %G' "$1")"
  [ "$got" = "$2 $3 $4" ] || fail "$1 is '$got', expected '$2 $3 $4'"
  ok "$1 $got"
done
for u in medgemmad.service medgemmad.socket medgemmad-admin.socket medgemma-proxy.socket medgemma-proxy.service medgemma-nvidia-uvm.service; do
  [ -f "$root/lib/systemd/system/$u" ] || fail "unit $u missing"
done
for l in multi-user.target.wants/medgemmad.service sockets.target.wants/medgemmad.socket \
  sockets.target.wants/medgemmad-admin.socket \
  sockets.target.wants/medgemma-proxy.socket; do
  [ -L "$root/etc/systemd/system/$l" ] || fail "enablement link $l missing"
  ok "enabled: $l -> $(readlink "$root/etc/systemd/system/$l")"
done
in_root dpkg-query -W -f '${Conffiles}\n' medgemma
in_root medgemmactl --version | tee "$work/version.txt"
grep -q "^medgemmactl $(dpkg-deb -f "$deb_a" Version | cut -d- -f1)" "$work/version.txt" || fail "medgemmactl --version"
in_root medgemmad --version | head -1
set +e
in_root medgemmactl doctor >"$work/doctor.txt" 2>&1
doctor_rc=$?
set -e
cat "$work/doctor.txt"
[ "$doctor_rc" -eq 2 ] || fail "medgemmactl doctor without a model exited $doctor_rc, expected 2 (failures)"
grep -q '^\[FAIL\] model pins: /var/lib/medgemma/model.pins.json is missing' "$work/doctor.txt" ||
  fail "doctor does not report the missing model pins"
grep -q '^\[FAIL\] audit log: the key file /var/lib/medgemma/audit-key/current does not exist' "$work/doctor.txt" ||
  fail "doctor does not report the missing audit key"
grep -q 'fix: run medgemmactl setup' "$work/doctor.txt" || fail "doctor does not point to medgemmactl setup"
grep -q '^\[ok  \] configuration: /etc/medgemma/medgemmad.toml is readable' "$work/doctor.txt" ||
  fail "doctor does not read the packaged configuration"
ok "doctor exits 2, reads the packaged configuration, reports the missing pins and key, and names the fix"
# The scripted test double must not be in the shipped daemon.
cat >"$root/tmp/scripted.toml" <<'TOML'
[model]
path = "/nonexistent"
label = "x"
demo = true
[engine]
backend = "scripted"
[server]
ui_socket = "/run/medgemma/ui.sock"
[audit]
dir = "/var/log/medgemma"
TOML
set +e
in_root medgemmad serve --config /tmp/scripted.toml >"$work/scripted.txt" 2>&1
scripted_rc=$?
set -e
cat "$work/scripted.txt"
[ "$scripted_rc" -eq 2 ] && grep -q 'test-engine' "$work/scripted.txt" ||
  fail "the shipped medgemmad accepts the scripted test engine (rc $scripted_rc)"
ok "the shipped daemon refuses backend = \"scripted\" (no test-engine feature)"

step "systemd-analyze verify (every unit, in the installed root)"
for u in "$root"/lib/systemd/system/medgemma*; do
  name="$(basename "$u")"
  # --man=no: the Documentation= pages are checked below against the root.
  if ! SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --root="$root" "$name" >"$work/verify.txt" 2>&1 ||
    [ -s "$work/verify.txt" ]; then
    cat "$work/verify.txt"
    fail "systemd-analyze verify $name"
  fi
  ok "verify $name"
done
for page in medgemmad.8 medgemmactl.1; do
  [ -f "$root/usr/share/man/man${page##*.}/$page.gz" ] || fail "man page $page missing"
done
ok "Documentation= man pages present"

step "systemd-analyze security --offline (gated)"
gate() { # unit max
  systemd-analyze security --offline=yes --root="$root" --no-pager "$1" >"$work/sec.txt" 2>&1 || true
  grep -E '^(✗|✓)' "$work/sec.txt" | grep '✗' || true
  local score
  score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$work/sec.txt")"
  [ -n "$score" ] || { cat "$work/sec.txt"; fail "no exposure score for $1"; }
  echo "exposure $1: $score (gate <= $2)"
  awk -v s="$score" -v m="$2" 'BEGIN { exit !(s <= m) }' || fail "$1 exposure $score > $2"
}
gate medgemmad.service 1.5
gate medgemma-proxy.service 1.0

rm -f "$root/usr/local/sbin/systemctl" "$root/usr/local/sbin/deb-systemd-invoke"

step "boot a copy of the root with systemd as PID 1 (systemd-nspawn): the units for real"
# A copy, so that the boot's own files (journal, random seed, the model
# copied in) do not blur the purge check below. The real Gemma 3 270M demo
# model stands in for MedGemma (scripts/fetch-assets.sh).
assets="${MEDGEMMA_ASSETS:-$(scripts/fetch-assets.sh | tail -n 1)}"
gguf="$assets/gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
[ -f "$gguf" ] || fail "no demo model at $gguf"
boot="$work/boot"
mkdir -p "$boot"
# --one-file-system: not the /proc, /sys and /dev mounted into the root.
tar -C "$root" --one-file-system --numeric-owner -cf - . | tar -C "$boot" --numeric-owner -xf -
mkdir -p "$boot/srv/medgemma"
cp "$gguf" "$boot/srv/medgemma/"
chroot "$boot" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  medgemmactl setup --model /srv/medgemma/gemma-3-270m-q4_k_m.gguf --demo >"$work/setup.txt" 2>&1 ||
  { cat "$work/setup.txt"; fail "medgemmactl setup"; }
grep -E '^(model|pins|config):' "$work/setup.txt"
# --private-network: port 6006 lives in the container, not on this machine.
# --system-call-filter: nspawn's own filter lacks the Landlock calls and
# seccomp(2), which the daemon needs (a property of the test container, not
# of the unit; on a real host only the unit's filter applies).
t0=$(date +%s)
systemd-nspawn -q -D "$boot" --register=no --keep-unit --private-network \
  --system-call-filter='landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp' \
  --boot >"$work/console.log" 2>&1 &
nspawn=$!
stop_boot() { kill -TERM "$nspawn" 2>/dev/null || true; wait "$nspawn" 2>/dev/null || true; }
trap 'stop_boot; cleanup' EXIT
pid1=""
for _ in $(seq 60); do
  for p in $(pgrep -x systemd || true); do
    a=$p
    while [ "$a" -gt 1 ]; do
      [ "$a" = "$nspawn" ] && { pid1=$p; break 2; }
      a=$(awk '/^PPid:/{print $2}' "/proc/$a/status" 2>/dev/null || echo 1)
    done
  done
  sleep 1
done
[ -n "$pid1" ] || { cat "$work/console.log"; fail "systemd did not boot in the container"; }
in_boot() { nsenter -t "$pid1" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_COLORS=0 "$@"; }
in_boot timeout 120 systemctl is-system-running --wait >/dev/null || true
for _ in $(seq 60); do
  [ "$(in_boot systemctl is-active medgemmad.service)" = active ] && break
  sleep 1
done
in_boot journalctl -u medgemmad --no-pager -o cat | grep -v 'loopback network device'
for u in medgemmad.socket medgemmad-admin.socket medgemma-proxy.socket medgemmad.service; do
  [ "$(in_boot systemctl is-active "$u")" = active ] || fail "$u is not active after boot"
  ok "$u active after boot"
done
echo "boot to a serving daemon: $(($(date +%s) - t0)) s"
main="$(in_boot systemctl show -P MainPID medgemmad.service)"
in_boot grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|CapEff|CapBnd):' "/proc/$main/status" | tee "$work/daemon-status.txt"
grep -qE '^NoNewPrivs:\s+1$' "$work/daemon-status.txt" || fail "daemon without no_new_privs"
grep -qE '^Seccomp:\s+2$' "$work/daemon-status.txt" || fail "daemon without seccomp"
grep -qE '^CapEff:\s+0+$' "$work/daemon-status.txt" || fail "daemon holds capabilities"
[ "$(awk '/^Uid:/{print $2}' "$work/daemon-status.txt")" = "$(in_boot id -u medgemma)" ] || fail "daemon is not user medgemma"
# The browser's path: 127.0.0.1:6006 -> medgemma-proxy -> /run/medgemma/ui.sock -> medgemmad.
in_boot bash -c 'exec 3<>/dev/tcp/127.0.0.1/6006 && printf "GET /api/status HTTP/1.1\r\nHost: localhost:6006\r\nConnection: close\r\n\r\n" >&3 && timeout 10 cat <&3' \
  >"$work/status-http.txt" || true
head -1 "$work/status-http.txt"
grep -q '^HTTP/1.1 200' "$work/status-http.txt" || { cat "$work/status-http.txt"; fail "no answer on 127.0.0.1:6006"; }
grep -o '"enforced":[a-z]*' "$work/status-http.txt" | head -1
grep -o '"problems":\[[^]]*\]' "$work/status-http.txt" | head -1
grep -q '"enforced":true' "$work/status-http.txt" || fail "the daemon's sandbox is not enforced under systemd"
ok "127.0.0.1:6006 answers through the proxy; the daemon reports its sandbox enforced"
in_boot stat -c '%A %U %G %n' /run/medgemma/ui.sock /run/medgemma-admin /run/medgemma-admin/admin.sock
[ "$(in_boot stat -c '%a %G' /run/medgemma-admin/admin.sock)" = "660 medgemma-admin" ] ||
  fail "the admin socket is not 0660 medgemma-admin"
set +e
in_boot medgemmactl status >"$work/ctl-status.txt" 2>&1
status_rc=$?
set -e
head -3 "$work/ctl-status.txt"
[ "$status_rc" -le 1 ] && grep -q '^medgemmad ' "$work/ctl-status.txt" ||
  fail "medgemmactl status over the admin socket (exit $status_rc)"
ok "medgemmactl status answers over the admin socket (exit $status_rc: 1 = degraded, the CPU runs the model)"
[ "$(in_boot systemctl show -P WatchdogUSec medgemmad.service)" = 1min ] || fail "no watchdog"
[ "$(in_boot systemctl show -P NRestarts medgemmad.service)" = 0 ] || fail "medgemmad restarted"
stop_boot
trap cleanup EXIT
ok "container stopped"

step "remove: the audit log stays"
# A stand-in audit file; the real log is written by the daemon.
echo '{"stand-in":"audit record"}' >"$root/var/log/medgemma/audit-test.jsonl"
t0=$(date +%s)
in_root dpkg --remove medgemma >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "remove"; }
echo "remove took $(($(date +%s) - t0)) s"
[ -f "$root/var/log/medgemma/audit-test.jsonl" ] || fail "remove deleted the audit log"
[ ! -e "$root/usr/sbin/medgemmad" ] || fail "remove left the daemon"
[ -f "$root/etc/medgemma/medgemmad.toml" ] || fail "remove deleted the configuration"
ok "removed; /var/log/medgemma, /var/lib/medgemma and /etc/medgemma kept"

step "purge: only documented leftovers"
t0=$(date +%s)
in_root dpkg --purge medgemma >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge"; }
echo "purge took $(($(date +%s) - t0)) s"
for d in /etc/medgemma /var/lib/medgemma /var/cache/medgemma /var/log/medgemma /run/medgemma-admin; do
  [ ! -e "$root$d" ] || fail "purge left $d"
done
snapshot >"$work/after.txt"
# Documented leftovers: the user and group (entries in these files, and the
# backups the account tools keep), and deb-systemd-helper's state folders.
leftover="$(comm -13 "$work/before.txt" "$work/after.txt" |
  grep -vE '^\./etc/(passwd|group|shadow|gshadow)-$' |
  grep -vE '^\./var/lib/systemd(/deb-systemd-helper-(enabled|masked))?$' || true)"
echo "new paths after purge: ${leftover:-none}"
[ -z "$leftover" ] || fail "purge left undocumented files"
missing="$(comm -23 "$work/before.txt" "$work/after.txt" || true)"
[ -z "$missing" ] || fail "purge deleted files it did not own: $missing"
in_root getent passwd medgemma >/dev/null || fail "the medgemma user should stay after purge"
ok "purged; left: the medgemma user and medgemma-admin group (documented)"

step "done in $(($(date +%s) - t_start)) s"
