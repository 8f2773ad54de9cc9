/**
 * Where the cluster is and how to talk to it: the cluster config (in-cluster
 * service account, or a kubeconfig file) and one GET over Node's http/https
 * with the KubeConfig's auth and TLS.
 *
 * Why raw http/https and not client-node's generated API or its Watch class:
 * the generated list calls deserialize every item into full model objects
 * (a second, larger copy of each raw object) and do not stream; Watch goes
 * through node-fetch plus readline and reports every ending through one
 * callback. A plain request with the options `applyToHTTPSOptions` fills in
 * (CA, client cert, bearer token re-read from the token file as it rotates,
 * exec/OIDC plugins, proxies) keeps all of client-node's auth and gives us
 * the raw bytes to convert page by page.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
// Type only: the library itself (about 1.5 s of CPU to import) is loaded when a cluster config exists, never on a local run.
import type { KubeConfig } from '@kubernetes/client-node';

export type ClusterConfig =
  | { readonly kind: 'ok'; readonly source: 'in-cluster' | 'kubeconfig'; readonly server: string; readonly kc: KubeConfig }
  /** Not in a cluster and no --kubeconfig: the cluster-records fallback is off. */
  | { readonly kind: 'none'; readonly reason: string }
  /** A config was asked for (or found) but cannot be used: an operator error to report. */
  | { readonly kind: 'error'; readonly reason: string };

export interface ClusterConfigOptions {
  /** --kubeconfig PATH; when set, in-cluster config is not tried. */
  readonly kubeconfig?: string | undefined;
  /** Prefixes the service-account paths (tests point it at a temp dir). */
  readonly serviceAccountPrefix?: string;
}

const SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * In-cluster by default, exactly as client-go's rest.InClusterConfig decides:
 * both KUBERNETES_SERVICE_HOST and _PORT set and a service-account token
 * present. Never throws.
 */
export async function loadClusterConfig(opts: ClusterConfigOptions = {}): Promise<ClusterConfig> {
  const explicit = opts.kubeconfig !== undefined && opts.kubeconfig !== '';
  if (!explicit) {
    const host = process.env['KUBERNETES_SERVICE_HOST'] ?? '';
    const port = process.env['KUBERNETES_SERVICE_PORT'] ?? '';
    if (host === '' || port === '') {
      return { kind: 'none', reason: 'not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset) and no --kubeconfig' };
    }
  }
  const { KubeConfig: KubeConfigClass } = await import('@kubernetes/client-node');
  const kc = new KubeConfigClass();
  let source: 'in-cluster' | 'kubeconfig';
  if (explicit && opts.kubeconfig !== undefined) {
    try {
      kc.loadFromFile(opts.kubeconfig);
    } catch (e) {
      return { kind: 'error', reason: `cannot load kubeconfig ${opts.kubeconfig}: ${message(e)}` };
    }
    source = 'kubeconfig';
  } else {
    const prefix = opts.serviceAccountPrefix ?? '';
    if (!fs.existsSync(prefix + SA_TOKEN)) {
      return { kind: 'none', reason: `no service-account token at ${prefix + SA_TOKEN} (automountServiceAccountToken off?)` };
    }
    kc.loadFromCluster(prefix);
    source = 'in-cluster';
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null) return { kind: 'error', reason: `kubeconfig ${opts.kubeconfig ?? ''}: no current context or cluster` };
  let url: URL;
  try {
    url = new URL(cluster.server);
  } catch {
    return { kind: 'error', reason: `cluster server '${cluster.server}' is not a URL` };
  }
  // client-node 1.x refuses plain http unless TLS checks are explicitly off; say so now, not at the first request.
  if (url.protocol === 'http:' && cluster.skipTLSVerify !== true) {
    return { kind: 'error', reason: `cluster server ${cluster.server} is plain http: set insecure-skip-tls-verify: true to allow it` };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return { kind: 'error', reason: `cluster server ${cluster.server}: unsupported scheme ${url.protocol}` };
  }
  return { kind: 'ok', source, server: cluster.server.replace(/\/+$/, ''), kc };
}

export type GetOutcome =
  /** Response headers arrived; `body` is the (decompressed) payload, to be consumed or destroyed. */
  | { readonly ok: true; readonly status: number; readonly body: Readable }
  | { readonly ok: false; readonly error: string };

/** The one thing the watch needs from the API: a GET. Tests may pass their own. */
export interface ApiGetter {
  /** Never rejects. `signal` aborts the request and its body. */
  get(path: string, signal: AbortSignal): Promise<GetOutcome>;
}

function ignore(): void {}

/** TCP keepalive on the API connection, as client-node's Watch sets it: dead peers surface without traffic. */
const KEEPALIVE_MS = 30_000;

export class KubeApi implements ApiGetter {
  readonly #kc: KubeConfig;
  readonly #server: string;

  constructor(config: { readonly kc: KubeConfig; readonly server: string }) {
    this.#kc = config.kc;
    this.#server = config.server;
  }

  async get(path: string, signal: AbortSignal): Promise<GetOutcome> {
    const opts: https.RequestOptions = {};
    try {
      // Per request on purpose: the token file is re-read when it rotates, exec plugins refresh.
      await this.#kc.applyToHTTPSOptions(opts);
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
      const req = request(url, opts, (res) => {
        res.on('error', ignore);
        let body: Readable = res;
        if (res.headers['content-encoding'] === 'gzip') body = pipeline(res, createGunzip(), ignore);
        resolve({ ok: true, status: res.statusCode ?? 0, body });
      });
      req.on('socket', (s) => s.setKeepAlive(true, KEEPALIVE_MS));
      req.on('error', (e) => resolve({ ok: false, error: message(e) }));
      req.end();
    });
  }
}
