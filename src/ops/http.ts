/**
 * The operations HTTP surface, node:http only: GET /metrics (the registry's
 * text), GET /health (liveness: 200 "OK" while the agent says it is alive: starting or serving)
 * and GET /ready (readiness: 200, or 503 with a JSON body naming what is
 * missing). Anything else is 404. One OpsServer per listen address; node-cache
 * has two (metrics and health), and when both land on one address they are
 * one server with every route.
 *
 * Bounded, because it shares the node with pods: connection caps (in all and
 * per client address, http-connections.ts), header and request deadlines
 * (slow-loris, from accept), an idle-socket timeout, a few answers owed per
 * connection, small headers, and no request body is ever read (a request that
 * has one gets its answer and `Connection: close`). Concurrent scrapes share
 * one render, and there are a few renders a second at most (scrape-render.ts).
 * It answers from callbacks that only read state, so a probe never waits on
 * DNS.
 */
import http from 'node:http';
import { listenersOn, loadReusePort } from '../sys/reuseport.js';
import { isIP, type Socket } from 'node:net';
import { dialableHost, formatHostPort, isWildcard } from '../addr.js';
import { systemClock, type Clock } from '../clock.js';
import type { Component } from '../lifecycle.js';
import type { Logger } from '../log.js';
import type { ServerAddress } from '../upstream/types.js';
import { OpsConnections } from './http-connections.js';
import { ScrapeRenders } from './scrape-render.js';

export type OpsRoute = 'metrics' | 'health' | 'ready';

const PATHS: Readonly<Record<string, OpsRoute>> = { '/metrics': 'metrics', '/health': 'health', '/ready': 'ready' };
/** RFC 9112 3.2.2: a request target in absolute-form ("http://host/health") is accepted too; its path is the route. */
const ABSOLUTE_FORM = /^https?:\/\/[^/?]*\/?/i;

/** What /ready reports. `missing` names each unmet condition, for people reading `kubectl describe`. */
export interface Readiness {
  readonly ready: boolean;
  readonly missing?: readonly string[];
}

/** What /metrics needs: MetricsRegistry (metrics.ts) is one. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface OpsHandlers {
  readonly metrics?: MetricsSource;
  /** Liveness: false (or a throw) makes /health 503. */
  readonly serving?: () => boolean;
  readonly readiness?: () => Readiness;
}

export interface OpsHttpLimits {
  /** Open connections at once; past it a newcomer closes the one quiet longest (owing no answer), else one whose client does not read its answer, else one whose scrape waits on the render bound (http-connections.ts), or is closed when every one is being answered and read. Prometheus and kubelet need a handful. */
  readonly maxConnections: number;
  /** The same, per client address: one pod cannot take every slot from the kubelet's probe. */
  readonly maxConnectionsPerPeer: number;
  /** Requests taken and not yet answered on one connection (pipelined); one more closes it. */
  readonly maxAnswersOwed: number;
  /** All headers must arrive within this (slow-loris); a connection that sends nothing is closed after it too. */
  readonly headersTimeoutMs: number;
  /** The whole request must arrive within this. */
  readonly requestTimeoutMs: number;
  /** Idle keep-alive connections close after this. */
  readonly keepAliveTimeoutMs: number;
  /** A socket with no traffic either way this long is destroyed (a scraper that stopped reading). */
  readonly socketTimeoutMs: number;
  /** How often Node checks the header and request deadlines; they fire up to this late. */
  readonly checkIntervalMs: number;
  readonly maxHeaderBytes: number;
  /** /metrics renders in one second at most; scrapes past it wait for the next second's render (a client scraping in a loop). */
  readonly maxRendersPerSecond: number;
  /** On stop, answers owed (a scrape rendering) may take this long, at most until the stop's deadline; then every connection is closed. */
  readonly drainMs: number;
}

/**
 * Internal bounds, not flags: nothing legitimate comes near them. A probe or
 * scrape is one small GET; kubelet's probe timeout defaults to 1 s and
 * Prometheus's scrape timeout to 10 s, so 5 s for a request to arrive only
 * cuts off clients that trickle.
 */
