# paygate's container image: `docker build -t paygate .` from the repository root.
# Checked offline by tests/python/check_deploy.py (hadolint); see docs/operations.md, "Deploy".
#
# The bases are named by tag. For a release, pin each by digest as well
# (`rust:1-bookworm@sha256:...`, `gcr.io/distroless/cc-debian12:nonroot@sha256:...`) so a rebuild
# of the same commit gets the same bytes; the digests are not written here because this
# repository's machines cannot reach the registries to read them.

# --- builder -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never

# 1. Dependencies only: the workspace's manifests and lock file, with stub targets, so this
#    layer (every crate of Cargo.lock compiled) is reused until a manifest or the lock changes.
#    Every target cargo must find to load the workspace gets a stub: the libraries, the two
#    binaries and the gateway's three benches (`[[bench]]` in gateway/Cargo.toml). The fuzz
#    crate is excluded from the workspace and not copied.
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/Cargo.toml
COPY gateway/Cargo.toml gateway/Cargo.toml
COPY edge-agent/Cargo.toml edge-agent/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN set -eux; \
    mkdir -p core/src gateway/src gateway/benches edge-agent/src tests/src; \
    for f in core/src/lib.rs gateway/src/lib.rs edge-agent/src/lib.rs tests/src/lib.rs \
             gateway/benches/audit.rs gateway/benches/keys.rs gateway/benches/frames.rs; do \
        : > "$f"; \
    done; \
    echo 'fn main() {}' > gateway/src/main.rs; \
    echo 'fn main() {}' > edge-agent/src/main.rs; \
    cargo build --release --locked --bin paygate

# 2. The sources the binary is built from (the tests crate stays a stub: it is not part of
#    the binary). The crate roots are touched so cargo rebuilds the workspace's own crates
#    rather than trusting the stubs' fingerprints (COPY keeps the files' older mtimes).
COPY core/src core/src
COPY edge-agent/src edge-agent/src
COPY gateway/src gateway/src
COPY gateway/migrations gateway/migrations
RUN set -eux; \
    touch core/src/lib.rs gateway/src/lib.rs gateway/src/main.rs edge-agent/src/lib.rs edge-agent/src/main.rs; \
    cargo build --release --locked --bin paygate; \
    install -D -m 0755 target/release/paygate /out/usr/local/bin/paygate; \
    mkdir -p /out/var/lib/paygate

# --- runtime -------------------------------------------------------------------------------
# distroless cc: glibc, libgcc, CA certificates (the AWS SDK's HTTPS client trusts the
# platform's roots: gateway/src/aws.rs), tzdata; no shell, no package manager. Its `nonroot`
# user is 65532, named numerically below so Kubernetes' runAsNonRoot can check it.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="paygate" \
      org.opencontainers.image.description="MQTT edge gateway for POS terminals and mobile wallets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/paygate /usr/local/bin/paygate
# the data directory (data_dir in deploy/kubernetes/base/configmap.yaml): a volume in Kubernetes;
# created here, owned by the runtime user, for `docker run -v` as well. The root filesystem is
# meant to be read-only: nothing else is written outside this directory and /tmp.
COPY --from=builder --chown=65532:65532 /out/var/lib/paygate /var/lib/paygate
USER 65532:65532
# 8883: devices, MQTT over mutual TLS (mqtt.listen). 8443: the HTTPS API and /livez, /readyz,
# /metrics (http.listen).
EXPOSE 8883 8443
# No HEALTHCHECK: Kubernetes ignores it (the Deployment's probes call /livez and /readyz), and
# this image has no shell or HTTP client to run one with (the endpoints are HTTPS only).
# The configuration comes from a mounted file (a ConfigMap in Kubernetes); the image holds none.
ENTRYPOINT ["/usr/local/bin/paygate", "serve", "--config", "/etc/paygate/paygate.toml"]
