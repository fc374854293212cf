# Build stage: compile the Cython cores into a wheel, and collect the dependencies' wheels.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastgate ./fastgate
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compiler, no sources, an unprivileged user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/fastgate --create-home fastgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
COPY configs /etc/fastgate
USER fastgate
WORKDIR /var/lib/fastgate
EXPOSE 8080
# `fastgate status` tells whether the compiled cores loaded.
ENTRYPOINT ["fastgate"]
CMD ["run", "-c", "/etc/fastgate/example.yaml", "--listen", "0.0.0.0:8080"]
