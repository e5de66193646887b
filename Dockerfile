# syntax=docker/dockerfile:1
#
# leaflock-backup image: the binary and the PostgreSQL 18 client (pg_dump/pg_restore
# 18 dump and restore every server LeafLock runs, 15 to 18). Non-root (UID/GID 1000,
# as LeafLock's Helm CronJob expects), no shell needed at run time, read-only root
# filesystem friendly (only /tmp is written).
#
#   docker build -t leaflock-backup .
#   docker run --rm leaflock-backup --help

# ---- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin leaflock-backup \
    && install -D -m 0755 target/release/leaflock-backup /out/leaflock-backup

# ---- run -----------------------------------------------------------------------------
FROM debian:bookworm-slim
ARG PG_MAJOR=18
# The PostgreSQL client from the PGDG apt repository (Debian bookworm ships 15 only).
# curl is needed only to fetch the repository key and is removed again.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y --auto-remove curl; \
    rm -rf /var/lib/apt/lists/*; \
    "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version
# pg_dump and pg_restore of that major first on PATH: the binary itself, not Debian's
# version-picking wrapper in /usr/bin.
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LEAFLOCK_BACKUP_LOG_FORMAT=json
COPY --from=builder /out/leaflock-backup /usr/local/bin/leaflock-backup
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/leaflock-backup"]
CMD ["run"]
