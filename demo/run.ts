/**
 * `npm run demo`: the cluster-records fallback on one machine, no cluster
 * needed. On loopback it starts a fake kube-apiserver holding a small
 * cluster, a simulated kube-dns serving the same records, a fake upstream
 * resolver for external names, and the agent pointed at all three. Then it
 * prints commands to try: resolve a service, stop the simulated kube-dns,
 * resolve a service never asked before (answered from the agent's own view).
 *
 * Everything listens on 127.0.0.1; nothing is sent anywhere else.
 */
import { Agent } from '../src/agent.js';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { SAMPLE_RECORDS, loadSampleCluster, writeKubeconfig } from '../testkit/cluster.js';
import { SimDnsServer, staticHandler } from '../testkit/dns-server.js';
import { FakeApiServer } from '../testkit/fake-apiserver.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const PORT = Number(process.env['DEMO_PORT'] ?? 5300);
/**
 * /metrics, /health and /ready, on one server next to the DNS port: the agent's defaults (8080 and 9253) are
 * ports a developer's machine often has in use, and the demo would die on them.
 */
const OPS_PORT = PORT + 1;

async function main(): Promise<void> {
  const api = new FakeApiServer({ token: 'demo-token' });
  loadSampleCluster(api);
  await api.start();
  const kubeDns = await SimDnsServer.start({ handler: staticHandler(SAMPLE_RECORDS, { soaZone: 'cluster.local', negativeTtl: 5 }) });
  const external = await SimDnsServer.start({
    handler: staticHandler({ 'pay.example.com': { A: ['192.0.2.77'], ttl: 60 }, 'www.example.com': { A: ['192.0.2.80'], ttl: 60 } }, { soaZone: 'example.com' }),
  });
  const dir = mkdtempSync(join(tmpdir(), 'nldns-demo-'));
  const resolvConf = join(dir, 'resolv.conf');
  writeFileSync(resolvConf, `nameserver 127.0.0.1\n`); // never used: --upstream-nameservers wins
  const { config } = loadConfig([
    '--listen', `127.0.0.1:${PORT}`,
    '--upstream-addr', `127.0.0.1:${kubeDns.port}`,
    '--upstream-nameservers', `127.0.0.1:${external.port}`,
    '--resolv-conf', resolvConf,
    '--kubeconfig', writeKubeconfig(api.url, 'demo-token'),
    '--timeout', '1s',
    '--success-ttl', '5s',
    '--log-level', process.env['DEMO_LOG'] ?? 'warn',
    '--health-port', String(OPS_PORT),
    '--metrics-listen-address', `127.0.0.1:${OPS_PORT}`,
  ], { env: {} });
  const agent = new Agent(config, { logger: createLogger(config.logLevel) });
  await agent.start();

  let kubeDnsUp = true;
  process.on('SIGUSR1', () => {
    if (!kubeDnsUp) return;
    kubeDnsUp = false;
    void kubeDns.stop().then(() => say('simulated kube-dns stopped: cluster names now come from the agent\'s own view of the API'));
  });
  process.on('SIGUSR2', () => {
    if (kubeDnsUp) return;
    kubeDnsUp = true;
    void kubeDns.restart().then(() => say('simulated kube-dns started again: the agent\'s probe finds it within a second or two and forwarding resumes'));
  });
  const stop = (): void => {
    void agent.stop(1000).then(async () => {
      await Promise.all([api.close(), kubeDns.close(), external.close()]);
      process.exit(0);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);

  const dig = `dig @127.0.0.1 -p ${PORT} +noall +answer +comments`;
  say(`
The agent serves on 127.0.0.1:${PORT}, in front of a simulated kube-dns (127.0.0.1:${kubeDns.port})
and a fake kube-apiserver (${api.url}) holding a small cluster: namespaces default, kube-system, shop;
services shop/web (dual-stack), shop/cart, shop/db (headless, pods db-0 db-1), shop/payments (ExternalName).

Try, in another terminal:
  1. ${dig} web.shop.svc.cluster.local              # forwarded to the simulated kube-dns, then cached
  2. kill -USR1 ${process.pid}                                    # stop the simulated kube-dns
  3. ${dig} cart.shop.svc.cluster.local             # never asked before: answered from the agent's own view
Also: db-0.db.shop.svc.cluster.local, db.shop.svc.cluster.local (headless), payments.shop.svc.cluster.local
(CNAME + target), -x 10.96.1.20 (PTR), nope.shop.svc.cluster.local (NXDOMAIN from the synced view).
kill -USR2 ${process.pid} starts kube-dns again; Ctrl-C stops everything.
Its metrics: curl -s 127.0.0.1:${OPS_PORT}/metrics | grep nodelocal_local_answers_total (answers from the view, by why).
`);
}

function say(text: string): void {
  process.stdout.write(text.trimEnd() + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
