# shellcheck shell=bash
# Certificates for Redis over TLS between hosts (scripts/provision
# --redis-tls): a private CA made once on the first Redis host, and one
# certificate per host signed by it. Redis' nodes and sentinels present
# their host's certificate both as servers and, to each other, as clients
# (replication, the sentinels' links); an app host's services present a
# client certificate. All keys are EC P-256, made by openssl.
#
# The CA key can mint certificates Redis accepts: it is as secret as the
# Redis password, and travels to the other hosts the same way (copied by
# the operator, then given to provision).

# Lifetimes: the CA outlives many host certificates; a host certificate
# stays within the 825 days clients commonly accept.
REDIS_TLS_CA_DAYS=3650
REDIS_TLS_CERT_DAYS=825

# redis_tls_make_ca DIR : DIR/ca.crt and DIR/ca.key (0600), a new CA.
redis_tls_make_ca() {
  local dir=$1
  (
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" -days "$REDIS_TLS_CA_DAYS" \
      -subj "/CN=postback redis CA $(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  ) || die "openssl could not make a CA in $dir"
  chmod 644 "$dir/ca.crt"
}

# redis_tls_make_cert DIR NAME CN [ADDRESS...] : DIR/NAME.crt and
# DIR/NAME.key (0600), signed by DIR/ca.{crt,key}, for CN and the given
# addresses (IPs or names; 127.0.0.1 and localhost always), good for a
# server and a client alike.
redis_tls_make_cert() {
  local dir=$1 name=$2 cn=$3
  shift 3
  local sans="IP:127.0.0.1,DNS:localhost" address
  for address in "$@"; do
    [ -n "$address" ] || continue
    if [[ "$address" =~ ^[0-9.]+$ || "$address" == *:* ]]; then
      sans+=",IP:$address"
    else
      sans+=",DNS:$address"
    fi
  done
  (
    umask 077
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$cn" 2>/dev/null &&
      openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -CAserial "$dir/ca.srl" -out "$dir/$name.crt" -days "$REDIS_TLS_CERT_DAYS" \
        -extfile <(printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans") 2>/dev/null
  ) || die "openssl could not make $dir/$name.crt"
  rm -f "$dir/$name.csr"
  chmod 644 "$dir/$name.crt"
}

# redis_tls_cli_args DIR NAME : redis-cli's options to speak TLS with the
# certificates in DIR (NAME.crt/NAME.key as the client's), one a line.
redis_tls_cli_args() {
  printf '%s\n' --tls --cacert "$1/ca.crt" --cert "$1/$2.crt" --key "$1/$2.key"
}
