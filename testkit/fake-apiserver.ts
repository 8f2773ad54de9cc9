/**
 * A fake kube-apiserver on 127.0.0.1, speaking the part of the protocol a
 * list-then-watch client uses, for the kinds the agent watches:
 *
 *   GET /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices, /api/v1/namespaces, /api/v1/pods
 *     fieldSelector=a.b=v[,a.b!=w]: lists and watches carry only the objects that match
 *            (equality on dotted paths, the way spec.nodeName is selected; a watch's
 *            events are matched on the object they carry)
 *     list:  ?limit=N&continue=TOKEN, pages from one snapshot, metadata.resourceVersion
 *            of the snapshot, metadata.continue + remainingItemCount while more remain;
 *            a continue token older than the compacted history -> HTTP 410 (reason Expired).
 *     watch: ?watch=1|true&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=N
 *            a chunked stream of JSON lines {type, object}; replays retained history
 *            after RV, then live events; an RV older than the retained history -> an
 *            ERROR event with a 410 Status (the watch cache's way), or HTTP 410 when
 *            `expiredAs` is 'http'.
 *
 * Test knobs: add/update/remove objects live (one global RV, bumped per change,
 * pushed to open watches), bookmark() (only past a watch's own RV, as the watch
 * cache) and progressNotify() (etcd's), compact() (forget history), closeWatches(),
 * down()/up() (refuse connections, then listen again on the same port),
 * injectLine() (raw lines into open watches), failNext() (error statuses), a
 * bearer token to require, gzip for lists, and a log of the requests seen.
 */
import http from 'node:http';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import { gzipSync } from 'node:zlib';

export type FakeKind = 'services' | 'endpointslices' | 'namespaces' | 'pods';
export type Obj = Record<string, unknown>;

interface KindInfo {
  readonly path: string;
  readonly apiVersion: string;
  readonly kind: string;
  readonly listKind: string;
}

const KINDS: Readonly<Record<FakeKind, KindInfo>> = {
  services: { path: '/api/v1/services', apiVersion: 'v1', kind: 'Service', listKind: 'ServiceList' },
  endpointslices: {
    path: '/apis/discovery.k8s.io/v1/endpointslices',
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    listKind: 'EndpointSliceList',
  },
  namespaces: { path: '/api/v1/namespaces', apiVersion: 'v1', kind: 'Namespace', listKind: 'NamespaceList' },
  pods: { path: '/api/v1/pods', apiVersion: 'v1', kind: 'Pod', listKind: 'PodList' },
};

type Matcher = (o: Obj) => boolean;

const MATCH_ALL: Matcher = () => true;

/** A field selector ("spec.nodeName=node-a,metadata.namespace!=kube-system") as a predicate; null when malformed. */
function fieldSelector(text: string | null): Matcher | null {
  if (text === null || text === '') return MATCH_ALL;
  const terms: { path: string[]; value: string; negate: boolean }[] = [];
  for (const part of text.split(',')) {
    const m = /^([A-Za-z0-9_.]+)(==|=|!=)(.*)$/.exec(part);
    if (m === null) return null;
    terms.push({ path: m[1]!.split('.'), value: m[3]!, negate: m[2] === '!=' });
  }
  return (o) =>
    terms.every((t) => {
      let v: unknown = o;
      for (const p of t.path) v = typeof v === 'object' && v !== null ? (v as Obj)[p] : undefined;
      // An unset field selects as '' (the API server's field sets are strings).
      const s = typeof v === 'string' ? v : v === undefined || v === null ? '' : String(v);
      return (s === t.value) !== t.negate;
    });
}

interface HistoryEvent {
  readonly rv: number;
  readonly kind: FakeKind;
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly object: Obj;
}

interface Watcher {
  readonly kind: FakeKind;
  readonly match: Matcher;
  readonly res: http.ServerResponse;
  readonly bookmarks: boolean;
  /** The RV it watches from: kube-apiserver bookmarks a watch only past it. */
  readonly fromRv: number;
  readonly timer: NodeJS.Timeout | null;
}

