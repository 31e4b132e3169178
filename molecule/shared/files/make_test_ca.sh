#!/bin/sh
# Test CA and a server certificate for localhost / 127.0.0.1, generated where they are used
# (no private key is ever committed). usage: make_test_ca.sh DIR
#   DIR/ca.crt                 the CA (install into a trust store, or SSL_CERT_FILE in unit tests)
#   DIR/server.crt, server.key the server's certificate (signed by the CA) and key (mode 0600)
# The extensions satisfy the strict chain checks of Python 3.13's default context.
set -eu
dir="$1"
mkdir -p "$dir"
umask 077
cd "$dir"
cat > ca.ext <<'EXT'
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
EXT
cat > server.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
openssl req -new -newkey rsa:2048 -nodes -keyout ca.key -out ca.csr -subj "/CN=agentops test CA" 2>/dev/null
openssl x509 -req -in ca.csr -signkey ca.key -out ca.crt -days 7 -extfile ca.ext 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 7 \
    -extfile server.ext 2>/dev/null
rm -f ca.csr server.csr ca.ext server.ext ca.srl
chmod 0644 ca.crt server.crt
