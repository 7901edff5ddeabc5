# redis-celery-sidecar: a small image that runs the sidecar as a non-root user.
#
# Build:  docker build -t redis-celery-sidecar .
# Run:    docker run -e REDIS_URL=redis://host:6379/0 -p 9811:9811 redis-celery-sidecar
#
# The build command below is the one scripts/test runs, checked by
# scripts/check-dockerfile so the two cannot drift apart.

# --- build -----------------------------------------------------------------------------
# Bookworm, like the runtime image: the binary links against the same glibc.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The sources; touched so cargo rebuilds them over the placeholder build above.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/redis-celery-sidecar /redis-celery-sidecar

# --- run -------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA files, no shell, no package manager (about 25 MB with
# the binary). TLS roots are compiled into the binary (webpki-roots) anyway.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /redis-celery-sidecar /usr/local/bin/redis-celery-sidecar
USER 65532:65532
EXPOSE 9811
# The binary diagnoses every target itself: no curl in the image. `check` exits 1 while
# Redis or the Celery workers are unhealthy, so `docker ps` shows the cause's container
# as unhealthy and `docker inspect` shows the step-by-step report. It listens up to 4.5 s
# for worker heartbeats, hence the 10 s timeout.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/redis-celery-sidecar", "check"]
ENTRYPOINT ["/usr/local/bin/redis-celery-sidecar"]
CMD ["serve"]
