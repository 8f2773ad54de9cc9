// Run by test/upstream.test.ts inside a network namespace of its own
// (`ip netns exec <ns> node --import=<tap's loader> this file MODE ARG`): fake
// resolvers there, and HostResolvers asking them for www.example.com A. Prints
// one JSON line: the outcome and the try counters. Traffic stays in the namespace.
//
//   scope ZONE   interface v0 holds fe80::53; the resolver there answers over UDP
//                with TC=1 and over TCP in full; asked as a resolv.conf line
//                `nameserver fe80::53%ZONE` names it (an interface name, or its
//                index as systemd-resolved writes it)
//   pool ZONE    as scope, but a TcpPool (the cluster DNS, --upstream-addr
//                [fe80::53%ZONE]:53) asks it over TCP
//   listen ZONE  no resolvers: a UDP and a TCP DNS listener and an ops HTTP
//                server bound the plain way (--no-reuse-port, or no koffi) on
//                [fe80::53%ZONE]; prints whether each started
//   dialable ZONE no sockets: prints dialableHost("fe80::53%ZONE")
//   blocked      two resolvers, 127.0.0.1:5301 then :5302; the test's firewall rule
//                refuses datagrams to the first (sendmsg fails with EPERM)
import { SimDnsServer, staticHandler } from '../../testkit/dns-server.js';
import { HostResolvers } from '../../src/upstream/host-resolvers.js';
import { TcpPool } from '../../src/upstream/tcp-pool.js';
import { UdpListener } from '../../src/server/udp-listener.js';
import { TcpListener } from '../../src/server/tcp-listener.js';
import { OpsServer } from '../../src/ops/http.js';
import { silentLogger } from '../../src/log.js';
import { parseResolvConf } from '../../src/upstream/resolv-conf.js';
import type { ServerAddress, Upstream } from '../../src/upstream/types.js';
import { questionMessage, upstreamQuery } from '../../src/dns/build.js';
import { nameToWire } from '../../src/dns/name.js';
import { parseQuery } from '../../src/dns/query.js';
import { systemClock } from '../../src/clock.js';
import { dialableHost } from '../../src/addr.js';

const handler = staticHandler({ 'www.example.com': { A: ['192.0.2.53'] } });

async function main(mode: string, arg: string): Promise<void> {
  if (mode === 'dialable') {
    process.stdout.write(JSON.stringify({ host: dialableHost(`fe80::53%${arg}`) }) + '\n');
    return;
  }
  if (mode === 'listen') {
    const host = `fe80::53%${arg}`;
    const handler = { handle: (): void => {} };
    const parts = {
      udp: new UdpListener({ host, port: 53 }, handler, silentLogger),
      tcp: new TcpListener({ host, port: 53 }, handler, silentLogger, { idleTimeoutMs: 1000, maxConnections: 4, maxQueriesPerConnection: 4 }),
      http: new OpsServer({ address: { host, port: 9253 }, routes: ['health'], handlers: {}, logger: silentLogger }),
    };
    const started: Record<string, string> = {};
    for (const [what, part] of Object.entries(parts)) {
      started[what] = await part.start().then(() => 'ok', (err: unknown) => (err instanceof Error ? err.message : String(err)));
    }
    process.stdout.write(JSON.stringify({ started }) + '\n');
    await Promise.all([parts.udp.close(), parts.tcp.close(), parts.http.stop()]);
    return;
  }
  let servers: ServerAddress[];
  let sims: SimDnsServer[];
  const warnings: string[] = [];
  if (mode === 'scope' || mode === 'pool') {
    sims = [await SimDnsServer.start({ host: 'fe80::53%v0', port: 53, handler, faults: { truncateUdp: true } })];
    const rc = parseResolvConf(`nameserver fe80::53%${arg}\n`);
    servers = rc.nameservers;
    warnings.push(...rc.warnings);
  } else if (mode === 'blocked') {
    sims = [await SimDnsServer.start({ port: 5301, handler }), await SimDnsServer.start({ port: 5302, handler })];
    servers = sims.map((s) => ({ host: s.host, port: s.port }));
  } else {
    throw new Error(`usage: netns-host-resolvers.ts scope ZONE | pool ZONE | listen ZONE | dialable ZONE | blocked (got ${JSON.stringify(mode)})`);
  }
  if (mode === 'pool') {
    const pool = new TcpPool({ server: servers[0]!, connections: 1, connectTimeoutMs: 1000 });
    const outcome = await ask(pool);
    process.stdout.write(JSON.stringify({
      servers, warnings, outcome, tcp: sims.map((s) => s.stats.tcpQueries),
      connectFailures: pool.counters.get('connectFailures'),
    }) + '\n');
    await pool.close();
    await Promise.all(sims.map((s) => s.close()));
    return;
  }
  const up = new HostResolvers({ servers, attemptTimeoutMs: 1000, attempts: 1 });
  const outcome = await ask(up);
  const c = up.counters;
  process.stdout.write(JSON.stringify({
    servers, warnings, outcome,
    udp: sims.map((s) => s.stats.udpQueries), tcp: sims.map((s) => s.stats.tcpQueries),
    sent: c.get('sent'), attemptErrors: c.get('attemptErrors'), attemptTimeouts: c.get('attemptTimeouts'), failovers: c.get('failovers'),
  }) + '\n');
  await up.close();
  await Promise.all(sims.map((s) => s.close()));
}

/** Asks `up` for www.example.com A: "answer rcode=R ancount=N", or why it failed. */
function ask(up: Upstream): Promise<string> {
  return new Promise<string>((resolve) => {
    up.send({
      query: upstreamQuery(parseQuery(questionMessage(nameToWire('www.example.com'), 1))),
      deadline: systemClock.now() + 3000,
      resolve: (answer) => resolve(`answer rcode=${answer[3]! & 0xf} ancount=${answer.readUInt16BE(6)}`),
      reject: (reason) => resolve(reason),
    });
  });
}

main(process.argv[2] ?? '', process.argv[3] ?? '').catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: err instanceof Error ? err.message : String(err) }) + '\n');
  process.exitCode = 1;
});
