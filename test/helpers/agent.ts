// Starts an in-process agent for integration tests: explicit upstreams (fake
// servers of the test's own), a resolv.conf the test wrote, a unique loopback
// address and port.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type AgentDeps } from '../../src/agent.js';
import type { Clock } from '../../src/clock.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger, type Logger } from '../../src/log.js';
import type { Target } from './dns-client.js';

let nextPort = 15300 + (process.pid % 1000) * 10;

/** A resolv.conf in a fresh temp dir; never the machine's own. */
export function writeResolvConf(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-'));
  const path = join(dir, 'resolv.conf');
  writeFileSync(path, text);
  return path;
}

/** The UDP backends the integration suites run against. */
export interface Backend {
  readonly name: string;
  readonly args: readonly string[];
  readonly workers: number;
}
export const BACKENDS: readonly Backend[] = [
  { name: 'dgram', args: ['--io', 'dgram'], workers: 0 },
  { name: 'batched-1', args: ['--io', 'batched', '--workers', '1'], workers: 1 },
  { name: 'batched-2', args: ['--io', 'batched', '--workers', '2'], workers: 2 },
];

export interface TestAgent {
  agent: Agent;
  target: Target;
  /** The argv the agent was configured from (a reload reads it again, as main does). */
  argv: string[];
  stop(): Promise<void>;
}

/** What a test may set of the agent's deps beyond the clock and logger. */
export type TestAgentDeps = Pick<AgentDeps, 'udpDownLivenessMs'>;

export async function startAgent(host: string, args: string[], opts: { clock?: Clock; logger?: Logger; deps?: TestAgentDeps } = {}): Promise<TestAgent> {
  // The port is a guess. A port the test names in its own flags (--health-port, a metrics address) is never the
  // guess; one a socket without SO_REUSEPORT holds (a wildcard bind, a test's own server) is given up for the
  // next (bounded). Another agent's SO_REUSEPORT socket would share the port silently: each test file keeps an
  // address of its own for that.
  for (let tries = 0; ; tries++) {
    while (args.some((a) => a === String(nextPort) || a.endsWith(`:${nextPort}`))) nextPort++;
    try {
      return await startAgentOn(host, nextPort++, args, opts);
    } catch (err) {
      if (!/EADDRINUSE/.test((err as Error).message) || tries >= 5) throw err;
    }
  }
}

async function startAgentOn(host: string, port: number, args: string[], opts: { clock?: Clock; logger?: Logger; deps?: TestAgentDeps }): Promise<TestAgent> {
  const hasResolv = args.includes('--resolv-conf');
  const argv = [
    '--listen', `${host.includes(':') ? `[${host}]` : host}:${port}`,
    ...(hasResolv ? [] : ['--resolv-conf', writeResolvConf('nameserver 127.0.0.254\n')]),
    // Several test agents share an address: their HTTP endpoints only where a test asks for them.
    ...(args.includes('--metrics-listen-address') ? [] : ['--metrics-listen-address', 'off']),
    ...(args.includes('--health-port') ? [] : ['--health-port', '0']),
    // dgram unless a test opts into batched (BACKENDS): batched workers keep their own clock, a ManualClock cannot reach them.
    ...(args.includes('--io') ? [] : ['--io', 'dgram']),
    ...args,
  ];
  const { config } = loadConfig(argv, { env: {} });
  const agent = new Agent(config, { ...opts.deps, logger: opts.logger ?? silentLogger, ...(opts.clock ? { clock: opts.clock } : {}) });
  await agent.start();
  return { agent, target: { host, port }, argv, stop: () => agent.stop(1000) };
}
