#!/usr/bin/env bash
# Install Tollgate as a systemd service on a Debian host, in one command:
#
#   sudo deploy/install.sh [--binary PATH] [--root DIR] [--no-start]
#
#   --binary PATH  the tollgate binary to install (default: target/release/tollgate,
#                  built with `cargo build --release -p tollgate` if missing)
#   --root DIR     install into DIR instead of / (a scratch tree or an image):
#                  the user is added to DIR/etc/passwd and DIR/etc/group, files
#                  are owned by its ids there, and systemctl is never called; the
#                  host's own users and services are left alone
#   --no-start     do not enable or start the service
#
# What it does (every step is idempotent, so running it again is safe; it is
# also how you upgrade: build, then run it again):
#   - system user and group `tollgate` (no login, home /var/lib/tollgate)
#   - /usr/local/bin/tollgate                     0755 root:root (replaced atomically)
#   - /etc/tollgate/                              0750 root:tollgate
#   - /etc/tollgate/tollgate.yaml                 0640 root:tollgate, only if absent
#   - /etc/tollgate/env                           0600 root:tollgate, only if absent,
#                                                 with a generated admin token and
#                                                 placeholders for provider keys
#   - /etc/tollgate/<prices_file>                 the price table the config names, if absent
#   - /etc/systemd/system/tollgate.service        0644 root:root (always the kit's; customise
#                                                 with `systemctl edit tollgate`)
#   - /var/lib/tollgate/                          0750 tollgate:tollgate (the SQLite store)
#   - then, on a real host: systemctl daemon-reload; if the service runs and the
#     binary changed, `systemctl reload tollgate` (zero-downtime upgrade);
#     otherwise `systemctl enable --now tollgate` once the config checks out.
#
# See docs/operations.md.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "install.sh: error: $*" >&2
  exit 1
}

say() {
  echo "install.sh: $*"
}

ROOT=""
BINARY=""
START=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root)
      [[ $# -ge 2 ]] || die "--root needs a directory"
      ROOT="$2"
      shift 2
      ;;
    --root=*)
      ROOT="${1#--root=}"
      shift
      ;;
    --binary)
      [[ $# -ge 2 ]] || die "--binary needs a path"
      BINARY="$2"
      shift 2
      ;;
    --binary=*)
      BINARY="${1#--binary=}"
      shift
      ;;
    --no-start)
      START=0
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown argument: $1"
      ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"
SVC_USER=tollgate
SVC_GROUP=tollgate

if [[ -n "$ROOT" ]]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
  [[ "$ROOT" != "/" ]] || ROOT=""
fi
IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1
if [[ -z "$ROOT" && $IS_ROOT -eq 0 ]]; then
  die "run as root (sudo $0 $*), or use --root DIR to install into a directory"
fi
if [[ -n "$ROOT" && $IS_ROOT -eq 0 ]]; then
  say "warning: not root: files in $ROOT keep your ownership (modes are still set)"
fi

# --- the binary -------------------------------------------------------------
if [[ -z "$BINARY" ]]; then
  BINARY="$REPO/target/release/tollgate"
  if [[ ! -x "$BINARY" ]]; then
    say "building $BINARY (cargo build --release -p tollgate)"
    if command -v cargo >/dev/null 2>&1; then
      (cd "$REPO" && cargo build --release -p tollgate)
    elif [[ -n "${SUDO_USER:-}" && "${SUDO_USER}" != root ]]; then
      # sudo drops the user's PATH; build as that user, with their toolchain.
      sudo -u "$SUDO_USER" -H bash -lc 'cd "$1" && cargo build --release -p tollgate' _ "$REPO"
    else
      die "cargo not found: build first (cargo build --release -p tollgate) or pass --binary PATH"
    fi
  fi
fi
[[ -f "$BINARY" && -x "$BINARY" ]] || die "no executable binary at $BINARY"
"$BINARY" --version >/dev/null 2>&1 || die "$BINARY does not run on this host (\`$BINARY --version\` failed)"

# --- user and group -----------------------------------------------------------
# Create the service user and group if missing; set SVC_UID and SVC_GID.
SVC_UID=""
SVC_GID=""

