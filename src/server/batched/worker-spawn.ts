/**
 * How one batched worker comes to life (listener.ts #spawn): its sockets
 * opened in order, one per listen address, and its wake eventfd; its thread
 * started with what it needs to know; and the wait until it is in its loop
 * (ready, failed, or gone before it ran). Kept apart so listener.ts reads as
 * what the backend does with its workers (pause, drain, abort, reload,
 * restart), and this file as starting one.
 */
import { receiveMessageOnPort } from 'node:worker_threads';
import { formatHostPort } from '../../addr.js';
import type { StoreLayout } from '../../cache/store-layout.js';
import { DEFAULTS } from '../../config.js';
import type { Logger } from '../../log.js';
import { isWildcardHost } from '../../sys/reuseport.js';
import { isSysError, type UdpBatchSys } from '../../sys/udp-batch.js';
import type { ServerAddress } from '../../upstream/types.js';
import { DEFAULT_BATCH, DEFAULT_MAX_INFLIGHT, type BatchedUdpOptions } from './listener-options.js';
import type { WorkerReport, WorkerSettings } from './protocol.js';
import { RING_WAKE, type RingWake } from './packed-ring.js';
import { WorkerLink } from './worker-link.js';

/** A worker's bound sockets (one per listen address, in order) and its wake eventfd. */
export interface WorkerSockets {
  readonly fds: number[];
  readonly wakeFd: number;
}

/** What the main thread answers a worker's misses with on its sockets (direct.ts); null: off. */
export type DirectDeps = ConstructorParameters<typeof WorkerLink>[5];

/**
 * Opens a worker's sockets and its eventfd. `ports` holds the bound port
 * per listen address: a 0 is replaced by the port the first bind got, so
 * every later worker joins the same group. Throws, with nothing left open,
 * when one cannot be had.
 */
export function openSockets(sys: UdpBatchSys, listen: readonly ServerAddress[], ports: number[]): WorkerSockets {
  const fds: number[] = [];
  let wakeFd = -1;
  try {
    listen.forEach((addr, a) => {
      const fd = sys.openUdp({ host: addr.host, port: ports[a]! });
      if (isSysError(fd)) throw new Error(fd.message);
      fds.push(fd);
      if (ports[a] === 0) {
        const port = sys.localPort(fd);
        if (port <= 0) throw new Error(`getsockname: errno ${-port}`);
        ports[a] = port;
      }
    });
    const ev = sys.eventfd();
    if (isSysError(ev)) throw new Error(ev.message);
    wakeFd = ev;
  } catch (err) {
    for (const fd of fds) sys.close(fd);
    throw err;
  }
  return { fds, wakeFd };
}

/** Starts worker i's thread on its sockets, with the settings of now (a restarted worker starts with the latest). */
export function startWorker(
  i: number, sockets: WorkerSockets, opts: BatchedUdpOptions, ports: readonly number[], policy: WorkerSettings, shared: { store: StoreLayout; load: SharedArrayBuffer }, direct: DirectDeps,
): WorkerLink {
  return new WorkerLink(
    i,
    sockets.fds,
    sockets.wakeFd,
    {
      names: opts.listen.map((a, k) => `udp://${formatHostPort({ host: a.host, port: ports[k]! })}`),
      wildcards: opts.listen.map((a) => isWildcardHost(a.host)),
      cache: policy.cache,
      store: shared.store,
      load: shared.load,
      maxUdpSize: policy.maxUdpSize,
      queryLogEvery: policy.queryLogEvery,
      clientMissRate: policy.clientMissRate,
      clientMissBurst: policy.clientMissBurst,
      clientMissInflight: policy.clientMissInflight,
      batch: opts.batch ?? DEFAULT_BATCH,
      maxInflight: opts.maxInflight ?? DEFAULT_MAX_INFLIGHT,
      maxQueryAgeMs: opts.maxQueryAgeMs ?? DEFAULTS.maxQueryAgeMs,
      localZones: policy.localZones,
      ...(opts.idlePollMs !== undefined ? { idlePollMs: opts.idlePollMs } : {}),
    },
    opts.sys,
    direct,
    opts.ringBytes,
  );
}

/**
 * How long a worker may take to reach its loop: a thread starts in well under a second (a few under the tests'
 * TypeScript loader, two files at a time on a loaded machine), so one silent this long is stuck.
 */
export const WORKER_START_WAIT_MS = 30_000;

/**
 * Resolves once worker `link` is in its loop; rejects when it failed to
 * start or exited first, or said nothing for `waitMs` (its thread is then
 * ended). Every report goes to `onReport` (the ready one
 * too); its exit goes to `onExit`, its sockets already closed and its
 * native block freed if it had not freed it (an exit
 * before the start with `link.closing` set: the listener neither counts it
 * as a death nor restarts it).
 */
export function whenStarted(
  link: WorkerLink, logger: Logger, onReport: (r: WorkerReport | RingWake) => void, onExit: (code: number) => void, waitMs = WORKER_START_WAIT_MS,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let started = false;
    // Stuck before its loop: the start fails (the agent's rolls back and exits 1; a restart is tried again later) and
    // the thread is ended, its exit no death (closing). One stuck in a native call ends when that returns.
    const timer = setTimeout(() => {
      if (started) return;
      started = true;
      link.closing = true;
      logger.error('udp worker did not start in time; terminated', { worker: link.index, waitedMs: waitMs });
      void link.worker.terminate();
      reject(new Error(`worker not ready after ${waitMs} ms`));
    }, waitMs);
    timer.unref();
    const take = (r: WorkerReport | RingWake): void => {
      if (r === RING_WAKE) return onReport(r);
      if (r.ready === true && !started) {
        started = true;
        clearTimeout(timer);
        link.ready = true;
        resolve();
      }
      if (r.failed !== undefined && !started) {
        started = true;
        clearTimeout(timer);
        // It never ran: its exit is no death to report.
        link.closing = true;
        reject(new Error(r.failed));
      }
      onReport(r);
    };
    link.port.on('message', take);
    link.worker.on('error', (err) => {
      logger.error('udp worker failed', { worker: link.index, error: err.message });
    });
    link.worker.on('exit', (code) => {
      // Before its last records are read: a client among them whose question was answered here cannot go back to it.
      link.direct?.workerExited();
      // Its last reports may still wait on the port ('exit' can come first): read them while it still counts as live
      // (their misses go upstream, their clients are held here), not dropped by the close.
      for (let m = receiveMessageOnPort(link.port); m !== undefined; m = receiveMessageOnPort(link.port)) take(m.message as WorkerReport | RingWake);
      // A turn it wrote to the ring before it died, with no message after it.
      take(RING_WAKE);
      link.alive = false;
      link.port.close();
      link.closeFds();
      link.freeBlock();
      clearTimeout(timer);
      if (!started) {
        started = true;
        // It never ran: no death to report and no restart, but whatever waits on this link (a drain, an abort, a
        // reload) must still hear that it is gone.
        link.closing = true;
        reject(new Error(`worker exited with code ${code} before it started`));
      }
      onExit(code);
    });
  });
}
