# pgwarden gateway image: `docker build -t pgwarden .`
FROM python:3.11-slim AS build
# A C compiler for the optional C modules (gateway/*/_*.c: row walk, safety-net prefilter,
# message framing, SQL shape, audit seal, policy input); only this stage has it, the
# image gets the built wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/pgwarden --create-home pgwarden
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The starter policy, as an example to mount over or replace (policy as code lives in git).
COPY policies /usr/share/pgwarden/policies
USER pgwarden
WORKDIR /var/lib/pgwarden
EXPOSE 6432 6433 6480
# SIGTERM drains sessions (listen.drain_timeout) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgwarden"]
CMD ["serve", "-c", "/etc/pgwarden/gateway.yaml"]
