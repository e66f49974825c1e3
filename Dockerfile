# syntax=docker/dockerfile:1
# Capstan's image: the release binary (build/release.sh, the same script CI runs) on a
# distroless runtime with glibc, as a non-root user, and nothing else.
#
#   docker build --build-arg CAPSTAN_GIT_COMMIT=$(git rev-parse HEAD) \
#     -t ghcr.io/capstan-dev/capstan:0.1.0 .
#
# Build on each architecture's own builder (docker buildx with native nodes): the
# script builds for the machine it runs on.

# The toolchain of this repository's CI, on Debian 12: the runtime below is Debian 12
# too, so the binary needs no newer glibc than it has.
FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
ARG CAPSTAN_GIT_COMMIT=unknown
ENV CAPSTAN_GIT_COMMIT=${CAPSTAN_GIT_COMMIT}
RUN build/release.sh /out

# glibc, libgcc and CA certificates; no shell, no package manager. UID/GID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/capstan /capstan
USER 65532:65532
ENTRYPOINT ["/capstan"]
CMD ["run"]
