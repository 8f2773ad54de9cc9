/**
 * Where the cluster is and how to talk to it: the cluster config (in-cluster
 * service account, or a kubeconfig file) and one GET over Node's http/https
 * with its auth and TLS.
 *
 * Why raw http/https and not client-node's generated API or its Watch class:
 * the generated list calls deserialize every item into full model objects
 * (a second, larger copy of each raw object) and do not stream; Watch goes
 * through node-fetch plus readline and reports every ending through one
 * callback. A plain request gives us the raw bytes to convert page by page.
 *
 * Credentials are read by credentials.ts (in-cluster, and kubeconfigs with
 * tokens, client certificates, basic auth or exec plugins); client-node is
 * loaded only for a kubeconfig that needs its auth-provider plugins or a proxy,
 * because importing it holds about 60 MiB of RSS (credentials.ts).
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { SERVICE_ACCOUNT_DIR, inClusterCredentials, inClusterServer, readKubeconfig, type Credentials } from './credentials.js';

export type ClusterConfig =
  | {
      readonly kind: 'ok';
      readonly source: 'in-cluster' | 'kubeconfig';
      readonly server: string;
      readonly credentials: Credentials;
      /** Who reads the credentials: ours, or client-node for a plugin or proxy (and which field asked for it). */
      readonly auth: 'native' | `client-node (${string})`;
    }
  /** Not in a cluster and no --kubeconfig: the cluster-records fallback is off. */
  | { readonly kind: 'none'; readonly reason: string }
  /** A config was asked for (or found) but cannot be used: an operator error to report. */
  | { readonly kind: 'error'; readonly reason: string };

export interface ClusterConfigOptions {
  /** --kubeconfig PATH; when set, in-cluster config is not tried. */
  readonly kubeconfig?: string | undefined;
  /** Prefixes the service-account paths (tests point it at a temp dir). */
  readonly serviceAccountPrefix?: string;
  /** How long an exec credential plugin may run (exec-credentials.ts); tests shorten it. */
  readonly execTimeoutMs?: number;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

interface ServerCheck {
  readonly server: string;
  readonly skipVerify: boolean;
}

/** The server URL must be https, or http with TLS checks explicitly off (client-node 1.x's rule, kept for both paths). */
function checkServer(c: ServerCheck): { ok: true; server: string } | { ok: false; reason: string } {
  let url: URL;
  try {
    url = new URL(c.server);
  } catch {
    return { ok: false, reason: `cluster server '${c.server}' is not a URL` };
  }
  if (url.protocol === 'http:' && !c.skipVerify) {
    return { ok: false, reason: `cluster server ${c.server} is plain http: set insecure-skip-tls-verify: true to allow it` };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return { ok: false, reason: `cluster server ${c.server}: unsupported scheme ${url.protocol}` };
  }
  return { ok: true, server: c.server.replace(/\/+$/, '') };
}

/**
 * In-cluster by default, exactly as client-go's rest.InClusterConfig decides:
 * both KUBERNETES_SERVICE_HOST and _PORT set and a service-account token
 * present. Never throws.
 */
export async function loadClusterConfig(opts: ClusterConfigOptions = {}): Promise<ClusterConfig> {
  const explicit = opts.kubeconfig !== undefined && opts.kubeconfig !== '';
  if (!explicit || opts.kubeconfig === undefined) {
    const host = process.env['KUBERNETES_SERVICE_HOST'] ?? '';
    const port = process.env['KUBERNETES_SERVICE_PORT'] ?? '';
    if (host === '' || port === '') {
      return { kind: 'none', reason: 'not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset) and no --kubeconfig' };
    }
    const saDir = (opts.serviceAccountPrefix ?? '') + SERVICE_ACCOUNT_DIR;
    if (!fs.existsSync(`${saDir}/token`)) {
      return { kind: 'none', reason: `no service-account token at ${saDir}/token (automountServiceAccountToken off?)` };
    }
    return { kind: 'ok', source: 'in-cluster', server: inClusterServer(host, port), credentials: inClusterCredentials(saDir), auth: 'native' };
  }
  const path = opts.kubeconfig;
  const read = readKubeconfig(path, opts.execTimeoutMs);
  if (read.kind === 'error') return { kind: 'error', reason: `cannot load kubeconfig ${path}: ${read.reason}` };
  if (read.kind === 'static') {
    const checked = checkServer(read);
    if (!checked.ok) return { kind: 'error', reason: checked.reason };
    return { kind: 'ok', source: 'kubeconfig', server: checked.server, credentials: read.credentials, auth: 'native' };
  }
  return delegated(path, read.why);
}

/** A kubeconfig only client-node can serve: its KubeConfig reads it and fills in each request. */
async function delegated(path: string, why: string): Promise<ClusterConfig> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    kc.loadFromFile(path);
  } catch (e) {
    return { kind: 'error', reason: `cannot load kubeconfig ${path}: ${message(e)}` };
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null) return { kind: 'error', reason: `cannot load kubeconfig ${path}: no current context or cluster` };
  const checked = checkServer({ server: cluster.server, skipVerify: cluster.skipTLSVerify === true });
  if (!checked.ok) return { kind: 'error', reason: checked.reason };
  const credentials: Credentials = { apply: (o) => kc.applyToHTTPSOptions(o) };
  return { kind: 'ok', source: 'kubeconfig', server: checked.server, credentials, auth: `client-node (${why})` };
}