interface Snapshot {
  readonly rv: number;
  readonly items: readonly Obj[];
}

export interface RequestSeen {
  readonly kind: FakeKind | null;
  readonly watch: boolean;
  readonly params: URLSearchParams;
  /** The Authorization header as sent ('' without one). */
  readonly authorization: string;
  /** Over TLS with a client certificate: its subject CN ('' otherwise). */
  readonly clientCn: string;
}

export interface FakeApiOptions {
  /** Require `Authorization: Bearer <token>`. */
  readonly token?: string;
  /**
   * Serve HTTPS with this key and certificate; with `ca`, ask for a client
   * certificate and record its CN (requests without one still get through:
   * tests assert on what was sent).
   */
  readonly tls?: { readonly key: string; readonly cert: string; readonly ca?: string };
  /** Gzip list responses for clients that accept it. */
  readonly gzip?: boolean;
}

function keyOf(o: Obj): string {
  const m = (o['metadata'] ?? {}) as Obj;
  return `${String(m['namespace'] ?? '')}/${String(m['name'] ?? '')}`;
}

function statusJson(code: number, reason: string, message: string): Obj {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

export class FakeApiServer {
  readonly requests: RequestSeen[] = [];
  /** Response body bytes written (after gzip), lists and watch events: the load a client puts on the network. */
  bytesSent = 0;
  /** 'event': 200 + ERROR 410 (watch cache); 'http': HTTP 410 before any event. */
  expiredAs: 'event' | 'http' = 'event';
  /** Called after a list page that has more to come (e.g. to compact() between pages). */
  onPartialPage: ((kind: FakeKind) => void) | null = null;

  readonly #opts: FakeApiOptions;
  readonly #store: Record<FakeKind, Map<string, Obj>> = { services: new Map(), endpointslices: new Map(), namespaces: new Map(), pods: new Map() };
  #history: HistoryEvent[] = [];
  /** Events at or below this RV are forgotten. */
  #compactedRv = 0;
  #rv = 1000;
  /**
   * Per kind, the RV its watch cache has seen: that of its last event, or the global RV at the last
   * progressNotify(). kube-apiserver's bookmarks carry it (cacher.go, lastProcessedResourceVersion).
   */
  readonly #kindRv: Record<FakeKind, number> = { services: 1000, endpointslices: 1000, namespaces: 1000, pods: 1000 };
  readonly #watchers = new Set<Watcher>();
  readonly #sockets = new Set<Socket>();
  readonly #snapshots = new Map<number, Snapshot>();
  #snapshotId = 0;
  #failures: { status: number; message: string }[] = [];
  #server: http.Server | null = null;
  #port = 0;
  #uid = 0;

  constructor(opts: FakeApiOptions = {}) {
    this.#opts = opts;
  }

  get url(): string {
    return `${this.#opts.tls !== undefined ? 'https' : 'http'}://127.0.0.1:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  get openWatches(): number {
    return this.#watchers.size;
  }

  /** Requests of one kind seen so far (list pages and watches). */
  seen(kind: FakeKind, watch: boolean): number {
    return this.requests.filter((r) => r.kind === kind && r.watch === watch).length;
  }

  async start(): Promise<void> {
    await this.up();
  }

  /**
   * Listens (again) on 127.0.0.1, on the same port as before if there was one. That port is free only as long as
   * no socket took it meanwhile (an outgoing connection's local port, a client that connected to itself): a
   * holder that lets go within a few seconds is waited for, rather than failing the test at once.
   */
  async up(): Promise<void> {
    for (let tries = 0; ; tries++) {
      try {
        await this.#listen();
        return;
      } catch (err) {
        this.#server = null;
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || this.#port === 0 || tries >= 100) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  #listen(): Promise<void> {
    const tls = this.#opts.tls;
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => this.#handle(req, res);
    const server: http.Server = tls === undefined
      ? http.createServer(handler)
      : https.createServer({ key: tls.key, cert: tls.cert, ...(tls.ca !== undefined ? { ca: tls.ca, requestCert: true, rejectUnauthorized: false } : {}) }, handler);
    server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#port, '127.0.0.1', () => {
        this.#port = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  /** Stops listening and cuts every connection: clients see resets, then refused connections. */
  down(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const w of this.#watchers) if (w.timer !== null) clearTimeout(w.timer);
    this.#watchers.clear();
    for (const s of this.#sockets) s.destroy();
    if (server === null) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  async close(): Promise<void> {
    await this.down();
  }

  // ---------------------------------------------------------------- knobs

  /** Adds or replaces an object; fills metadata like the API server; pushes ADDED/MODIFIED. */
  put(kind: FakeKind, object: Obj): string {
    const meta = { ...((object['metadata'] ?? {}) as Obj) };
    const key = keyOf(object);
    const old = this.#store[kind].get(key);
    const rv = ++this.#rv;
    meta['resourceVersion'] = String(rv);
    meta['uid'] ??= (old?.['metadata'] as Obj | undefined)?.['uid'] ?? `00000000-0000-4000-8000-${String(++this.#uid).padStart(12, '0')}`;
    meta['creationTimestamp'] ??= '2026-01-01T00:00:00Z';
    const info = KINDS[kind];
    const full: Obj = { kind: info.kind, apiVersion: info.apiVersion, ...object, metadata: meta };
    this.#store[kind].set(key, full);
    this.#emit({ rv, kind, type: old === undefined ? 'ADDED' : 'MODIFIED', object: full });
    return String(rv);
  }

  /** Deletes an object (no-op if absent); pushes DELETED with the last state and a new RV. */
  remove(kind: FakeKind, namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const old = this.#store[kind].get(key);
    if (old === undefined) return;
    this.#store[kind].delete(key);
    const rv = ++this.#rv;
    const object = { ...old, metadata: { ...(old['metadata'] as Obj), resourceVersion: String(rv) } };
    this.#emit({ rv, kind, type: 'DELETED', object });
  }

  /**
   * Sends a BOOKMARK to watches that asked for bookmarks, as kube-apiserver's
   * watch cache does once a minute: at the RV the kind's cache has seen, and
   * only to watches started before it (cache_watcher.go sends nothing at or
   * below a watch's own RV). A kind with no event since a watch began gets
   * none until progressNotify().
   */
  bookmark(kind?: FakeKind): void {
    for (const w of this.#watchers) {
      const rv = this.#kindRv[w.kind];
      if (!w.bookmarks || (kind !== undefined && w.kind !== kind) || rv <= w.fromRv) continue;
      const info = KINDS[w.kind];
      const object = { kind: info.kind, apiVersion: info.apiVersion, metadata: { resourceVersion: String(rv), creationTimestamp: null } };
      w.res.write(JSON.stringify({ type: 'BOOKMARK', object }) + '\n');
    }
  }

  /**
   * An etcd progress notification: every kind's watch cache learns the global
   * RV (etcd's --experimental-watch-progress-notify-interval, 5 s where
   * kubeadm and GKE set it, 10 min by etcd's default).
   */
  progressNotify(): void {
    for (const k of Object.keys(this.#kindRv) as FakeKind[]) this.#kindRv[k] = this.#rv;
  }

  /** Bumps the global RV without touching `kind` (other resources changed), e.g. to move bookmarks. */
  bumpRv(by = 1): void {
    this.#rv += by;
  }

  /** Forgets all history up to now: older watch RVs and continue tokens get 410. */
  compact(): void {
    this.#compactedRv = this.#rv;
    this.#history = [];
  }

  /** Ends every open watch normally (as timeoutSeconds would). */
  closeWatches(): void {
    for (const w of this.#watchers) {
      if (w.timer !== null) clearTimeout(w.timer);
      w.res.end();
    }
    this.#watchers.clear();
  }

  /** Writes a raw line (malformed JSON, odd events) to the open watches of `kind`. */
  injectLine(kind: FakeKind, line: string): void {
    for (const w of this.#watchers) if (w.kind === kind) w.res.write(line + '\n');
  }

  /** The next request(s) get this status and a Status body. */
  failNext(status: number, message = 'injected failure', times = 1): void {
    for (let i = 0; i < times; i++) this.#failures.push({ status, message });
  }

  // ---------------------------------------------------------------- protocol

  #emit(ev: HistoryEvent): void {
    this.#history.push(ev);
    this.#kindRv[ev.kind] = ev.rv;
    const line = JSON.stringify({ type: ev.type, object: ev.object }) + '\n';
    for (const w of this.#watchers) {
      if (w.kind !== ev.kind || !w.match(ev.object)) continue;
      this.bytesSent += Buffer.byteLength(line);
      w.res.write(line);
    }
  }

  #send(res: http.ServerResponse, status: number, body: Obj, gzip = false): void {
    let data: Buffer = Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json' };
    if (gzip) {
      data = gzipSync(data);
      headers['content-encoding'] = 'gzip';
    }
    headers['content-length'] = data.length;
    this.bytesSent += data.length;
    res.writeHead(status, headers);
    res.end(data);
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const kind = (Object.keys(KINDS) as FakeKind[]).find((k) => KINDS[k].path === url.pathname) ?? null;
    const watch = url.searchParams.get('watch') === '1' || url.searchParams.get('watch') === 'true';
    const sock = req.socket as Partial<TLSSocket>;
    const cn = typeof sock.getPeerCertificate === 'function' ? sock.getPeerCertificate().subject?.CN : undefined;
    this.requests.push({ kind, watch, params: url.searchParams, authorization: req.headers.authorization ?? '', clientCn: typeof cn === 'string' ? cn : '' });
    if (this.#opts.token !== undefined && req.headers.authorization !== `Bearer ${this.#opts.token}`) {
      this.#send(res, 401, statusJson(401, 'Unauthorized', 'Unauthorized'));
      return;
    }
    const failure = this.#failures.shift();
    if (failure !== undefined) {
      this.#send(res, failure.status, statusJson(failure.status, 'InternalError', failure.message));
      return;
    }
    if (req.method !== 'GET' || kind === null) {
      this.#send(res, 404, statusJson(404, 'NotFound', 'the server could not find the requested resource'));
      return;
    }
    const match = fieldSelector(url.searchParams.get('fieldSelector'));
    if (match === null) {
      this.#send(res, 400, statusJson(400, 'BadRequest', `unable to parse requirement: ${url.searchParams.get('fieldSelector') ?? ''}`));
      return;
    }
    if (watch) this.#watch(kind, url.searchParams, res, match);
    else this.#list(kind, url.searchParams, res, this.#opts.gzip === true && /\bgzip\b/.test(req.headers['accept-encoding'] ?? ''), match);
  }

  #list(kind: FakeKind, params: URLSearchParams, res: http.ServerResponse, gzip: boolean, match: Matcher): void {
    const info = KINDS[kind];
    const limit = Number(params.get('limit') ?? '0');
    const cont = params.get('continue') ?? '';
    let snap: Snapshot;
    let offset = 0;
    let id: number;
    if (cont !== '') {
      const tok = JSON.parse(Buffer.from(cont, 'base64').toString()) as { id: number; offset: number; rv: number };
      const found = this.#snapshots.get(tok.id);
      if (found === undefined || tok.rv < this.#compactedRv) {
        this.#send(
          res,
          410,
          statusJson(410, 'Expired', 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.'),
        );
        return;
      }
      snap = found;
      offset = tok.offset;
      id = tok.id;
    } else {
      const items = [...this.#store[kind].entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map((e) => e[1]).filter(match);
      snap = { rv: this.#rv, items };
      id = ++this.#snapshotId;
      if (limit > 0 && items.length > limit) this.#snapshots.set(id, snap);
    }
    const end = limit > 0 ? Math.min(snap.items.length, offset + limit) : snap.items.length;
    // List items carry no kind/apiVersion: the API server strips them and names the list's kind instead.
    const items = snap.items.slice(offset, end).map(({ kind: _k, apiVersion: _a, ...rest }) => rest);
    const metadata: Obj = { resourceVersion: String(snap.rv) };
    if (end < snap.items.length) {
      metadata['continue'] = Buffer.from(JSON.stringify({ id, offset: end, rv: snap.rv })).toString('base64');
      metadata['remainingItemCount'] = snap.items.length - end;
    } else {
      this.#snapshots.delete(id);
    }
    this.#send(res, 200, { kind: info.listKind, apiVersion: info.apiVersion, metadata, items }, gzip);
    if (end < snap.items.length) this.onPartialPage?.(kind);
  }

  #watch(kind: FakeKind, params: URLSearchParams, res: http.ServerResponse, match: Matcher): void {
    const rvParam = params.get('resourceVersion') ?? '';
    const from = rvParam === '' || rvParam === '0' ? null : Number(rvParam);
    if (from !== null && from < this.#compactedRv && this.expiredAs === 'http') {
      this.#send(res, 410, statusJson(410, 'Expired', `too old resource version: ${from} (${this.#compactedRv})`));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    if (from !== null && from < this.#compactedRv) {
      const status = statusJson(410, 'Expired', `too old resource version: ${from} (${this.#compactedRv})`);
      res.end(JSON.stringify({ type: 'ERROR', object: status }) + '\n');
      return;
    }
    // No RV: the current state as ADDED events; with one: the retained history after it.
    const replay = from === null
      ? [...this.#store[kind].values()].filter(match).map((object) => ({ type: 'ADDED', object }))
      : this.#history.filter((e) => e.kind === kind && e.rv > from && match(e.object));
    for (const e of replay) res.write(JSON.stringify({ type: e.type, object: e.object }) + '\n');
    const timeoutS = Number(params.get('timeoutSeconds') ?? '0');
    const timer =
      timeoutS > 0
        ? setTimeout(() => {
            this.#watchers.delete(w);
            res.end();
          }, timeoutS * 1000)
        : null;
    const w: Watcher = { kind, match, res, bookmarks: params.get('allowWatchBookmarks') === 'true', fromRv: from ?? this.#rv, timer };
    this.#watchers.add(w);
    res.on('close', () => {
      if (timer !== null) clearTimeout(timer);
      this.#watchers.delete(w);
    });
  }
}

// ---------------------------------------------------------------- object JSON, as kube-apiserver returns it

export function namespaceJson(name: string): Obj {
  return {
    metadata: { name, labels: { 'kubernetes.io/metadata.name': name } },
    spec: { finalizers: ['kubernetes'] },
    status: { phase: 'Active' },
  };
}

export interface ServiceSpec {
  readonly clusterIP?: string;
  readonly clusterIPs?: readonly string[];
  readonly type?: string;
  readonly externalName?: string;
  readonly ports?: readonly { name?: string; port: number; protocol?: string }[];
  readonly publishNotReadyAddresses?: boolean;
}

export function serviceJson(namespace: string, name: string, spec: ServiceSpec = {}): Obj {
  const clusterIP = spec.clusterIP ?? '10.96.0.10';
  const s: Obj = {
    clusterIP,
    clusterIPs: spec.clusterIPs ?? [clusterIP],
    type: spec.type ?? 'ClusterIP',
    sessionAffinity: 'None',
    ipFamilies: ['IPv4'],
    ipFamilyPolicy: 'SingleStack',
    internalTrafficPolicy: 'Cluster',
    selector: { app: name },
    ports: (spec.ports ?? [{ name: 'http', port: 80 }]).map((p) => ({ ...p, protocol: p.protocol ?? 'TCP', targetPort: p.port })),
  };
  if (spec.externalName !== undefined) {
    s['externalName'] = spec.externalName;
    delete s['clusterIP'];
    delete s['clusterIPs'];
  }
  if (spec.publishNotReadyAddresses !== undefined) s['publishNotReadyAddresses'] = spec.publishNotReadyAddresses;
  return {
    metadata: {
      name,
      namespace,
      labels: { app: name },
      managedFields: [
        {
          manager: 'kubectl-client-side-apply',
          operation: 'Update',
          apiVersion: 'v1',
          time: '2026-01-01T00:00:00Z',
          fieldsType: 'FieldsV1',
          fieldsV1: { 'f:spec': { 'f:ports': {}, 'f:selector': {}, 'f:sessionAffinity': {}, 'f:type': {} } },
        },
      ],
    },
    spec: s,
    status: { loadBalancer: {} },
  };
}

export interface SliceEndpoint {
  readonly addresses: readonly string[];
  readonly ready?: boolean;
  readonly hostname?: string;
}

export function endpointSliceJson(
  namespace: string,
  name: string,
  service: string,
  endpoints: readonly SliceEndpoint[],
  opts: { addressType?: string; ports?: readonly { name?: string; port: number; protocol?: string }[] } = {},
): Obj {
  return {
    metadata: {
      name,
      namespace,
      generateName: `${service}-`,
      labels: { 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io', 'kubernetes.io/service-name': service },
      ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name: service, uid: '11111111-2222-4333-8444-555555555555', controller: true, blockOwnerDeletion: true }],
    },
    addressType: opts.addressType ?? 'IPv4',
    endpoints: endpoints.map((e, i) => {
      const conditions = e.ready === undefined ? {} : { ready: e.ready, serving: e.ready, terminating: false };
      const out: Obj = {
        addresses: e.addresses,
        conditions,
        nodeName: `node-${i % 3}`,
        targetRef: { kind: 'Pod', namespace, name: `${service}-pod-${i}`, uid: `22222222-3333-4444-8555-${String(i).padStart(12, '0')}` },
        zone: 'zone-a',
      };
      if (e.hostname !== undefined) out['hostname'] = e.hostname;
      return out;
    }),
    ports: (opts.ports ?? [{ name: 'http', port: 80 }]).map((p) => ({ ...p, protocol: p.protocol ?? 'TCP' })),
  };
}

export interface PodSpec {
  readonly nodeName?: string;
  /** status.podIP; status.podIPs lists it, then `extraIPs` (dual-stack). */
  readonly podIP?: string;
  readonly extraIPs?: readonly string[];
  readonly hostNetwork?: boolean;
  readonly phase?: string;
}

/** A Pod as kube-apiserver returns it (the fields a node-local agent may read, and some it must not need). */
export function podJson(namespace: string, name: string, spec: PodSpec = {}): Obj {
  const ips = spec.podIP === undefined ? [] : [spec.podIP, ...(spec.extraIPs ?? [])];
  const status: Obj = { phase: spec.phase ?? 'Running', hostIP: '192.0.2.1', conditions: [{ type: 'Ready', status: 'True' }] };
  if (spec.podIP !== undefined) {
    status['podIP'] = spec.podIP;
    status['podIPs'] = ips.map((ip) => ({ ip }));
  }
  const podSpec: Obj = {
    containers: [{ name: 'app', image: 'registry.example/app:1', env: [{ name: 'PASSWORD', value: 'not-for-dns' }] }],
    restartPolicy: 'Always',
    serviceAccountName: 'default',
  };
  if (spec.nodeName !== undefined) podSpec['nodeName'] = spec.nodeName;
  if (spec.hostNetwork !== undefined) podSpec['hostNetwork'] = spec.hostNetwork;
  return { metadata: { name, namespace, labels: { app: name } }, spec: podSpec, status };
}
