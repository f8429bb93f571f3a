#!/usr/bin/env bash
# make bindings: the phone library (cosigner-ffi) built for release, and its UniFFI bindings for
# Kotlin, Swift and Python generated from the library itself, in target/bindings/:
#
#   target/bindings/lib/libcosigner_ffi.so     the library for this machine's target, stripped
#   target/bindings/kotlin/uniffi/cosigner_ffi/cosigner_ffi.kt
#   target/bindings/swift/cosigner_ffi.swift, cosigner_ffiFFI.h, cosigner_ffiFFI.modulemap
#   target/bindings/python/cosigner_ffi.py     (beside a copy of the library: Python loads it there)
#
# Where a Kotlin compiler and JNA are installed (make deps), the Kotlin bindings are compiled too.
# Building for a phone (Android's NDK targets, Apple's) is in docs/phone.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-target}
"$CARGO" build --locked --release -p cosigner-ffi --lib --bin uniffi-bindgen
lib="$target/release/libcosigner_ffi.so"
out="$target/bindings"
rm -rf "$out"
mkdir -p "$out/lib"
strip -o "$out/lib/libcosigner_ffi.so" "$lib"
for language in kotlin swift python; do
  "$target/release/uniffi-bindgen" generate --no-format --library "$lib" \
    --language "$language" --out-dir "$out/$language"
done
cp "$out/lib/libcosigner_ffi.so" "$out/python/"

jars=$(python3 -c 'import run_kotlin_kernel, os; print(os.path.dirname(run_kotlin_kernel.__file__) + "/jars")' 2>/dev/null || true)
jna=/usr/share/java/jna.jar
if command -v java >/dev/null && [ -n "$jars" ] && [ -e "$jna" ]; then
  stdlib=$(ls "$jars"/kotlin-stdlib-*.jar | head -n1)
  compiler=$(ls "$jars"/kotlin-jupyter-kernel-*.jar | head -n1)
  java -cp "$compiler" org.jetbrains.kotlin.cli.jvm.K2JVMCompiler -no-stdlib -no-reflect -nowarn \
    -jvm-target 17 -cp "$stdlib:$jna" "$out/kotlin/uniffi/cosigner_ffi/cosigner_ffi.kt" \
    -d "$out/kotlin/classes"
  echo "bindings: Kotlin compiled ($out/kotlin/classes)"
else
  echo "bindings: Kotlin generated, not compiled here (no java, Kotlin compiler or JNA: make deps)"
fi
echo "bindings: Swift generated, not compiled here (needs Apple's toolchain: docs/phone.md)"
printf 'bindings: %s: %s bytes stripped\n' "$(rustc -vV | sed -n 's/^host: //p')" \
  "$(stat -c %s "$out/lib/libcosigner_ffi.so")"