ensure_user_in_root() {
  local passwd="$ROOT/etc/passwd" group="$ROOT/etc/group" id uid gid
  mkdir -p "$ROOT/etc"
  [[ -e "$passwd" ]] || touch "$passwd"
  [[ -e "$group" ]] || touch "$group"
  gid="$(awk -F: -v n="$SVC_GROUP" '$1 == n { print $3 }' "$group")"
  uid="$(awk -F: -v n="$SVC_USER" '$1 == n { print $3 }' "$passwd")"
  if [[ -z "$gid" ]]; then
    # The highest free system id (useradd --system counts down from 999 too).
    for ((id = 999; id >= 100; id--)); do
      if ! awk -F: -v i="$id" '$3 == i { found = 1 } END { exit !found }' "$group"; then
        gid=$id
        break
      fi
    done
    [[ -n "$gid" ]] || die "no free system gid in $group"
    echo "$SVC_GROUP:x:$gid:" >>"$group"
    say "added group $SVC_GROUP ($gid) to $group"
  fi
  if [[ -z "$uid" ]]; then
    for ((id = gid; id >= 100; id--)); do
      if ! awk -F: -v i="$id" '$3 == i { found = 1 } END { exit !found }' "$passwd"; then
        uid=$id
        break
      fi
    done
    [[ -n "$uid" ]] || die "no free system uid in $passwd"
    echo "$SVC_USER:x:$uid:$gid:Tollgate AI gateway:/var/lib/tollgate:/usr/sbin/nologin" >>"$passwd"
    say "added user $SVC_USER ($uid) to $passwd"
  fi
  SVC_UID=$uid
  SVC_GID=$gid
}

ensure_user_on_host() {
  if ! getent group "$SVC_GROUP" >/dev/null; then
    groupadd --system "$SVC_GROUP"
    say "created group $SVC_GROUP"
  fi
  if ! getent passwd "$SVC_USER" >/dev/null; then
    useradd --system --gid "$SVC_GROUP" --home-dir /var/lib/tollgate --no-create-home \
      --shell /usr/sbin/nologin --comment "Tollgate AI gateway" "$SVC_USER"
    say "created user $SVC_USER"
  fi
  SVC_UID="$(id -u "$SVC_USER")"
  SVC_GID="$(getent group "$SVC_GROUP" | cut -d: -f3)"
}

if [[ -n "$ROOT" ]]; then
  ensure_user_in_root
else
  ensure_user_on_host
fi
[[ -n "$SVC_UID" && -n "$SVC_GID" ]] || die "could not resolve the $SVC_USER user"

# Owners by number: in --root mode the names exist only in $ROOT/etc/passwd.
own() { # own UID:GID PATH...
  local who="$1"
  shift
  if [[ $IS_ROOT -eq 1 ]]; then
    chown "$who" "$@"
  fi
}

# Copy SRC to DEST through a temporary file and a rename, so a running binary
# or a reader never sees a half-written file.
put() { # put MODE OWNER SRC DEST
  local mode="$1" owner="$2" src="$3" dest="$4" tmp
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp "$dest.XXXXXX")"
  cat "$src" >"$tmp"
  chmod "$mode" "$tmp"
  own "$owner" "$tmp"
  mv -f "$tmp" "$dest"
}

# --- files --------------------------------------------------------------------
BIN_DEST="$ROOT/usr/local/bin/tollgate"
ETC="$ROOT/etc/tollgate"
CONFIG="$ETC/tollgate.yaml"
ENVFILE="$ETC/env"
UNIT="$ROOT/etc/systemd/system/tollgate.service"
STATE="$ROOT/var/lib/tollgate"

BINARY_CHANGED=1
if [[ -f "$BIN_DEST" ]] && cmp -s "$BINARY" "$BIN_DEST"; then
  BINARY_CHANGED=0
  say "binary unchanged: $BIN_DEST ($("$BIN_DEST" --version 2>/dev/null || true))"
else
  put 0755 0:0 "$BINARY" "$BIN_DEST"
  say "installed $BIN_DEST ($("$BIN_DEST" --version 2>/dev/null || true))"
fi

mkdir -p "$ETC"
chmod 0750 "$ETC"
own "0:$SVC_GID" "$ETC"

CREATED_CONFIG=0
if [[ -e "$CONFIG" ]]; then
  say "kept the existing $CONFIG"
