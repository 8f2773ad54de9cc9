/**
 * How requests to the API server authenticate, read without
 * @kubernetes/client-node for the two cases a DaemonSet meets:
 *
 *   - in-cluster: the service-account token and CA client-go's
 *     rest.InClusterConfig reads, the server from KUBERNETES_SERVICE_HOST/PORT;
 *   - a kubeconfig whose user is a token, a token file, a client certificate,
 *     a username and password or an exec plugin (exec-credentials.ts), and
 *     whose cluster is a server, a CA (file or data),
 *     insecure-skip-tls-verify and tls-server-name.
 *
 * Why not client-node for these: importing it costs 28 MB of V8 heap and
 * about 60 MiB of RSS for the life of the process (measured: `node
 * --expose-gc` importing it alone), to read a token and a CA. A kubeconfig
 * that needs more (an auth-provider plugin, a proxy) is still
 * handed to client-node, loaded only then (client.ts).
 */
import fs from 'node:fs';
import type https from 'node:https';
import { createSecureContext } from 'node:tls';
import { dirname, isAbsolute, join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ExecCredentials, readExecPlugin } from './exec-credentials.js';

/** What a request needs from the credentials; async because client-node's plugins are. */
export interface Credentials {
  /** Fills in TLS options and headers; throws when the credentials cannot be read. */
  apply(opts: https.RequestOptions): Promise<void>;
}

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** TLS material, read for each request: fixed data, or a file that may be replaced while we run. */
export interface PemSource {
  read(): string | Buffer;
}

/**
 * A file read again only when it changed (mtime, size or inode): a projected
 * service-account token rotates about hourly and the kubelet swaps the file,
 * and ca.crt is swapped the same way when the cluster CA rotates (client-go
 * re-reads both); a kubeconfig's certificate files are renewed in place.
 * One stat per request; requests are list and watch starts, not per query.
 */
class WatchedFile implements PemSource {
  readonly path: string;
  #stamp = '';
  #text = '';

  constructor(path: string) {
    this.path = path;
  }

  read(): string {
    const st = fs.statSync(this.path);
    const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    if (stamp !== this.#stamp) {
      this.#text = fs.readFileSync(this.path, 'utf8').trim();
      this.#stamp = stamp;
    }
    return this.#text;
  }
}

function fixedPem(data: Buffer): PemSource {
  return { read: () => data };
}

interface PemSet {
  readonly ca: string | Buffer | undefined;
  readonly cert: string | Buffer | undefined;
  readonly key: string | Buffer | undefined;
}

export interface TlsMaterial {
  readonly ca?: PemSource;
  readonly cert?: PemSource;
  readonly key?: PemSource;
  readonly skipVerify: boolean;
  readonly serverName?: string;
}

export type Authorization =
  | { readonly kind: 'none' }
  | { readonly kind: 'token'; readonly token: string }
  | { readonly kind: 'token-file'; readonly file: WatchedFile }
  | { readonly kind: 'basic'; readonly user: string; readonly password: string };

/**
 * Our own credentials: TLS material and one way to authorize, both read per
 * request. A rotated CA or client certificate gives the request other TLS
 * options, and Node's https agent pools connections by those options, so it
 * opens a new connection rather than reusing one made with the old material.
 */
export class NativeCredentials implements Credentials {
  readonly #tls: TlsMaterial;
  readonly #auth: Authorization;
  /** The CA, certificate and key last seen to load together; null until a set has. */
  #loaded: PemSet | null = null;

  constructor(tls: TlsMaterial, auth: Authorization) {
    this.#tls = tls;
    this.#auth = auth;
  }

  apply(opts: https.RequestOptions): Promise<void> {
    const t = this.#tls;
    const pems = this.#pems();
    if (pems.ca !== undefined) opts.ca = pems.ca;
    if (pems.cert !== undefined) opts.cert = pems.cert;
    if (pems.key !== undefined) opts.key = pems.key;
    if (t.serverName !== undefined) opts.servername = t.serverName;
    opts.rejectUnauthorized = !t.skipVerify;
    const header = this.#header();
    if (header !== '') opts.headers = { ...opts.headers, authorization: header };
    return Promise.resolve();
  }

  /**
   * The files as they are now, if they load together; else the last set that
   * did. A renewal rewrites the certificate and the key one after the other
   * (or is caught half-written): for that moment the pair does not load, and
   * the set before it still does. A set that never loaded (start) throws.
   */
  #pems(): PemSet {
    const t = this.#tls;
    const last = this.#loaded;
    try {
      // A file gone for a moment (deleted, then written anew) is the same case as one half-written.
      const now: PemSet = { ca: t.ca?.read(), cert: t.cert?.read(), key: t.key?.read() };
      if (last !== null && last.ca === now.ca && last.cert === now.cert && last.key === now.key) return last;
      createSecureContext({ ...(now.ca !== undefined ? { ca: now.ca } : {}), ...(now.cert !== undefined ? { cert: now.cert } : {}), ...(now.key !== undefined ? { key: now.key } : {}) });
      this.#loaded = now;
      return now;
    } catch (e) {
      if (last !== null) return last;
      throw e;
    }
  }

  #header(): string {
    const a = this.#auth;
    switch (a.kind) {
      case 'none':
        return '';
      case 'token':
        return `Bearer ${a.token}`;
      case 'token-file':
        return `Bearer ${a.file.read()}`;
      case 'basic':
        return `Basic ${Buffer.from(`${a.user}:${a.password}`).toString('base64')}`;
    }
  }
}

