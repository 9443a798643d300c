#!/usr/bin/env bash
# Makes the stack's own certificate authority and the NATS server's certificate, in a secrets
# directory (docker-compose.swarm.yml passes them as Docker secrets). Needs only openssl.
#
#   bash scripts/nats-tls.sh DIR [NAME|IP ...]
#   bash scripts/nats-tls.sh --client NAME DIR
#
# writes, each key readable by its owner only:
#   DIR/nats_tls_ca.pem     the CA's certificate: what every client verifies the server with
#                           (NATS_TLS_CA; `nats --tlsca`; nats.js `tls: {caFile}`)
#   DIR/nats_tls_ca.key     the CA's key: it signs the certificates below; the stack never
#                           reads it (keep it with the secrets, or offline)
#   DIR/nats_tls_cert.pem   the server's certificate, signed by the CA, naming the hosts the
#                           clients use: nats, nats-1, nats-2, nats-3 (the stack's services),
#                           tasks.nats, localhost and 127.0.0.1, plus each NAME or IP given
#                           (the address or name operators reach the published port 4222 at)
#   DIR/nats_tls_key.pem    the server's key
# With --client NAME: DIR/nats_tls_client_NAME.pem and .key, a client certificate signed by the
# same CA (NATS_TLS_CERT, NATS_TLS_KEY), for a server that asks for one.
#
# Existing files are kept: an existing CA signs a new server certificate (to add names, remove
# nats_tls_cert.pem and nats_tls_key.pem first, then redeploy under new secret names); a server
# certificate that exists already is an error (exit 1), so that nothing is replaced by accident.
# Certificates: EC P-256; the CA for 10 years, the others for 825 days.
set -euo pipefail

say() { echo "nats-tls: $*" >&2; }
fail() { echo "nats-tls: error: $*" >&2; exit "${2:-1}"; }
usage() { sed -n '5,6p' "$0" | sed 's/^# */usage: /' >&2; exit 64; }

client=""
if [ "${1:-}" = --client ]; then
    client=${2:-}
    [ -n "$client" ] || usage
    case "$client" in *[!A-Za-z0-9_-]*) fail "a client NAME is letters, digits, - and _" 64 ;; esac
    shift 2
fi
[ $# -ge 1 ] || usage
dir=$1
shift
command -v openssl >/dev/null 2>&1 || fail "openssl is missing (Debian: apt-get install openssl)"

mkdir -p "$dir"
chmod 700 "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

ca=$dir/nats_tls_ca.pem
ca_key=$dir/nats_tls_ca.key

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

make_ca() {
    if [ -e "$ca" ] && [ -e "$ca_key" ]; then
        say "$ca exists: it signs what follows"
        return
    fi
    [ ! -e "$ca" ] && [ ! -e "$ca_key" ] || fail "only one of $ca and $ca_key exists"
    new_key "$ca_key"
    openssl req -x509 -new -key "$ca_key" -out "$ca" -days 3650 -sha256 \
        -subj "/CN=chorus-bridge stack CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
    chmod 644 "$ca"
    say "made the CA: $ca"
}

# sign CN OUT_CERT OUT_KEY EXTENSIONS
sign() {
    local cn=$1 cert=$2 key=$3 extensions=$4
    [ ! -e "$cert" ] && [ ! -e "$key" ] || fail "$cert or $key exists already; kept as it is"
    new_key "$key"
    openssl req -new -key "$key" -subj "/CN=$cn" -out "$work/req.csr" 2>/dev/null
    printf '%s\n' "$extensions" >"$work/ext.cnf"
    openssl x509 -req -in "$work/req.csr" -CA "$ca" -CAkey "$ca_key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
        -extfile "$work/ext.cnf" -out "$cert" 2>/dev/null
    chmod 644 "$cert"
}

make_ca
if [ -n "$client" ]; then
    sign "$client" "$dir/nats_tls_client_$client.pem" "$dir/nats_tls_client_$client.key" \
        "$(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=clientAuth")"
    say "made the client certificate $dir/nats_tls_client_$client.pem"
    exit 0
fi

names=(DNS:nats DNS:nats-1 DNS:nats-2 DNS:nats-3 DNS:tasks.nats DNS:localhost IP:127.0.0.1)
for extra in "$@"; do
    case "$extra" in
        *[!0-9.]*) [[ "$extra" == *:* ]] && names+=("IP:$extra") || names+=("DNS:$extra") ;;
        *) names+=("IP:$extra") ;;
    esac
done
alt=$(IFS=,; echo "${names[*]}")
sign nats "$dir/nats_tls_cert.pem" "$dir/nats_tls_key.pem" \
    "$(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
        "subjectAltName=$alt")"
say "made the server certificate $dir/nats_tls_cert.pem for $alt"
