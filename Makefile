# cosigner — developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECONDS ?= 30
SOFTHSM_MODULE ?= /usr/lib/softhsm/libsofthsm2.so
QEMU ?= qemu-system-x86_64

.PHONY: all deps build bindings test lint fmt clippy nextest bench fuzz demo demo-attestation demo-dao-eth up down clean

all: build

## deps: SoftHSM, OpenSC and PostgreSQL (its binaries only: no system cluster is made or started)
## from Debian's packages, cargo-nextest from crates.io, moto[server]
## (the KMS tests' local server) and eth-account, eth-tester[py-evm] (the Ethereum tests' independent
## checkers) from PyPI, when missing.
deps:
	@if [ ! -e $(SOFTHSM_MODULE) ] || ! command -v pkcs11-tool >/dev/null; then \
		echo "installing softhsm2 and opensc"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 opensc >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing postgresql (private clusters for make up DB=postgres and the store tests; no system cluster)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO mkdir -p /etc/postgresql-common/createcluster.d && \
		echo 'create_main_cluster = false' | $$SUDO tee /etc/postgresql-common/createcluster.d/cosigner.conf >/dev/null && \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi
	@python3 -c 'import moto.server' 2>/dev/null || { \
		echo "installing moto[server] from PyPI (local KMS-compatible server for tests/tests/kms_aws.rs)"; \
		python3 -m pip install --quiet 'moto[server]' || \
			echo "warning: moto[server] could not be installed; the local-KMS tests will say so and skip"; \
	}
	@python3 -c 'import eth_account, eth_tester, eth' 2>/dev/null || { \
		echo "installing eth-account and eth-tester[py-evm] from PyPI (tests/py/eth_evm.py checks Ethereum transactions)"; \
		python3 -m pip install --quiet 'eth-account' 'eth-tester[py-evm]' || \
			echo "warning: eth-account/eth-tester could not be installed; the Ethereum tests will say so and skip"; \
	}
	@python3 -c 'import bdkpython, embit' 2>/dev/null || { \
		echo "installing bdkpython and embit from PyPI (tests/py/hd_wallets.py derives a wallet's addresses from its descriptors)"; \
		python3 -m pip install --quiet 'bdkpython' 'embit' || \
			echo "warning: bdkpython/embit could not be installed; the descriptor cross-check will say so and skip"; \
	}
	@python3 -c 'import cryptography' 2>/dev/null || { \
		echo "installing cryptography from PyPI (tests/py/ffi_wallet.py: the phone's device key and sealer in Python)"; \
		python3 -m pip install --quiet 'cryptography' || \
			echo "warning: cryptography could not be installed; the Python binding test will say so and skip"; \
	}
	@python3 -c 'import run_kotlin_kernel' 2>/dev/null || { \
		echo "installing kotlin-jupyter-kernel from PyPI, for the Kotlin compiler it carries (the Kotlin binding test)"; \
		python3 -m pip install --quiet --no-deps 'kotlin-jupyter-kernel' || \
			echo "warning: no Kotlin compiler; the Kotlin binding test will say so and skip"; \
	}
	@if [ ! -e /usr/share/java/jna.jar ]; then \
		echo "installing libjna-java (JNA: how the Kotlin bindings call the library on a JVM)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjna-java >/dev/null || \
			echo "warning: JNA could not be installed; the Kotlin binding test will say so and skip"; \
	fi
	@python3 -c 'import vyper' 2>/dev/null || { \
		echo "installing the vyper compiler from PyPI (tests/py/token.vy, the ERC-20 token of the Ethereum tests)"; \
		python3 -m pip install --quiet 'vyper==0.4.3' || \
			echo "warning: vyper could not be installed; the ERC-20 tests will say so and skip"; \
	}

## build: every binary, and the phone library (cosigner-ffi's cdylib, which the binding tests load).
build:
	$(CARGO) build --locked --workspace --bins
	$(CARGO) build --locked -p cosigner-ffi --lib

## bindings: the phone library's Kotlin, Swift and Python bindings in target/bindings (docs/phone.md).
bindings:
	CARGO=$(CARGO) ./scripts/bindings.sh

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --workspace --all-targets --all-features -- -D warnings

lint: fmt clippy

## nextest: one process per test (PKCS#11's C_Initialize is once per process). Process-level
## tests start the binaries built by `build`. The PostgreSQL store tests must run (not skip), on
## one private cluster under target/pg-test (tests/src/postgres.rs), stopped after the run
## whatever its outcome.
PG_TEST_DIR ?= $(or $(CARGO_TARGET_DIR),target)/pg-test
nextest: build
	COSIGNER_REQUIRE_POSTGRES=1 $(CARGO) nextest run --locked --workspace --all-features --no-fail-fast; \
	rc=$$?; . scripts/lib.sh && stop_postgres "$(PG_TEST_DIR)"; exit $$rc