export const OPS_HTTP_LIMITS: OpsHttpLimits = {
  maxConnections: 32,
  maxConnectionsPerPeer: 8,
  maxAnswersOwed: 2,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 5_000,
  keepAliveTimeoutMs: 5_000,
  socketTimeoutMs: 30_000,
  checkIntervalMs: 1_000,
  maxHeaderBytes: 8 * 1024,
  drainMs: 1_000,
  maxRendersPerSecond: 10,
};

export interface OpsServerOptions {
  readonly address: ServerAddress;
  readonly routes: readonly OpsRoute[];
  readonly handlers: OpsHandlers;
  readonly logger: Logger;
  readonly limits?: Partial<OpsHttpLimits>;
  /** Bind with SO_REUSEPORT (an upgrade's new agent beside the old one). */
  readonly reusePort?: boolean;
  /** What stop()'s deadline is measured on (default the system clock). */
  readonly clock?: Clock;
  /**
   * What the bound on /metrics renders is measured on: the system clock unless a test says otherwise. Never the
   * agent's clock: the bound guards the main thread's real time, and a test's ManualClock would freeze the text.
   */
  readonly renderClock?: Clock;
}

const TEXT = 'text/plain; charset=utf-8';
const JSON_TYPE = 'application/json';

function reply(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  // HEAD: Node drops the body and keeps the length.
  res.end(body);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class OpsServer implements Component {
  readonly name: string;
  readonly routes: readonly OpsRoute[];
  readonly #wanted: ServerAddress;
  readonly #reusePort: boolean;
  readonly #handlers: OpsHandlers;
  readonly #log: Logger;
  readonly #server: http.Server;
  readonly #connections: OpsConnections;
  readonly #clock: Clock;
  readonly #drainMs: number;
  #bound: ServerAddress | null;
  readonly #renders: ScrapeRenders | null;

  constructor(opts: OpsServerOptions) {
    const limits = { ...OPS_HTTP_LIMITS, ...opts.limits };
    for (const r of opts.routes) {
      if (r === 'metrics' && opts.handlers.metrics === undefined) throw new Error('ops http: /metrics needs a metrics source');
      if (r === 'ready' && opts.handlers.readiness === undefined) throw new Error('ops http: /ready needs a readiness callback');
    }
    this.routes = [...new Set(opts.routes)];
    this.name = `http ${formatHostPort(opts.address)} (${this.routes.map((r) => `/${r}`).join(' ')})`;
    this.#wanted = opts.address;
    this.#reusePort = opts.reusePort ?? false;
    this.#handlers = opts.handlers;
    this.#log = opts.logger;
    this.#bound = null;
    this.#clock = opts.clock ?? systemClock;
    this.#renders = opts.handlers.metrics === undefined || !this.routes.includes('metrics') ? null : new ScrapeRenders(opts.handlers.metrics, opts.renderClock ?? systemClock, limits.maxRendersPerSecond);
    this.#drainMs = limits.drainMs;
    this.#connections = new OpsConnections({
      maxConnections: limits.maxConnections,
      maxConnectionsPerPeer: limits.maxConnectionsPerPeer,
      maxAnswersOwed: limits.maxAnswersOwed,
      firstByteMs: limits.headersTimeoutMs,
    });
    this.#server = http.createServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
        connectionsCheckingInterval: limits.checkIntervalMs,
        maxHeaderSize: limits.maxHeaderBytes,
      },
      (req, res) => {
        if (this.#connections.take(req, res)) this.#onRequest(req, res);
      },
    );
    // No server.maxConnections: the caps are ours, so a newcomer can make room rather than be refused.
    this.#server.on('connection', (socket: Socket) => this.#connections.accept(socket));
    this.#server.timeout = limits.socketTimeoutMs;
  }

  /** The address as bound (port 0 resolved); the wanted one before start. */
  get address(): ServerAddress {
    return this.#bound ?? this.#wanted;
  }

  /** Scrapes past the render bound are waiting for the next second's render. */
  get scrapesWaiting(): boolean {
    return this.#renders?.waiting ?? false;
  }

  /** Requests taken and not yet answered (a scrape waiting or rendering), over every connection. */
  get answersOwed(): number {
    return this.#connections.owed;
  }

  get url(): string {
    return `http://${formatHostPort(this.address)}`;
  }

  /**
   * Listens; rejects with the address and the reason (EADDRINUSE,
   * EADDRNOTAVAIL) when it cannot. With `reusePort` the socket is made with
   * SO_REUSEPORT, so a new agent's probes and scrapes can bind beside the old
   * one during an upgrade (the old one closes these first on SIGTERM).
   */
  async start(): Promise<void> {
    let fd: number | null = null;
    if (this.#reusePort) {
      const rp = await loadReusePort();
      if (typeof rp !== 'string') {
        const r = rp.open('tcp', this.#wanted);
        if (typeof r === 'number') {
          fd = r;
          // Kubelet probes the new pod on the address the old agent also holds: new connections must reach the
          // newest member, not a hash's pick, or the old agent's 200 marks the new pod ready before it serves.
          // "return <our index>" (join order); once older members leave, the index is past the group's end and
          // the kernel hashes again among whoever is left.
          const index = listenersOn(this.#wanted) - 1;
          if (index > 0) {
            const err = rp.steer(fd, index);
            if (err !== null) this.#log.warn('ops http: cannot steer new connections to this agent; probes may reach the older one', { address: formatHostPort(this.#wanted), error: err.message });
          }
        }
      }
    }
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.#server.off('listening', onListening);
        reject(new Error(`cannot listen on ${formatHostPort(this.#wanted)} for ${this.routes.map((r) => `/${r}`).join(', ')}: ${err.message}`, { cause: err }));
      };
      const onListening = (): void => {
        this.#server.off('error', onError);
        const a = this.#server.address();
        this.#bound = a !== null && typeof a === 'object' ? { host: this.#wanted.host, port: a.port } : this.#wanted;
        this.#server.on('error', (err) => this.#log.warn('ops http error', { address: formatHostPort(this.address), error: err.message }));
        this.#log.info('ops http listening', { url: this.url, paths: this.routes.map((r) => `/${r}`) });
        resolve();
      };
      this.#server.once('error', onError);
      this.#server.once('listening', onListening);
      // A %zone given as an interface index becomes its name (addr.ts says why); the SO_REUSEPORT bind reads either.
      if (fd !== null) this.#server.listen({ fd });
      else this.#server.listen({ host: dialableHost(this.#wanted.host), port: this.#wanted.port, exclusive: true });
    });
  }

  /**
   * Takes no new connection, answers what is owed (a scrape rendering) until
   * `deadline` (Clock ms) or drainMs, whichever comes first, then closes every
   * connection. Never throws.
   */
  async stop(deadline?: number): Promise<void> {
    if (!this.#server.listening) return;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const left = deadline === undefined ? this.#drainMs : Math.min(this.#drainMs, deadline - this.#clock.now());
    await this.#connections.drain(Math.max(0, left));
    this.#server.closeAllConnections();
    await closed;
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = (req.url ?? '/').replace(ABSOLUTE_FORM, '/');
    const q = url.indexOf('?');
    const route = PATHS[q < 0 ? url : url.slice(0, q)];
    // Never read a body: whoever sent one gets the answer and a closed connection.
    if (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined) res.setHeader('Connection', 'close');
    if (route === undefined || !this.routes.includes(route)) {
      reply(res, 404, TEXT, '404 page not found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      reply(res, 405, TEXT, 'method not allowed\n');
      return;
    }
    switch (route) {
      case 'metrics':
        this.#metrics(req, res);
        return;
      case 'health':
        this.#health(res);
        return;
      case 'ready':
        this.#ready(res);
        return;
    }
  }

  #metrics(req: http.IncomingMessage, res: http.ServerResponse): void {
    const source = this.#handlers.metrics!;
    const text = this.#renders!.text();
    // Past the render bound: a slot a newcomer may take until the next second's render starts (then it is answered).
    const waitOver = this.#renders!.waitOver;
    if (waitOver !== null) this.#connections.awaitingRender(req.socket, waitOver);
    text.then(
      (text) => reply(res, 200, source.contentType, text),
      (err: unknown) => {
        this.#log.warn('metrics scrape failed', { error: message(err) });
        reply(res, 500, TEXT, `metrics: ${message(err)}\n`);
      },
    );
  }

  /** CoreDNS's health plugin answers 200 "OK"; so do we while alive (the agent's `serving`: starting or serving). */
  #health(res: http.ServerResponse): void {
    const serving = this.#handlers.serving;
    let ok: boolean;
    let why = 'not serving';
    try {
      ok = serving === undefined || serving();
    } catch (err) {
      ok = false;
      why = `health check failed: ${message(err)}`;
    }
    if (ok) reply(res, 200, TEXT, 'OK');
    else reply(res, 503, TEXT, `${why}\n`);
  }

  #ready(res: http.ServerResponse): void {
    let r: Readiness;
    try {
      r = this.#handlers.readiness!();
    } catch (err) {
      r = { ready: false, missing: [`readiness check failed: ${message(err)}`] };
    }
    if (r.ready) reply(res, 200, JSON_TYPE, JSON.stringify({ ready: true }));
    else reply(res, 503, JSON_TYPE, JSON.stringify({ ready: false, missing: r.missing ?? [] }));
  }
}

