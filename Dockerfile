# syntax=docker/dockerfile:1
# The agent's image: Node 20 on Debian bookworm (slim), iptables and nftables
# from Debian, production dependencies only, compiled JavaScript only.
#
#   docker build -t REGISTRY/nodelocal-dns:TAG .
#
# Written without a container engine at hand: checked by reading, not built.
# Pin NODE_IMAGE to a digest for reproducible builds.
ARG NODE_IMAGE=node:20-bookworm-slim

# 1. Compile: TypeScript and @types/node are dev dependencies, needed here only.
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
# .dockerignore sends src/ only, so this emits dist/src/ and nothing else.
RUN npx tsc -p tsconfig.json

# 2. Production dependencies only. koffi's install step picks its prebuilt
#    linux binary (glibc, x64 or arm64): no compiler needed.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# 3. Runtime.
FROM ${NODE_IMAGE}
# iptables brings iptables-legacy and iptables-nft (the agent picks the one the
# node uses, --firewall auto); nftables brings nft.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
# --version reads it (dist/src/main.js -> ../../package.json).
COPY package.json ./
# Root, with only the capabilities the DaemonSet grants (NET_ADMIN,
# NET_BIND_SERVICE, NET_RAW; daemonset.yaml says why not a non-root user).
USER 0
# Exec form: node is PID 1 and gets SIGTERM itself (the agent drains on it).
ENTRYPOINT ["node", "/app/dist/src/main.js"]
