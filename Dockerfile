# syntax=docker/dockerfile:1
#
# kubetrail's container image: the release build of the kubetrail binary on a distroless
# base (glibc, libgcc, CA certificates, tzdata; no shell, no package manager), non-root.
#
#   docker build -t ghcr.io/kubetrail/kubetrail:0.1.0 .
#
# ghcr.io/kubetrail/kubetrail is the name the manifests in deploy/ use: a placeholder for
# wherever you push the image (change it in the overlays' `images:`).
#
# The build is glibc, not musl: librdkafka (bundled, compiled from source by rdkafka-sys for
# the Kafka subcommands) and ring build with the builder's C toolchain, and the runtime image
# provides glibc and libgcc_s; zlib is linked statically (LIBZ_SYS_STATIC), so the binary
# needs nothing else at run time. Needs BuildKit (the cache mounts).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p kubetrail \
    && install -D -m 0755 target/release/kubetrail /out/kubetrail

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="kubetrail" \
      org.opencontainers.image.description="Turns the Kubernetes API server's audit log into distributed traces" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/kubetrail /kubetrail
# distroless' nonroot user; the manifests run as the same uid (runAsUser: 65532).
USER 65532:65532
# The audit webhook (HTTPS), /healthz, /readyz, /metrics: `kubetrail serve --listen 0.0.0.0:8443`.
EXPOSE 8443
ENTRYPOINT ["/kubetrail"]
CMD ["--help"]
