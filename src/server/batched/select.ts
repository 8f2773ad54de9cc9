/**
 * Which UDP backend serves: batched workers where they work, else the
 * portable dgram listener, chosen once at start and said in the log.
 *
 *   --io batched (default): koffi loads, libc has the calls, the kernel
 *                           takes them (a seccomp profile may not) ─► workers
 *                           anything missing ─► dgram, with a warning naming it
 *   --io dgram:             dgram, no question asked
 */
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { formatHostPort } from '../../addr.js';
import { isWildcardHost } from '../../sys/reuseport.js';
import { loadUdpBatch, type KoffiLoader, type UdpBatchSys } from '../../sys/udp-batch.js';
import type { Listener, QueryHandler } from '../listener.js';
import { UdpListener, type UdpListenerOptions } from '../udp-listener.js';
import { BatchedUdpListener } from './listener.js';
import type { BatchedUdpOptions } from './listener-options.js';

export type UdpIo = 'batched' | 'dgram';

/**
 * Default cap on --workers 0 (auto). Each worker costs an isolate's memory
 * (they all read one cache), and the main thread needs CPU for misses;
 * past 4 workers a node-local cache is unlikely to be CPU-bound on
 * hits (one worker answers well over 100k hits/s).
 */
export const MAX_AUTO_WORKERS = 4;

/** The binding, checked against the kernel; or why the batched backend cannot run here. */
export async function probeBatchedIo(loader?: KoffiLoader): Promise<UdpBatchSys | string> {
  const sys = await loadUdpBatch(loader);
  if (typeof sys === 'string') return sys;
  const why = sys.selfTest();
  return why === null ? sys : `the kernel refused a call: ${why}`;
}

/**
 * Workers for --workers 0: the CPUs this process may use (affinity, and a
 * cgroup CPU quota, as a container limit sets it), at most MAX_AUTO_WORKERS.
 */
export function defaultWorkers(cpus: number = availableParallelism(), quota: number | null = cgroupCpuQuota()): number {
  const usable = quota === null ? cpus : Math.min(cpus, Math.ceil(quota));
  return Math.max(1, Math.min(MAX_AUTO_WORKERS, usable));
}

/** CPUs allowed by the cgroup's quota (v2 cpu.max, else v1 cfs), or null when unlimited or unknown. */
export function cgroupCpuQuota(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): number | null {
  try {
    const [quota, period] = read('/sys/fs/cgroup/cpu.max').trim().split(/\s+/);
    if (quota === 'max' || quota === undefined || period === undefined) return null;
    return Number(quota) / Number(period);
  } catch {
    // Not cgroup v2: try v1.
  }
  try {
    const quota = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us').trim());
    const period = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_period_us').trim());
    return quota > 0 && period > 0 ? quota / period : null;
  } catch {
    return null;
  }
}

/**
 * What selects and builds the UDP listeners: the batched listener's own
 * options where both backends take the same thing (the cache and store only
 * batched uses; the rest both), plus the choice and dgram's parts.
 */
export interface UdpListenersOptions extends Pick<
  BatchedUdpOptions,
  'listen' | 'cache' | 'store' | 'maxUdpSize' | 'queryLogEvery' | 'clientMissRate' | 'clientMissBurst' | 'clientMissInflight' | 'maxQueryAgeMs' | 'localZones' | 'logger'
> {
  readonly io: UdpIo;
  /** 0: defaultWorkers(). */
  readonly workers: number;
  /** For dgram: the main thread's hit path (the one TCP uses too); dgram's per-client miss limit is this hit path's. */
  readonly hitPath: QueryHandler;
  /** dgram listeners: SO_REUSEPORT and the clock (the handover's drain). */
  readonly dgram?: UdpListenerOptions;
  /** For tests: where koffi comes from. */
  readonly loadKoffi?: KoffiLoader;
}

export interface UdpListeners {
  readonly io: UdpIo;
  /** Why dgram serves although batched was asked for; null otherwise. */
  readonly fallbackReason: string | null;
  readonly listeners: Listener[];
  /** The batched listener (also in `listeners`), to connect to a Resolver, reload, drain and abort; null with dgram. */
  readonly batched: BatchedUdpListener | null;
}

/**
 * The UDP listeners for `listen`: one batched listener for all addresses,
 * or one dgram listener per address. Nothing is bound yet (start() does).
 */
export async function createUdpListeners(o: UdpListenersOptions): Promise<UdpListeners> {
  let fallbackReason: string | null = null;
  // No UDP address (an embedding that brings its own listeners): no workers to start for nothing.
  if (o.io === 'batched' && o.listen.length > 0) {
    const scoped = o.listen.find((a) => a.host.includes('%'));
    // The batched sockets are bound from a plain sockaddr: an interface scope (fe80::1%eth0) is dgram's to handle.
    const sys = scoped !== undefined ? `listen address ${scoped.host} has an interface scope` : await probeBatchedIo(o.loadKoffi);
    if (typeof sys !== 'string') {
      const workers = o.workers > 0 ? o.workers : defaultWorkers();
      const batched = new BatchedUdpListener({
        listen: o.listen, workers, cache: o.cache, maxUdpSize: o.maxUdpSize, queryLogEvery: o.queryLogEvery, logger: o.logger, sys,
        ...(o.clientMissRate !== undefined ? { clientMissRate: o.clientMissRate, clientMissBurst: o.clientMissBurst ?? 1 } : {}),
        ...(o.clientMissInflight !== undefined ? { clientMissInflight: o.clientMissInflight } : {}),
        ...(o.store !== undefined ? { store: o.store } : {}),
        ...(o.maxQueryAgeMs !== undefined ? { maxQueryAgeMs: o.maxQueryAgeMs } : {}),
        ...(o.localZones !== undefined ? { localZones: o.localZones } : {}),
      });
      o.logger.info('udp: batched I/O (recvmmsg/sendmmsg in worker threads, SO_REUSEPORT)', { workers });
      return { io: 'batched', fallbackReason: null, listeners: [batched], batched };
    }
    fallbackReason = sys;
    o.logger.warn('udp: batched I/O unavailable, serving UDP with dgram (slower: one recvmsg and one sendmsg per query)', { reason: sys });
  }
  // dgram cannot set IP_PKTINFO (batched does): a wildcard socket's answer takes the source address the route to its
  // client has, not the one the query was sent to, and resolvers drop it ("reply from unexpected source").
  const wildcards = o.listen.filter((a) => isWildcardHost(a.host));
  if (wildcards.length > 0) {
    o.logger.warn('udp: dgram on a wildcard address: an answer leaves from the address the kernel picks to reach its client, not always the one the query was sent to, and resolvers drop those; give each address to --listen instead', {
      listen: wildcards.map(formatHostPort),
    });
  }
  return { io: 'dgram', fallbackReason, listeners: o.listen.map((a) => new UdpListener(a, o.hitPath, o.logger, o.dgram)), batched: null };
}