## test: everything CI checks.
test: deps lint nextest

## bench: the figures the issues name (release build); the KMS seal/unseal figures start a local
## moto server (skipped, saying so, where moto is not installed).
bench: deps
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/tokens && \
	printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' $$tmp > $$tmp/softhsm2.conf && \
	SOFTHSM2_CONF=$$tmp/softhsm2.conf $(CARGO) bench --locked -p cosigner-attestation --bench attestation; \
	rc=$$?; rm -rf $$tmp; [ $$rc = 0 ] || exit $$rc
	$(CARGO) build --locked --release --bins
	$(CARGO) build --locked --release -p cosigner-ffi --lib
	$(CARGO) bench --locked -p cosigner-tests --bench wallet
	$(CARGO) bench --locked -p cosigner-tests --bench dao
	$(CARGO) bench --locked -p cosigner-tests --bench anchors
	$(CARGO) bench --locked -p cosigner-tests --bench kms

## fuzz: a short libFuzzer run of each decoder (not in CI). Stable toolchain with RUSTC_BOOTSTRAP,
## since this machine has no nightly.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	mkdir -p fuzz/corpus/attestation_document
	-cp ../shared/fixtures/nitro/*.cose fuzz/corpus/attestation_document/ 2>/dev/null
	cd fuzz && targets=$$($(CARGO) fuzz list --fuzz-dir .) && for t in $$targets; do \
		echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
		len=$$( [ $$t = attestation_document ] && echo -max_len=20000 ); \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir . $$t -- \
			-max_total_time=$(FUZZ_SECONDS) $$len || exit 1; \
	done

## demo: up, create a wallet, sign, verify the signature independently, down (narrated).
demo: deps build
	./scripts/demo.sh

## demo-dao-eth: five members make an Ethereum treasury (threshold ECDSA, through the mailbox);
## 5 ETH with 3 approvals and 20 ETH with 4 are signed and executed by py-evm, 20 ETH with 3 refused.
demo-dao-eth: deps build
	./scripts/demo-dao-eth.sh

## demo-attestation: a local attester's document verified, a tampered one refused.
demo-attestation: deps build
	./scripts/demo-attestation.sh

## up: provider and recovery cosigners on loopback, state under .dev/ (see scripts/up.sh).
## DB=postgres: the provider's parent keeps its store and mailbox in a private PostgreSQL
## cluster under .dev/postgres (the recovery cosigner stays on SQLite).
up: deps build
	DB="$(DB)" ./scripts/up.sh

## down: stop them (state is kept).
down:
	./scripts/down.sh

clean:
	$(CARGO) clean

.PHONY: enclave-image repro-check nitro-emulate nitro-blobs

## enclave-image: the reproducible Nitro Enclave image under target/enclave/ (static binary,
## deterministic ramdisk, pcrs.json, trust-file measurement; the EIF too with NITRO_BLOBS=DIR).
enclave-image:
	./scripts/enclave-image.sh

## nitro-emulate: boot the EIF in QEMU's nitro-enclave machine and run a client session against it
## (QEMU=PATH of a QEMU >= 9.2 with libcbor and gnutls, NITRO_BLOBS=DIR; docs/nitro.md, "Emulator").
## Not part of `make test`.
nitro-emulate: deps build
	QEMU="$(QEMU)" NITRO_BLOBS="$(NITRO_BLOBS)" ./scripts/nitro-emulate.sh

## nitro-blobs: a kernel and NSM driver for nitro-emulate built from Debian's Linux source with
## AWS's enclave kernel configuration, for machines without aws-nitro-enclaves-cli's blobs.
nitro-blobs:
	./scripts/nitro-blobs.sh

## repro-check: build the image twice from clean copies of HEAD in two directories and compare
## every output byte for byte (docs/nitro.md).
repro-check:
	./scripts/repro-check.sh

.PHONY: soak

## soak: SOAK_SECONDS (300) of 50 clients signing and refreshing over 50 wallets against a fresh
## `make up DB=postgres ENCLAVES=2` in target/soak/ (its own ports), one enclave instance killed
## and restarted halfway; one JSON line (requests, errors, sign_ms_p50/p99, signs_per_sec, RSS
## per process, lost_wallets). Not part of `make test` (scripts/soak.sh, docs/deployment.md).
soak: deps build
	./scripts/soak.sh
