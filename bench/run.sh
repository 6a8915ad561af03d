#!/usr/bin/env bash
# The benchmark's entry point (`make bench`): installs what it needs, then runs bench/bench.py.
#   bash bench/run.sh                    # scenarios 1-4, 3 runs of 10 s each
#   bash bench/run.sh --quick            # 3 s runs, 60-token paced streams
#   bash bench/run.sh --full             # also scenario 5 (1M wallets, 10M usage rows)
#   bash bench/run.sh --only scenario1 --contenders relay,gateway
# Everything it builds lives in bench/.work/ (gitignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/bench/.work"
PYTHON="${PYTHON:-python3}"
LITELLM_SPEC="${LITELLM_SPEC:-litellm[proxy]==1.108.7}"
mkdir -p "$WORK"

say() { echo "[bench setup] $*" >&2; }

# 1. Debian packages: nginx (the upstream and the proxy contender) and wrk (the load).
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts an nginx service on install; the bench runs its own instances and needs none.

# 2. The project's own venv (make bench builds it first; this covers `bash bench/run.sh`).
if [ ! -x "$ROOT/.venv/bin/python" ] || [ ! -f "$ROOT/.venv/.installed" ]; then
    say "building the project's .venv"
    make -C "$ROOT" .venv/.installed >/dev/null
fi

# 3. The bench's own venv for LiteLLM's proxy, apart from the project's dependencies.
VENV="$WORK/venv"
STAMP="$VENV/.installed-$(echo "$LITELLM_SPEC" | tr -c 'A-Za-z0-9.=\n' '_')"
if [ ! -f "$STAMP" ]; then
    say "installing $LITELLM_SPEC into bench/.work/venv (about a minute)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "$LITELLM_SPEC"
    touch "$STAMP"
fi

exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" --litellm "$VENV/bin/litellm" "$@"
