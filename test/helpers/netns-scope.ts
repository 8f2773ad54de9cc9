// Run by test/upstream.test.ts inside a network namespace of its own
// (`ip netns exec <ns> node --import=<tap's loader> this file ZONE`), where
// interface v0 holds the link-local address fe80::53: a fake resolver there
// answers over UDP with TC=1 and over TCP in full, and HostResolvers asks it
// as a resolv.conf line `nameserver fe80::53%ZONE` names it (ZONE an
// interface name, or its index as systemd-resolved writes it). Prints one
// JSON line: the outcome and the try counters. Traffic stays in the namespace.
import { SimDnsServer, staticHandler } from '../../testkit/dns-server.js';
import { HostResolvers } from '../../src/upstream/host-resolvers.js';
import { parseResolvConf } from '../../src/upstream/resolv-conf.js';
import { questionMessage, upstreamQuery } from '../../src/dns/build.js';
import { nameToWire } from '../../src/dns/name.js';
import { parseQuery } from '../../src/dns/query.js';
import { systemClock } from '../../src/clock.js';

async function main(zone: string): Promise<void> {
  const server = await SimDnsServer.start({ host: 'fe80::53%v0', port: 53, handler: staticHandler({ 'www.example.com': { A: ['192.0.2.53'] } }), faults: { truncateUdp: true } });
  const rc = parseResolvConf(`nameserver fe80::53%${zone}\n`);
  const up = new HostResolvers({ servers: rc.nameservers, attemptTimeoutMs: 1000, attempts: 1 });
  const outcome = await new Promise<string>((resolve) => {
    up.send({
      query: upstreamQuery(parseQuery(questionMessage(nameToWire('www.example.com'), 1))),
      deadline: systemClock.now() + 3000,
      resolve: (answer) => resolve(`answer rcode=${answer[3]! & 0xf} ancount=${answer.readUInt16BE(6)}`),
      reject: (reason) => resolve(reason),
    });
  });
  process.stdout.write(JSON.stringify({
    servers: rc.nameservers, warnings: rc.warnings, outcome,
    udp: server.stats.udpQueries, tcp: server.stats.tcpQueries, attemptErrors: up.counters.get('attemptErrors'),
  }) + '\n');
  await up.close();
  await server.close();
}

main(process.argv[2] ?? '').catch((err: unknown) => {
  process.stdout.write(JSON.stringify({ error: err instanceof Error ? err.message : String(err) }) + '\n');
  process.exitCode = 1;
});