export type GetOutcome =
  /**
   * Response headers arrived; `body` is the (decompressed) payload, to be consumed or destroyed.
   * `retryAfterMs`: the wait its Retry-After header asked for, if it had one we could read.
   */
  | { readonly ok: true; readonly status: number; readonly body: Readable; readonly retryAfterMs?: number }
  | { readonly ok: false; readonly error: string };

/** Longest Retry-After honoured: a mistaken header (a proxy's, a date far off) must not park a reflector for hours. */
export const MAX_RETRY_AFTER_MS = 600_000;

/** A Retry-After value (RFC 9110 10.2.3: delay-seconds or an HTTP-date) as ms from `nowMs` (wall clock); undefined when unreadable. */
export function parseRetryAfter(value: string, nowMs: number): number | undefined {
  const v = value.trim();
  let ms: number;
  if (/^\d+$/.test(v)) {
    ms = Number(v) * 1000;
  } else {
    // Every HTTP-date form starts with a day name; Date.parse alone takes '-5' for a year.
    if (!/^[A-Za-z]+,? /.test(v)) return undefined;
    const at = Date.parse(v);
    if (Number.isNaN(at)) return undefined;
    ms = at - nowMs;
  }
  return Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS);
}

/** The one thing the watch needs from the API: a GET. Tests may pass their own. */
export interface ApiGetter {
  /** Never rejects. `signal` aborts the request and its body. */
  get(path: string, signal: AbortSignal): Promise<GetOutcome>;
}

function ignore(): void {}

/** TCP keepalive on the API connection, as client-node's Watch sets it: dead peers surface without traffic. */
const KEEPALIVE_MS = 30_000;

export class KubeApi implements ApiGetter {
  readonly #credentials: Credentials;
  readonly #server: string;

  constructor(config: { readonly credentials: Credentials; readonly server: string }) {
    this.#credentials = config.credentials;
    this.#server = config.server;
  }

  async get(path: string, signal: AbortSignal): Promise<GetOutcome> {
    const opts: https.RequestOptions = {};
    try {
      // Per request on purpose: token, CA and certificate files are re-read when they rotate, exec plugins refresh.
      await this.#credentials.apply(opts);
    } catch (e) {
      return { ok: false, error: `auth: ${message(e)}` };
    }
    if (signal.aborted) return { ok: false, error: 'aborted' };
    const url = new URL(this.#server + path);
    // The API server gzips large lists for clients that accept it (client-go always does).
    opts.headers = { ...opts.headers, accept: 'application/json', 'accept-encoding': 'gzip' };
    opts.method = 'GET';
    opts.signal = signal;
    const request = url.protocol === 'https:' ? https.request : http.request;
    return new Promise<GetOutcome>((resolve) => {
      const onResponse = (res: http.IncomingMessage): void => {
        res.on('error', ignore);
        let body: Readable = res;
        if (res.headers['content-encoding'] === 'gzip') body = pipeline(res, createGunzip(), ignore);
        const header = res.headers['retry-after'];
        const retryAfterMs = header === undefined ? undefined : parseRetryAfter(header, Date.now());
        resolve({ ok: true, status: res.statusCode ?? 0, body, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
      };
      let req: http.ClientRequest;
      try {
        req = request(url, opts, onResponse);
      } catch (e) {
        // Options Node cannot use (a PEM that does not load) throw here, before any request: a failed request, not a bug.
        resolve({ ok: false, error: `tls: ${message(e)}` });
        return;
      }
      req.on('socket', (s) => s.setKeepAlive(true, KEEPALIVE_MS));
      req.on('error', (e) => resolve({ ok: false, error: message(e) }));
      req.end();
    });
  }
}