/**
 * Readiness from named conditions, in order: every one that is false (or
 * throws) is named in `missing`. E.g.
 * `readinessOf({ listeners: () => bound, 'view or cluster DNS': () => synced || healthy })`.
 */
export function readinessOf(checks: Readonly<Record<string, () => boolean>>): Readiness {
  const missing: string[] = [];
  for (const [what, check] of Object.entries(checks)) {
    let ok: boolean;
    try {
      ok = check();
    } catch {
      ok = false;
    }
    if (!ok) missing.push(what);
  }
  return { ready: missing.length === 0, missing };
}

/**
 * Where the ops listeners go by default: the host of the first DNS listen
 * address (node-cache binds health to its link-local IP), never every
 * interface: when that first address is a wildcard, loopback of its family.
 * All interfaces only when an address says so explicitly.
 */
export function defaultOpsHost(listen: readonly ServerAddress[]): string {
  const first = listen[0];
  if (first === undefined) return '127.0.0.1';
  if (isWildcard(first.host)) return isIP(first.host) === 6 ? '::1' : '127.0.0.1';
  return first.host;
}

export interface OpsListenOptions {
  /** Where /metrics is served; null: nowhere. */
  readonly metrics: ServerAddress | null;
  /** Where /health and /ready are served; null: nowhere. */
  readonly health: ServerAddress | null;
  readonly handlers: OpsHandlers;
  readonly logger: Logger;
  readonly limits?: Partial<OpsHttpLimits>;
  readonly reusePort?: boolean;
  /** The clock of stop()'s deadline (the agent's). */
  readonly clock?: Clock;
}

function sameAddress(a: ServerAddress, b: ServerAddress): boolean {
  return a.port !== 0 && a.port === b.port && a.host === b.host;
}

/**
 * The servers for the two node-cache listeners: metrics and health (with
 * ready). Both on one address make one server with all three paths. Not
 * started: each is a Component for the agent's stack.
 */
export function createOpsServers(o: OpsListenOptions): OpsServer[] {
  const common = { handlers: o.handlers, logger: o.logger, limits: o.limits, reusePort: o.reusePort ?? false, clock: o.clock };
  const health: OpsRoute[] = o.handlers.readiness === undefined ? ['health'] : ['health', 'ready'];
  if (o.metrics !== null && o.health !== null && sameAddress(o.metrics, o.health)) {
    return [new OpsServer({ ...common, address: o.metrics, routes: ['metrics', ...health] })];
  }
  const out: OpsServer[] = [];
  if (o.metrics !== null) out.push(new OpsServer({ ...common, address: o.metrics, routes: ['metrics'] }));
  if (o.health !== null) out.push(new OpsServer({ ...common, address: o.health, routes: health }));
  return out;
}