else
  put 0640 "0:$SVC_GID" "$DEPLOY/tollgate.yaml" "$CONFIG"
  CREATED_CONFIG=1
  say "installed $CONFIG (from deploy/tollgate.yaml)"
fi

CREATED_ENV=0
if [[ -e "$ENVFILE" ]]; then
  say "kept the existing $ENVFILE"
else
  token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  tmpenv="$(mktemp)"
  cat >"$tmpenv" <<EOF
# Environment of the tollgate service: systemd's EnvironmentFile= (KEY=value, one
# per line; no "export"). Read before every start and every \`systemctl reload\`.
# Secrets live here and nowhere else; keep this file 0600.
# /etc/tollgate/tollgate.yaml references them as \${NAME}.

# Admin API token (Authorization: Bearer ...), generated at install time.
TOLLGATE_ADMIN_TOKEN=$token

# Provider keys: set the ones your config uses.
#OPENAI_API_KEY=sk-...
#ANTHROPIC_API_KEY=sk-ant-...
#GEMINI_API_KEY=...

# Admin listener (/metrics, /healthz, admin API); default 127.0.0.1:9090.
#TOLLGATE_ADMIN_LISTEN=10.0.0.5:9090

# Log level (error, warn, info, debug).
#RUST_LOG=info
EOF
  put 0600 "0:$SVC_GID" "$tmpenv" "$ENVFILE"
  rm -f "$tmpenv"
  CREATED_ENV=1
  say "installed $ENVFILE (mode 0600; fill in the provider keys)"
fi

# The price table, if the config names one (relative to the config's directory).
prices="$(sed -n 's/^prices_file:[[:space:]]*["'\'']\{0,1\}\([^"'\''#[:space:]]*\).*/\1/p' "$CONFIG" | head -n1)"
if [[ -n "$prices" ]]; then
  case "$prices" in
    /*) prices_dest="$ROOT$prices" ;;
    *) prices_dest="$ETC/$prices" ;;
  esac
  if [[ ! -e "$prices_dest" ]]; then
    put 0640 "0:$SVC_GID" "$REPO/conf/prices.yaml" "$prices_dest"
    say "installed $prices_dest (from conf/prices.yaml)"
  elif cmp -s "$REPO/conf/prices.yaml" "$prices_dest"; then
    say "price table up to date: $prices_dest"
  else
    put 0640 "0:$SVC_GID" "$REPO/conf/prices.yaml" "$prices_dest.dist"
    say "kept your $prices_dest; the shipped table is in $prices_dest.dist"
  fi
fi

put 0644 0:0 "$DEPLOY/tollgate.service" "$UNIT"
say "installed $UNIT"

mkdir -p "$STATE"
chmod 0750 "$STATE"
own "$SVC_UID:$SVC_GID" "$STATE"

# --- systemd ------------------------------------------------------------------
if [[ -n "$ROOT" ]]; then
  say "done: installed into $ROOT (systemctl not run)"
  exit 0
fi

systemctl daemon-reload
if [[ $START -eq 0 ]]; then
  say "done (--no-start): start with  systemctl enable --now tollgate"
  exit 0
fi

# The check the unit's ExecStartPre= runs, with the service's environment.
config_ok() {
  (
    set -a
    # shellcheck disable=SC1090
    . "$ENVFILE"
    set +a
    /usr/local/bin/tollgate check --config /etc/tollgate/tollgate.yaml
  )
}

if systemctl is-active --quiet tollgate; then
  if [[ $BINARY_CHANGED -eq 1 ]]; then
    say "tollgate is running: zero-downtime upgrade (systemctl reload tollgate)"
    systemctl reload tollgate
  fi
  say "done: $(systemctl is-active tollgate)"
  exit 0
fi

systemctl enable tollgate
if config_ok; then
  systemctl start tollgate
  say "done: tollgate is $(systemctl is-active tollgate); logs: journalctl -u tollgate"
  exit 0
fi

echo >&2
say "the config does not check out yet (errors above), so tollgate is enabled but not started." >&2
say "set the provider keys in /etc/tollgate/env (and edit /etc/tollgate/tollgate.yaml), then:" >&2
say "  systemctl start tollgate" >&2
if [[ $CREATED_ENV -eq 1 || $CREATED_CONFIG -eq 1 ]]; then
  exit 0 # a first install: expected
fi
exit 1
