#!/usr/bin/env bash
# Installs everything jetsink needs on a fresh Debian machine, idempotently:
# clickhouse-server + clickhouse-client (apt, only when no ClickHouse binary is found),
# zookeeper (apt, only when its jar is missing: the ClickHouse cluster fixture and
# `bench --clickhouse-cluster` run it as a plain java process, hence not zookeeperd)
# and the project with its test extras (pip, editable). Starts no service: the
# supervisor and the test fixtures start their own servers.
set -euo pipefail
cd "$(dirname "$0")/.."

have_clickhouse() {
    [[ -n "${JETSINK_CLICKHOUSE_BIN:-}" ]] \
        || command -v clickhouse-server >/dev/null \
        || [[ -x /usr/sbin/clickhouse-server ]] \
        || command -v clickhouse >/dev/null
}

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [[ "$apt_updated" == 0 ]]; then
        apt-get update
        apt_updated=1
    fi
    # policy-rc.d 101 keeps the package's postinst from starting the service.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get install -y "$@"
    if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi
}

if ! have_clickhouse; then
    apt_install clickhouse-server clickhouse-client
fi

if [[ ! -e /usr/share/java/zookeeper.jar ]]; then
    apt_install --no-install-recommends zookeeper
fi

python3 -m pip install -e '.[test]'

echo "--- versions" >&2
python3 --version
python3 - <<'PY'
import subprocess
from supervisor.embedded_clickhouse import find_clickhouse_server
from supervisor.embedded_nats import find_nats_server
nats = find_nats_server()
print(nats, subprocess.run([nats, "--version"], capture_output=True, text=True).stdout.strip())
print("clickhouse:", " ".join(find_clickhouse_server()))
PY
dpkg-query -W -f='${Package} ${Version}\n' clickhouse-server 2>/dev/null \
    || clickhouse server --version 2>/dev/null \
    || true

