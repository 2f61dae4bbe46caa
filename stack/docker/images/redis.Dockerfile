# Redis 7 (Debian's redis-server) as the cache: no persistence, password from the runtime files.
# Build context: the `stack/` directory.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY docker/images/certs/ /tmp/scalelab-certs/
COPY docker/images/scripts/apt-install /usr/local/bin/
RUN apt-install redis-server
COPY docker/images/scripts/redis-health /usr/local/bin/
USER redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=3 CMD ["redis-health"]
CMD ["redis-server", "/etc/scalelab/redis/redis.conf"]
