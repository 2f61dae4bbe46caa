# PostgreSQL 15 (primary and streaming replica) and PgBouncer, from Debian's packages.
# Build context: the `stack/` directory.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY docker/images/certs/ /tmp/scalelab-certs/
COPY docker/images/scripts/apt-install /usr/local/bin/
# No default cluster: each container makes its own data directory (docker/images/scripts/postgres-entry).
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/scalelab.conf \
 && apt-install postgresql-15 pgbouncer \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY docker/images/scripts/postgres-entry /usr/local/bin/
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432 6432
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]
CMD ["postgres-entry", "primary"]
