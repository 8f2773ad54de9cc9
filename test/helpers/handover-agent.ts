// One agent process for test/handover.test.ts: the real Agent (resolver,
// cache, upstreams) with its listeners bound through SO_REUSEPORT, so a
// second copy can start on the same address. The agent does not build such
// listeners yet (config has no flag for it), so this script builds them over
// agent.hitPath and stops them the way the agent's listener part should:
// pause, wait for drained(), wait for the queries in flight, close.
//
// argv[2]: JSON HandoverAgentArgs. stdout: one JSON line when loaded
// ({ loaded }), one when serving ({ ready, pid, reusePort }), one when
// stopped (HandoverAgentReport). It starts when it reads a line on stdin, so
// the test can load it before the query stream and start it in the middle.
// SIGTERM: drain and exit 0.
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { Agent } from '../../src/agent.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { SERVER_COUNTERS } from '../../src/server/stats.js';
import { TcpListener } from '../../src/server/tcp-listener.js';
import { UdpListener } from '../../src/server/udp-listener.js';
import { loadReusePort, type ReusePort } from '../../src/sys/reuseport.js';

export interface HandoverAgentArgs {
  host: string;
  port: number;
  /** The fake cluster DNS (TCP) and host resolver (UDP), both on 127.0.0.1. */
  upstreamPort: number;
  resolvConf: string;
  /**
   * drain: the handover drain (steer new traffic away, serve what is queued).
   * no-steer: the drain without the steering (read until the queues are
   * empty, then close), to measure what the steering adds.
   * plain: pause() as a plain socket does (UDP drops, TCP closes the listener).
   */
  mode: 'drain' | 'no-steer' | 'plain';
  graceMs: number;
}

export interface HandoverAgentReport {
  stopped: true;
  /** Queries this agent received, by transport. */
  udp: number;
  tcp: number;
  servfail: number;
  /** Answered stale or SERVFAIL at the end of the grace. */
  aborted: number;
  /** ms from SIGTERM until the listeners said drained, and until everything was closed. */
  drainedMs: number;
  closedMs: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as HandoverAgentArgs;
process.stdout.write(JSON.stringify({ loaded: true }) + '\n');
const stdin = createInterface({ input: process.stdin });
await new Promise<void>((resolve) => stdin.once('line', () => resolve()));
stdin.close();
const logger = createLogger('warn');
const { config } = loadConfig(
  [
    '--listen', `${args.host}:${args.port}`,
    '--upstream-addr', `127.0.0.1:${args.upstreamPort}`,
    '--resolv-conf', args.resolvConf,
    '--no-kube',
  ],
  { env: {} },
);
// No listeners of the agent's own: ours below replace them.
const agent = new Agent({ ...config, listen: [] }, { logger });
await agent.start();
const addr = { host: args.host, port: args.port };
const drain = args.mode !== 'plain';
const sys = async (): Promise<ReusePort | string> => {
  const s = await loadReusePort();
  return typeof s === 'string' || args.mode !== 'no-steer' ? s : { ...s, detachUdp: () => null, steer: () => null };
};
const udp = new UdpListener(addr, agent.hitPath, logger, { reusePort: true, handoverDrain: drain, loadReusePort: sys });
const tcp = new TcpListener(addr, agent.hitPath, logger, {
  idleTimeoutMs: config.tcpIdleTimeoutMs,
  readTimeoutMs: config.tcpReadTimeoutMs,
  maxConnections: config.maxTcpConnections,
  maxConnectionsPerClient: config.maxTcpPerClient,
  maxQueriesPerConnection: config.maxTcpQueries,
  reusePort: true,
  handoverDrain: drain,
  loadReusePort: sys,
});
const listeners = [udp, tcp];
for (const l of listeners) await l.start();
process.stdout.write(JSON.stringify({ ready: true, pid: process.pid, reusePort: udp.reusePort && tcp.reusePort }) + '\n');

function until(deadline: number, p: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p.then(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - performance.now()))))]).finally(
    () => clearTimeout(timer),
  );
}

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void (async () => {
    const t0 = performance.now();
    const deadline = t0 + args.graceMs;
    for (const l of listeners) l.pause();
    await until(deadline, Promise.all(listeners.map((l) => l.drained())));
    const drainedMs = performance.now() - t0;
    if (agent.hitPath.inflight > 0) await until(deadline, agent.hitPath.drain());
    const aborted = agent.hitPath.abortAll();
    await Promise.all(listeners.map((l) => l.close()));
    await agent.stop(Math.max(0, deadline - performance.now()));
    const v = agent.hitPath.counters.values;
    const slot = SERVER_COUNTERS.slot;
    const report: HandoverAgentReport = {
      stopped: true,
      udp: v[slot.requestsUdp] ?? 0,
      tcp: v[slot.requestsTcp] ?? 0,
      servfail: v[slot.rcode2] ?? 0,
      aborted,
      drainedMs: Math.round(drainedMs),
      closedMs: Math.round(performance.now() - t0),
    };
    process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0));
  })();
});
