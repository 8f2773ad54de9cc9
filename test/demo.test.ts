// `npm run demo` (demo/run.ts) as README's "Demo" section walks through it:
// a service forwarded to the simulated kube-dns, kube-dns stopped (SIGUSR1),
// a service never asked answered from the agent's own view, NXDOMAIN from the
// synced view, kube-dns back (SIGUSR2), Ctrl-C. Everything on 127.0.0.1, to
// the demo's own fakes.
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { udpQuery } from './helpers/dns-client.js';
import { Lines, stopChild, waitExit } from './helpers/netns-proc.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEMO = join(ROOT, 'dist', 'demo', 'run.js');
/** Bounds, not expectations. */
const WAIT_MS = 30_000;

/** Holds 127.0.0.1:port with a plain (not SO_REUSEPORT) listener, as any program on a developer's machine may; null if it is taken already. */
function hold(port: number): Promise<net.Server | null> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(null));
    s.listen({ host: '127.0.0.1', port, exclusive: true }, () => resolve(s));
  });
}

t.test('npm run demo: the README walkthrough, on a machine where 127.0.0.1:8080 and :9253 belong to other programs', { skip: existsSync(DEMO) ? false : 'dist/demo/run.js missing (npx tsc -p tsconfig.json)' }, async (t) => {
  // The demo's agent took the default ops ports (127.0.0.1:8080 for /health and /ready, :9253 for /metrics): with
  // either held by another program (a dev server on 8080 is common), the demo died at start on EADDRINUSE.
  const held = (await Promise.all([8080, 9253].map(hold))).filter((s): s is net.Server => s !== null);
  t.teardown(() => { for (const s of held) s.close(); });
  if (held.length < 2) t.comment(`only ${held.length} of 127.0.0.1:8080 and :9253 could be held here (in use)`);

  const port = 26000 + (process.pid % 1000) * 4;
  const child = spawn(process.execPath, [DEMO], { env: { PATH: process.env.PATH ?? '', DEMO_PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.on('error', () => {});
  t.teardown(() => stopChild(child, 'SIGKILL', 1000));
  const out = new Lines(child.stdout!);
  const err = new Lines(child.stderr!);
  const banner = await out.next((l) => l.startsWith('The agent serves on'), WAIT_MS);
  t.ok(banner !== null, `the demo starts: ${banner ?? ((await waitExit(child, 2000)) ? err.all.slice(-5).join('\n') : 'no banner yet')}`);
  if (banner === null) return;
  t.match(banner, `127.0.0.1:${port}`, 'on DEMO_PORT');
  const metricsLine = await out.next((l) => /curl -s \S+\/metrics/.test(l), WAIT_MS);
  const metricsUrl = /curl -s (\S+\/metrics)/.exec(metricsLine ?? '')?.[1];
  t.ok(metricsUrl !== undefined, `the banner says where /metrics is: ${metricsLine}`);

  const agent = { host: '127.0.0.1', port };
  const a = (r: { answers?: { type: string; data?: unknown }[] }): string[] => (r.answers ?? []).filter((x) => x.type === 'A').map((x) => String(x.data));
  const rcode = (r: Awaited<ReturnType<typeof udpQuery>>): number => (r.flags ?? 0) & 0xf;
  t.same(a(await udpQuery(agent, 'web.shop.svc.cluster.local', { timeoutMs: 5000 })), ['10.96.1.10'], 'web.shop: forwarded to the simulated kube-dns');

  child.kill('SIGUSR1');
  t.ok(await out.next((l) => l.includes('simulated kube-dns stopped'), WAIT_MS), 'SIGUSR1 stops the simulated kube-dns');
  const cart = await udpQuery(agent, 'cart.shop.svc.cluster.local', { timeoutMs: 5000 });
  t.same(a(cart), ['10.96.1.20'], 'cart.shop, never asked: 10.96.1.20 although kube-dns is gone');
  const scrape = await (await fetch(`http://${metricsUrl}`, { signal: AbortSignal.timeout(10_000) })).text();
  const fromView = [...scrape.matchAll(/^nodelocal_local_answers_total\{[^}]*why="upstream_[a-z]+"[^}]*\} (\S+)$/gm)].reduce((s, m) => s + Number(m[1]), 0);
  t.ok(fromView >= 1, `the banner's /metrics counts it among the answers from the view (${fromView})`);
  t.equal(rcode(await udpQuery(agent, 'nope.shop.svc.cluster.local', { timeoutMs: 5000 })), 3, 'nope.shop: NXDOMAIN from the synced view');

  child.kill('SIGUSR2');
  t.ok(await out.next((l) => l.includes('simulated kube-dns started again'), WAIT_MS), 'SIGUSR2 starts it again');

  child.kill('SIGINT');
  t.ok(await waitExit(child, WAIT_MS), 'Ctrl-C stops everything');
  t.equal(child.exitCode, 0, 'exit 0');
});