/** In-cluster, as rest.InClusterConfig: the token and the CA next to it, each re-read as it rotates. */
export function inClusterCredentials(saDir: string): Credentials {
  const caPath = join(saDir, 'ca.crt');
  // A pod always has ca.crt beside the token; without it at start, fall back to the system roots rather than refuse.
  const ca = fs.existsSync(caPath) ? new WatchedFile(caPath) : undefined;
  return new NativeCredentials({ ...(ca !== undefined ? { ca } : {}), skipVerify: false }, { kind: 'token-file', file: new WatchedFile(join(saDir, 'token')) });
}

/** The server host for a URL: an IPv6 KUBERNETES_SERVICE_HOST needs brackets. */
export function inClusterServer(host: string, port: string): string {
  return `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export type KubeconfigRead =
  /** Ours can serve it. */
  | { readonly kind: 'static'; readonly server: string; readonly skipVerify: boolean; readonly credentials: Credentials }
  /** Needs client-node (a plugin or a proxy); `why` names the field. */
  | { readonly kind: 'delegate'; readonly why: string }
  | { readonly kind: 'error'; readonly reason: string };

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(o: Obj, k: string): string | undefined {
  const v = o[k];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** A named entry of a kubeconfig list (clusters, users, contexts), its inner object. */
function named(doc: Obj, list: string, inner: string, name: string): Obj | undefined {
  const items = doc[list];
  if (!Array.isArray(items)) return undefined;
  for (const it of items as unknown[]) {
    if (isObj(it) && it['name'] === name) {
      const v = it[inner];
      return isObj(v) ? v : {};
    }
  }
  return undefined;
}

/**
 * Reads a kubeconfig file's current context. Paths in it are relative to the
 * file's directory (client-go's rule); `-data` fields are base64.
 */
export function readKubeconfig(path: string, execTimeoutMs?: number): KubeconfigRead {
  let doc: unknown;
  try {
    doc = parseYaml(fs.readFileSync(path, 'utf8'));
  } catch (e) {
    return { kind: 'error', reason: e instanceof Error ? e.message : String(e) };
  }
  if (!isObj(doc)) return { kind: 'error', reason: 'not a kubeconfig (no mapping at the top)' };
  const ctxName = str(doc, 'current-context');
  const ctx = ctxName === undefined ? undefined : named(doc, 'contexts', 'context', ctxName);
  const clusterName = ctx === undefined ? undefined : str(ctx, 'cluster');
  const cluster = clusterName === undefined ? undefined : named(doc, 'clusters', 'cluster', clusterName);
  if (ctx === undefined || cluster === undefined) return { kind: 'error', reason: 'no current context or cluster' };
  const server = str(cluster, 'server') ?? '';
  const userName = str(ctx, 'user');
  const user = userName === undefined ? {} : (named(doc, 'users', 'user', userName) ?? {});
  const provider = user['auth-provider'];
  if (isObj(provider) && isObj(provider['config']) && provider['config']['cmd-path'] !== undefined) {
    // client-node runs it with execSync: the agent, DNS and all, would stop while it runs. client-go dropped these (1.26).
    return { kind: 'error', reason: `user.auth-provider ${String(provider['name'])} with cmd-path is not supported: use an exec plugin (gke-gcloud-auth-plugin, kubelogin)` };
  }
  if (provider !== undefined) return { kind: 'delegate', why: 'user.auth-provider' };
  if (cluster['proxy-url'] !== undefined) return { kind: 'delegate', why: 'cluster.proxy-url' };
  const plugin = user['exec'] === undefined ? undefined : readExecPlugin(user['exec'], path);
  if (typeof plugin === 'string') return { kind: 'error', reason: plugin };

  const base = dirname(path);
  const fileOf = (p: string): string => (isAbsolute(p) ? p : join(base, p));
  const material = (o: Obj, field: string): PemSource | undefined => {
    const data = str(o, `${field}-data`);
    if (data !== undefined) return fixedPem(Buffer.from(data, 'base64'));
    const name = str(o, field);
    if (name === undefined) return undefined;
    const file = new WatchedFile(fileOf(name));
    file.read(); // a missing file is an error now, not at the first list
    return file;
  };
  try {
    const skipVerify = cluster['insecure-skip-tls-verify'] === true;
    const ca = material(cluster, 'certificate-authority');
    const cert = material(user, 'client-certificate');
    const key = material(user, 'client-key');
    const serverName = str(cluster, 'tls-server-name');
    const tls: TlsMaterial = {
      skipVerify,
      ...(ca !== undefined ? { ca } : {}),
      ...(cert !== undefined ? { cert } : {}),
      ...(key !== undefined ? { key } : {}),
      ...(serverName !== undefined ? { serverName } : {}),
    };
    const token = str(user, 'token');
    const tokenFile = str(user, 'tokenFile');
    const username = str(user, 'username');
    let auth: Authorization = { kind: 'none' };
    if (token !== undefined) auth = { kind: 'token', token };
    else if (tokenFile !== undefined) auth = { kind: 'token-file', file: new WatchedFile(fileOf(tokenFile)) };
    else if (username !== undefined) auth = { kind: 'basic', user: username, password: str(user, 'password') ?? '' };
    if (auth.kind === 'token-file') auth.file.read(); // a missing token file is an error now, not at the first list
    const native = new NativeCredentials(tls, plugin === undefined ? auth : { kind: 'none' });
    return { kind: 'static', server, skipVerify, credentials: plugin === undefined ? native : new ExecCredentials(native, plugin, execTimeoutMs) };
  } catch (e) {
    return { kind: 'error', reason: e instanceof Error ? e.message : String(e) };
  }
}
