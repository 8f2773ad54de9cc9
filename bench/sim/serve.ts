/**
 * The upstream simulator as its own process (forked by sim/control.ts), so
 * its CPU is neither charged to the load generator nor to the target, and
 * its event loop does not delay either. Two servers: the cluster zone (fake
 * kube-dns, UDP+TCP) and the external zone (fake host resolver, UDP+TCP).
 *
 * With `api` set it also runs a fake Kubernetes API server (sim/api.ts)
 * holding the cluster zone's Namespaces and Services, for the agent's watch.
 *
 * Protocol over the IPC channel: the parent passes a JSON `SimConfig` as
 * argv[2]; the child sends { type: 'ready', cluster, external, apiUrl } once
 * everything listens; on { type: 'stats', seq } it answers { type: 'stats',
 * seq, cluster, external, api } with cumulative counters; on { type:
 * 'cluster', seq, state } it takes the fake kube-dns up, stops it (sockets
 * closed: connections refused, as a dead kube-dns) or black-holes it
 * (listening, answering nothing), and answers { type: 'cluster', seq, ...
 * counters at that moment }; on { type: 'stop' } or when the parent goes
 * away it closes everything and exits.
 */
import { FakeApiServer } from '../../testkit/fake-apiserver.js';
import { SimDnsServer } from '../../testkit/dns-server.js';
import { loadZone } from './api.js';
import { clusterZoneHandler, externalZoneHandler, type ZoneConfig } from './zones.js';

export interface UpstreamFaults {
  readonly latencyMs: number;
  readonly jitterMs: number;
  readonly lossRate: number;
}

export interface SimConfig {
  readonly host: string;
  readonly zones: ZoneConfig;
  readonly cluster: UpstreamFaults & { readonly port: number };
  readonly external: UpstreamFaults & { readonly port: number };
  /** Run a fake API server with this bearer token (null: none). */
  readonly api: { readonly token: string } | null;
}

/** up: serving; stop: not listening (connections refused); blackhole: listening, answering nothing. */
export type ClusterState = 'up' | 'stop' | 'blackhole';

export interface ApiCounters {
  readonly services: number;
  readonly openWatches: number;
  readonly requests: number;
}

export interface SimCounters {
  udpQueries: number;
  tcpQueries: number;
  tcpConnections: number;
  answered: number;
  dropped: number;
}

export type SimMessage =
  | { type: 'ready'; cluster: { host: string; port: number }; external: { host: string; port: number }; apiUrl: string | null }
  | { type: 'stats'; seq: number; cluster: SimCounters; external: SimCounters; api: ApiCounters | null }
  | { type: 'cluster'; seq: number; cluster: SimCounters; external: SimCounters; api: ApiCounters | null; error: string | null }
  | { type: 'error'; message: string };

export type ParentMessage = { type: 'stats'; seq: number } | { type: 'cluster'; seq: number; state: ClusterState } | { type: 'stop' };

/** The simulator keeps a per-name count; fold it away regularly so unique-name runs do not grow memory. */
const FOLD_MS = 2000;

function zero(): SimCounters {
  return { udpQueries: 0, tcpQueries: 0, tcpConnections: 0, answered: 0, dropped: 0 };
}

function fold(server: SimDnsServer, into: SimCounters): void {
  const s = server.stats;
  into.udpQueries += s.udpQueries;
  into.tcpQueries += s.tcpQueries;
  into.tcpConnections += s.tcpConnections;
  into.answered += s.answered;
  into.dropped += s.dropped;
  server.resetStats();
}

async function main(): Promise<void> {
  const send = (m: SimMessage): void => {
    process.send?.(m);
  };
  const cfg = JSON.parse(process.argv[2] ?? '{}') as SimConfig;
  if (!process.send) throw new Error('sim/serve: must be started with an IPC channel (sim/control.ts)');
  const faults = (f: UpstreamFaults): { latencyMs: number; jitterMs: number; lossRate: number } => ({ latencyMs: f.latencyMs, jitterMs: f.jitterMs, lossRate: f.lossRate });
  const cluster = await SimDnsServer.start({ host: cfg.host, port: cfg.cluster.port, handler: clusterZoneHandler(cfg.zones), faults: faults(cfg.cluster) });
  const external = await SimDnsServer.start({ host: cfg.host, port: cfg.external.port, handler: externalZoneHandler(cfg.zones), faults: faults(cfg.external) });
  let api: FakeApiServer | null = null;
  let apiServices = 0;
  const apiCfg = cfg.api ?? null;
  if (apiCfg !== null) {
    api = new FakeApiServer({ token: apiCfg.token });
    apiServices = loadZone(api, cfg.zones);
    await api.start();
  }
  const totals = { cluster: zero(), external: zero() };
  const foldAll = (): void => {
    fold(cluster, totals.cluster);
    fold(external, totals.external);
  };
  const apiCounters = (): ApiCounters | null => (api === null ? null : { services: apiServices, openWatches: api.openWatches, requests: api.requests.length });
  // Changes of the cluster server's state, one at a time and in order.
  let clusterChange: Promise<void> = Promise.resolve();
  const setCluster = async (state: ClusterState): Promise<void> => {
    if (state === 'blackhole') {
      await cluster.restart();
      cluster.faults.dropAll = true;
    } else if (state === 'stop') {
      cluster.faults.dropAll = false;
      await cluster.stop();
    } else {
      cluster.faults.dropAll = false;
      await cluster.restart();
    }
  };
  const timer = setInterval(foldAll, FOLD_MS);
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    clearInterval(timer);
    await Promise.allSettled([cluster.close(), external.close(), api?.close() ?? Promise.resolve()]);
    process.disconnect?.();
    process.exit(0);
  };
  process.on('message', (m: ParentMessage) => {
    if (m.type === 'stats') {
      foldAll();
      send({ type: 'stats', seq: m.seq, cluster: { ...totals.cluster }, external: { ...totals.external }, api: apiCounters() });
    } else if (m.type === 'cluster') {
      clusterChange = clusterChange.then(async () => {
        // Counters at the moment of the change: what the phase before it received.
        foldAll();
        const snap = { cluster: { ...totals.cluster }, external: { ...totals.external }, api: apiCounters() };
        let error: string | null = null;
        try {
          await setCluster(m.state);
        } catch (err) {
          error = err instanceof Error ? err.message : String(err);
        }
        send({ type: 'cluster', seq: m.seq, ...snap, error });
      });
    } else if (m.type === 'stop') {
      void stop();
    }
  });
  process.on('disconnect', () => void stop());
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  send({ type: 'ready', cluster: { host: cluster.host, port: cluster.port }, external: { host: external.host, port: external.port }, apiUrl: api === null ? null : api.url });
}

main().catch((err: unknown) => {
  process.send?.({ type: 'error', message: err instanceof Error ? err.message : String(err) });
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100).unref();
});
