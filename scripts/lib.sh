# Sourced by the scripts (`. scripts/lib.sh`, from the repository root): a private SoftHSM
# configuration and random hex secrets.

# use_softhsm DIR TOKENDIR: writes DIR/softhsm2.conf (file object store, errors only) for the
# tokens under TOKENDIR and exports SOFTHSM2_CONF, so the PKCS#11 module in this shell and its
# children uses only these tokens.
use_softhsm() {
  cat > "$1/softhsm2.conf" <<CONF
directories.tokendir = $2
objectstore.backend = file
log.level = ERROR
CONF
  export SOFTHSM2_CONF="$1/softhsm2.conf"
}

# random_hex BYTES: that many bytes from /dev/urandom as lowercase hex, no newline.
random_hex() {
  head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}
