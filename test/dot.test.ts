// DNS over TLS to external upstreams (RFC 7858), end to end: a real agent on
// loopback, a real UDP client, and DNS-over-TLS servers of the test's own with
// certificates the openssl CLI makes at test time. Asserts on what the server
// counted (connections, queries pending at once, resumed sessions) and on the
// agent's counters, never on timing.
import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import * as dnsPacket from 'dns-packet';
import { loadConfig } from '../src/config.js';
import { padQuery, questionMessage, upstreamQuery } from '../src/dns/build.js';
import { FrameDecoder, frame } from '../src/dns/framing.js';
import { nameToWire } from '../src/dns/name.js';
import { parseQuery } from '../src/dns/query.js';
import { parseTlsServer, type TlsServer } from '../src/upstream/tls-address.js';
import { TlsResolvers } from '../src/upstream/tls-resolvers.js';
import type { UpstreamFailure } from '../src/upstream/types.js';
import { systemClock } from '../src/clock.js';
import { startAgent, type TestAgent } from './helpers/agent.js';
import { udpQuery } from './helpers/dns-client.js';
import { DotServer, TestCa, opensslAvailable, type DotServerOptions, type KeyPair } from './helpers/dot-server.js';
import { a, answer } from './kit/dns.js';

const HOST = '127.0.0.1';
/** The agents' address, this file's own: on 127.0.0.1 another file's SO_REUSEPORT listener could share a port with them. */
const AGENT_HOST = '127.0.37.1';
const RECORDS = { 'www.example.org': '192.0.2.10', 'a.example.org': '192.0.2.11', 'b.example.org': '192.0.2.12' };

const RCODES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN'];
const rcode = (p: { flags?: number }): string => RCODES[(p.flags ?? 0) & 0xf] ?? String((p.flags ?? 0) & 0xf);
const aOf = (p: { answers?: { type: string; data?: unknown }[] }): unknown => p.answers?.find((x) => x.type === 'A')?.data;

/** A tls:// pool's counter, read from the agent's own block for that upstream (what /metrics shows with to="tls://..."). */
function poolCounter(agent: TestAgent, name: string, counter: 'connectFailures' | 'reconnects' | 'connects' | 'sent'): number {
  return agent.agent.metrics.pool(name).get(counter);
}

t.test('padQuery: a Padding option fills the OPT to the next multiple of the block; a message of another form is left as it is', async (t) => {
  const ask = (name: string): Buffer => upstreamQuery(parseQuery(questionMessage(nameToWire(name), 1)));
  // 12 header + name + 4 question + 11 OPT: a 97-byte name (48 one-letter labels) makes 128 with an empty Padding option.
  const labels = (n: number): string => Array.from({ length: n }, () => 'a').join('.');
  for (const [name, want] of [['x.example', 128], [labels(48), 128], [labels(49), 256]] as const) {
    const q = ask(name);
    const p = padQuery(q);
    t.equal(p.length, want, `${q.length} bytes padded to ${want}`);
    const opt = dnsPacket.decode(p).additionals?.find((r) => r.type === 'OPT') as { options?: { code: number; data?: Buffer }[] } | undefined;
    t.same(opt?.options?.map((o) => [o.code, o.data?.length]), [[12, want - q.length - 4]], 'one Padding option, the rest of the block');
    t.same(p.subarray(0, q.length - 2), q.subarray(0, q.length - 2), 'the query itself unchanged up to the OPT\'s RDLENGTH');
  }
  const plain = questionMessage(nameToWire('x.example'), 1);
  t.equal(padQuery(plain), plain, 'no OPT (a retry without EDNS): as it is');
  const once = padQuery(ask('x.example'));
  t.equal(padQuery(once), once, 'an OPT with options already: as it is');
});

t.test('flag parsing: tls:// forms, defaults and refusals', async (t) => {
  t.same(parseTlsServer('tls://1.1.1.1@one.one.one.one'), { host: '1.1.1.1', port: 853, serverName: 'one.one.one.one' });
  t.same(parseTlsServer('tls://9.9.9.9:8853@DNS.Quad9.net.'), { host: '9.9.9.9', port: 8853, serverName: 'dns.quad9.net' });
  t.same(parseTlsServer('tls://[2606:4700:4700::1111]:853@cloudflare-dns.com'), { host: '2606:4700:4700::1111', port: 853, serverName: 'cloudflare-dns.com' });
  t.same(parseTlsServer('TLS://8.8.8.8'), { host: '8.8.8.8', port: 853, serverName: null });

  const load = (...lists: string[]) => loadConfig(lists.flatMap((l) => ['--upstream-nameservers', l]), { env: {}, readFile: () => { throw Object.assign(new Error('no such file'), { code: 'ENOENT' }); } }).config;
  const c = load('tls://1.1.1.1@one.one.one.one,tls://1.0.0.1@one.one.one.one');
  t.same(c.upstreamTls.map((s) => `${s.host}:${s.port}@${s.serverName}`), ['1.1.1.1:853@one.one.one.one', '1.0.0.1:853@one.one.one.one']);
  t.same(c.upstreamNameservers, [], 'the plain list is empty: nothing goes out in clear text');
  t.equal(c.tlsCaFile, '');
  t.same(load('8.8.8.8').upstreamTls, [], 'plain upstreams stay plain');

  const refused: Array<[string[], RegExp]> = [
    [['tls://1.1.1.1@one.one.one.one,8.8.8.8'], /all plain or all tls:\/\/, not both/],
    [['8.8.8.8', 'tls://1.1.1.1@one.one.one.one'], /all plain or all tls:\/\//],
    [['tls://one.one.one.one'], /the address must be an IP, not "one.one.one.one"/],
    [['tls://1.1.1.1:99999@one.one.one.one'], /port must be 1-65535/],
    [['tls://1.1.1.1@bad_name!'], /not a host name the certificate could be checked against/],
    [['tls://1.1.1.1@'], /not a host name/],
    [['tls://@one.one.one.one'], /no address before "@"/],
    [['tls://1.1.1.1@10.0.0.1'], /not a host name/],
  ];
  for (const [args, re] of refused) {
    // main.ts turns a ConfigError into exit status 2 with its message on stderr.
    t.throws(() => load(...args), { name: 'ConfigError', message: re }, args.join(' '));
  }
});

t.test('flag parsing: a server name that is all digits is refused (Unbound and Knot Resolver write the port after "@")', async (t) => {
  // tls://1.1.1.1@853 is how Unbound (forward-addr 1.1.1.1@853#name) and Knot Resolver write "port 853". Taken as
  // the certificate name "853", it is sent as SNI and checked against the certificate: every handshake fails, every
  // external name gets SERVFAIL, and the agent started happily. No certificate can name "853" (a top-level label is
  // never all digits, RFC 3696 2), so it is a configuration error like the IP-literal name already refused.
  const load = (list: string) => loadConfig(['--upstream-nameservers', list], { env: {}, readFile: () => { throw Object.assign(new Error('no such file'), { code: 'ENOENT' }); } }).config;
  t.throws(() => load('tls://1.1.1.1@853'), { name: 'ConfigError' }, 'tls://1.1.1.1@853');
  t.throws(() => load('tls://9.9.9.9@8853'), { name: 'ConfigError' }, 'tls://9.9.9.9@8853');
  t.same(load('tls://1.1.1.1:853@one.one.one.one').upstreamTls, [{ host: '1.1.1.1', port: 853, serverName: 'one.one.one.one' }], 'the port goes after ":"');
});

t.test('the kube-dns ConfigMap takes plain upstreams only (kube-dns reads it too)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-dot-cm-'));
  writeFileSync(join(dir, 'upstreamNameservers'), JSON.stringify(['tls://1.1.1.1@one.one.one.one']));
  t.throws(
    () => loadConfig(['--kube-dns-config-dir', dir], { env: {} }),
    { name: 'ConfigError', message: /plain IP\[:PORT\] only.*--upstream-nameservers/ },
  );
  // Even with the flag given: the ConfigMap is wrong for kube-dns itself, better said than silently half-used.
  t.throws(() => loadConfig(['--kube-dns-config-dir', dir, '--upstream-nameservers', 'tls://1.1.1.1@one.one.one.one'], { env: {} }), { name: 'ConfigError' });
  writeFileSync(join(dir, 'upstreamNameservers'), JSON.stringify(['8.8.8.8']));
  const c = loadConfig(['--kube-dns-config-dir', dir, '--upstream-nameservers', 'tls://1.1.1.1@one.one.one.one'], { env: {} });
  t.equal(c.config.upstreamTls.length, 1, 'the flag wins over a plain ConfigMap list, as for plain servers');
  t.same(c.config.upstreamNameservers, []);
});

t.test('TlsResolvers: an exchange that failed on one server and then found the next one\'s queue full ends as that failure, not as overloaded', async (t) => {
  // 'overloaded' says a local cap refused the query unsent. Overwriting the first server's network error with it hid
  // a real failure: the exchange was counted as never sent, the upstream's health was not told, and a probe that met
  // it was not a failed health check.
  const gone = net.createServer();
  await new Promise<void>((resolve) => gone.listen(0, HOST, () => resolve()));
  const gonePort = (gone.address() as AddressInfo).port;
  await new Promise<void>((resolve) => gone.close(() => resolve()));
  // Accepts and never starts the TLS handshake: its pool's connections stay connecting, queries wait in its queue.
  const held = new Set<net.Socket>();
  const mute = net.createServer((s) => {
    held.add(s);
    s.on('error', () => {});
  });
  await new Promise<void>((resolve) => mute.listen(0, HOST, () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of held) s.destroy();
    mute.close(() => resolve());
  }));
  const mutePort = (mute.address() as AddressInfo).port;
  const resolvers = new TlsResolvers({
    servers: [{ host: HOST, port: gonePort, serverName: 'dns.test' }, { host: HOST, port: mutePort, serverName: 'dns.test' }],
    attemptTimeoutMs: 5000,
    connectTimeoutMs: 10_000,
  });
  t.teardown(() => resolvers.abort());
  const query = upstreamQuery(parseQuery(questionMessage(nameToWire('www.example.org'), 1)));
  const ignore = (): void => {};
  // The second server's queue filled (its default cap, 4096) by queries of its own.
  let filler: UpstreamFailure | null = null;
  for (let i = 0; i < 4096 && filler === null; i++) {
    resolvers.servers[1]!.pool.send({ query, deadline: systemClock.now() + 10_000, resolve: ignore, reject: (r) => { filler = r; } });
  }
  t.equal(filler, null, 'the filler waits in the queue');
  t.equal(resolvers.servers[1]!.pool.queued, 4096);
  const reason = await new Promise<UpstreamFailure | 'answered'>((resolve) => {
    resolvers.send({ query, deadline: systemClock.now() + 5000, resolve: () => resolve('answered'), reject: resolve });
  });
  t.equal(resolvers.servers[1]!.pool.counters.get('overloaded'), 1, 'the second server refused it unsent');
  t.equal(reason, 'network', 'the first server\'s failure, not the second\'s full queue');
});

if (!opensslAvailable()) {
  t.test('DNS over TLS end to end', { skip: '/usr/bin/openssl is missing: no certificates can be made (CI is Debian and has it)' }, async () => {});
} else {
  const ca = new TestCa('trusted');
  const dnsTest = ca.issue('DNS:dns.test');
  const otherName = ca.issue('DNS:other.test');
  const ipOnly = ca.issue('IP:127.0.0.1');
  const untrusted = new TestCa('untrusted');
  const untrustedLeaf = untrusted.issue('DNS:dns.test');

  const server = async (t: Test, pair: KeyPair, opts: Partial<DotServerOptions> = {}): Promise<DotServer> => {
    const s = new DotServer(pair, { records: RECORDS, ...opts });
    await s.start();
    t.teardown(() => s.close());
    return s;
  };
  const agent = async (t: Test, upstreams: string, ...extra: string[]): Promise<TestAgent> => {
    const ag = await startAgent(AGENT_HOST, ['--upstream-nameservers', upstreams, '--tls-ca-file', ca.certPath, '--timeout', '1s', ...extra]);
    t.teardown(() => ag.stop());
    return ag;
  };

  t.test('answers flow through the agent over TLS; queries are pipelined on one connection', async (t) => {
    const names = Array.from({ length: 8 }, (_, i) => `n${i}.example.org`);
    const records = Object.fromEntries(names.map((n, i) => [n, `198.51.100.${i + 1}`]));
    // The server answers nothing until all 8 are pending: they can only all arrive if they share the connection.
    const s = await server(t, dnsTest, { records: { ...RECORDS, ...records }, holdUntilPending: names.length });
    const upstream = `tls://127.0.0.1:${s.port}@dns.test`;
    const ag = await agent(t, upstream, '--upstream-connections', '1');
    const answers = await Promise.all(names.map((n) => udpQuery(ag.target, n, { timeoutMs: 5000 })));
    answers.forEach((p, i) => t.equal(aOf(p), `198.51.100.${i + 1}`, names[i]!));
    t.equal(s.connections, 1, 'one TLS connection');
    t.equal(s.maxPendingOnOneConnection, names.length, 'all 8 queries outstanding on it at once');
    t.equal(poolCounter(ag, upstream, 'connects'), 1);
  });

  t.test('queries over TLS are padded to a multiple of 128 bytes (RFC 8467, RFC 7830); a padded answer reaches the client without the padding', async (t) => {
    const long = 'a-rather-longer-name-than-the-first.example.org';
    const s = await server(t, dnsTest, { padAnswers: true, records: { ...RECORDS, [long]: '192.0.2.10' } });
    const ag = await agent(t, `tls://127.0.0.1:${s.port}@dns.test`);
    for (const name of ['www.example.org', long]) {
      const p = await udpQuery(ag.target, name, { edns: true });
      t.equal(aOf(p), '192.0.2.10', `${name}: answered`);
      const q = s.lastQuery!;
      t.equal(q.length % 128, 0, `${name}: the query sent is ${q.length} bytes, a multiple of 128`);
      const opt = dnsPacket.decode(q).additionals?.find((r) => r.type === 'OPT') as { options?: { code: number; data?: Buffer }[] } | undefined;
      const padding = opt?.options?.find((o) => o.code === 12);
      t.ok(padding !== undefined && padding.data!.every((b) => b === 0), `${name}: in a Padding option of zeros`);
      const back = (p.additionals ?? []).find((r) => r.type === 'OPT') as { options?: { code: number }[] } | undefined;
      t.same(back?.options ?? [], [], `${name}: the client's OPT carries no padding of the server's`);
    }
  });

  t.test('a plain answer path: cached after the first query', async (t) => {
    const s = await server(t, dnsTest);
    const ag = await agent(t, `tls://127.0.0.1:${s.port}@dns.test`);
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org')), '192.0.2.10');
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org')), '192.0.2.10');
    const nx = await udpQuery(ag.target, 'nothing.example.org');
    t.equal(rcode(nx), 'NXDOMAIN', 'the upstream\'s NXDOMAIN is passed on');
    t.equal(s.queries, 2, 'the second www query was a cache hit');
  });

  t.test('a certificate for another name: nothing sent to it, SERVFAIL, counted', async (t) => {
    const s = await server(t, otherName);
    const name = `tls://127.0.0.1:${s.port}@dns.test`;
    const ag = await agent(t, name);
    const p = await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 });
    t.equal(rcode(p), 'SERVFAIL');
    t.equal(s.queries, 0, 'no query reached the server');
    t.ok(poolCounter(ag, name, 'connectFailures') >= 1, 'the failed handshake is a connect failure (nodelocal_upstream_tcp_connect_failures_total)');
    t.equal(poolCounter(ag, name, 'sent'), 0, 'nothing written');
  });

  t.test('a certificate from a CA we do not trust: refused', async (t) => {
    const s = await server(t, untrustedLeaf);
    const name = `tls://127.0.0.1:${s.port}@dns.test`;
    const ag = await agent(t, name);
    const p = await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 });
    t.equal(rcode(p), 'SERVFAIL');
    t.equal(s.queries, 0);
    t.ok(poolCounter(ag, name, 'connectFailures') >= 1);
  });

  t.test('the default trust store does not include a private CA: --tls-ca-file is needed', async (t) => {
    const s = await server(t, dnsTest);
    const ag = await startAgent(AGENT_HOST, ['--upstream-nameservers', `tls://127.0.0.1:${s.port}@dns.test`, '--timeout', '1s']);
    t.teardown(() => ag.stop());
    t.equal(rcode(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), 'SERVFAIL');
    t.equal(s.queries, 0);
  });

  t.test('without @NAME the certificate must name the IP', async (t) => {
    const good = await server(t, ipOnly);
    const ag = await agent(t, `tls://127.0.0.1:${good.port}`);
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10', 'IP SAN 127.0.0.1 verifies');
    const bad = await server(t, dnsTest);
    const ag2 = await agent(t, `tls://127.0.0.1:${bad.port}`);
    t.equal(rcode(await udpQuery(ag2.target, 'www.example.org', { timeoutMs: 5000 })), 'SERVFAIL', 'a DNS-name-only certificate does not');
    t.equal(bad.queries, 0);
  });

  t.test('the server closing the connection: the agent reconnects, resuming the TLS session', async (t) => {
    const s = await server(t, dnsTest, { closeAfterAnswers: 1 });
    const name = `tls://127.0.0.1:${s.port}@dns.test`;
    const ag = await agent(t, name, '--upstream-connections', '1');
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10');
    t.equal(aOf(await udpQuery(ag.target, 'a.example.org', { timeoutMs: 5000 })), '192.0.2.11');
    t.equal(aOf(await udpQuery(ag.target, 'b.example.org', { timeoutMs: 5000 })), '192.0.2.12');
    t.equal(s.connections, 3, 'one connection per answer: each closed by the server, each replaced');
    t.ok(poolCounter(ag, name, 'reconnects') >= 2, 'counted as reconnects');
    t.ok(s.resumed >= 1, `later handshakes resumed the session (${s.resumed} of ${s.connections})`);

    // A server that drops everything at once (a restart): the next query reconnects too.
    s.dropConnections();
    t.equal(rcode(await udpQuery(ag.target, 'gone.example.org', { timeoutMs: 5000 })), 'NXDOMAIN', 'answered after the drop');
    t.equal(s.connections, 4);
  });

  t.test('failover: the first server fails verification, the second answers', async (t) => {
    const bad = await server(t, untrustedLeaf);
    const good = await server(t, dnsTest);
    const ag = await agent(t, `tls://127.0.0.1:${bad.port}@dns.test,tls://127.0.0.1:${good.port}@dns.test`);
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10');
    t.equal(aOf(await udpQuery(ag.target, 'a.example.org', { timeoutMs: 5000 })), '192.0.2.11');
    t.equal(bad.queries, 0);
    t.ok(good.queries >= 2);
  });

  t.test('failover: the first server accepts and never answers, the second answers within the budget', async (t) => {
    const silent = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    const good = await server(t, dnsTest);
    const ag = await agent(t, `tls://127.0.0.1:${silent.port}@dns.test,tls://127.0.0.1:${good.port}@dns.test`, '--timeout', '2s');
    // The first try gives up after --timeout (2 s); the second server gets the rest of the 4 s budget (room for a handshake on a loaded machine).
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10');
    t.equal(silent.queries, 1, 'the first server was asked');
    t.equal(good.queries, 1, 'then the second');
  });

  t.test('a reload with the same settings keeps the TLS connections; a changed list replaces them', async (t) => {
    const s = await server(t, dnsTest);
    const ag = await agent(t, `tls://127.0.0.1:${s.port}@dns.test`, '--upstream-connections', '1');
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10');
    t.equal(ag.agent.reload(loadConfig(ag.argv, { env: {} }).config).applied, true);
    t.equal(aOf(await udpQuery(ag.target, 'a.example.org', { timeoutMs: 5000 })), '192.0.2.11');
    t.equal(s.connections, 1, 'same connection after the reload');

    const s2 = await server(t, dnsTest);
    const argv = ag.argv.map((x) => (x === `tls://127.0.0.1:${s.port}@dns.test` ? `tls://127.0.0.1:${s2.port}@dns.test` : x));
    t.equal(ag.agent.reload(loadConfig(argv, { env: {} }).config).applied, true);
    t.equal(aOf(await udpQuery(ag.target, 'b.example.org', { timeoutMs: 5000 })), '192.0.2.12');
    t.equal(s2.queries, 1, 'the new server answers after the reload');
    t.equal(s.queries, 2);
  });

  t.test('a --tls-ca-file without a certificate: the agent refuses to start', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'nldns-dot-ca-'));
    const path = join(dir, 'ca.pem');
    writeFileSync(path, 'not a certificate\n');
    await t.rejects(
      startAgent(AGENT_HOST, ['--upstream-nameservers', 'tls://127.0.0.1:853@dns.test', '--tls-ca-file', path]),
      { name: 'StartupError', message: /no PEM certificate/ },
    );
  });

  t.test('a server that closes each connection after N answers: pipelined queries are re-sent until answered, while the deadline allows', async (t) => {
    // A per-connection query limit (dnsdist's setMaxTCPQueriesPerConnection), resolver pods restarting one by one, an
    // idle close racing a burst: the server answers 2 queries on a connection and closes it, the rest of what was
    // pipelined on it unanswered. The connection answered, so the server is alive; with 2 s of deadline and reconnects
    // that take a millisecond on loopback, every query can be answered on the next connections. Re-sending a lost
    // query only once turns what the third and later connections would have answered into SERVFAIL.
    const names = Array.from({ length: 8 }, (_, i) => `p${i}.example.org`);
    const records = Object.fromEntries(names.map((n, i) => [n, `198.51.100.${i + 1}`]));
    const s = await server(t, dnsTest, { records, closeAfterAnswers: 2 });
    const ag = await agent(t, `tls://127.0.0.1:${s.port}@dns.test`, '--timeout', '2s', '--upstream-connections', '1');
    const answers = await Promise.all(names.map((n) => udpQuery(ag.target, n, { timeoutMs: 5000 })));
    t.same(answers.map(rcode), names.map(() => 'NOERROR'), 'no SERVFAIL: each query answered on some connection');
    answers.forEach((p, i) => t.equal(aOf(p), `198.51.100.${i + 1}`, names[i]!));
    t.ok(s.connections >= 4, `${s.connections} connections for 8 answers at 2 a connection`);
  });

  t.test('each DNS-over-TLS server has its coredns_forward_request_duration_seconds{to}, as every other upstream server does', async (t) => {
    // deploy/README.md: the forward latency histogram is kept per upstream server (`to` = IP:port), "each host
    // resolver and stub-domain server apart", and node-cache's dashboards read it. The host resolvers and the cluster
    // pool are given theirs (routing.ts); the pools of tls:// servers are built without one, so with DNS over TLS the
    // external names' upstream latency is not published at all.
    const s = await server(t, dnsTest);
    const name = `tls://127.0.0.1:${s.port}@dns.test`;
    const ag = await agent(t, name);
    t.equal(aOf(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), '192.0.2.10');
    t.equal(s.queries, 1, 'answered by the DNS-over-TLS server');
    const observed = (to: string): number => ag.agent.metrics.durations(to).histograms.reduce((n, h) => n + h.count, 0);
    t.equal(observed(`127.0.0.1:${s.port}`) + observed(name), 1, 'its answer observed in the server\'s forward latency histogram');
  });

  /** TlsResolvers (300 ms tries) over `servers` in order, aborted at the test's end. */
  const resolversOf = (t: Test, servers: readonly DotServer[]): TlsResolvers => {
    const list = servers.map((s) => parseTlsServer(`tls://127.0.0.1:${s.port}@dns.test`) as TlsServer);
    const resolvers = new TlsResolvers({ servers: list, ca: [ca.cert], attemptTimeoutMs: 300 });
    t.teardown(() => resolvers.abort());
    return resolvers;
  };
  /** `name` A through `resolvers` with a 4 s deadline: the answer, or why none. */
  const exchange = (resolvers: TlsResolvers, name: string): Promise<Buffer | UpstreamFailure> => {
    const query = dnsPacket.encode({ type: 'query', id: 0, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] });
    return new Promise<Buffer | UpstreamFailure>((resolve) => {
      resolvers.send({ query, deadline: systemClock.now() + 4000, resolve, reject: resolve });
    });
  };
  const untilQueries = async (s: DotServer, n: number): Promise<void> => {
    for (let i = 0; i < 500 && s.queries < n; i++) await new Promise((r) => setTimeout(r, 20));
  };

  t.test('close() lets an exchange in flight on the first server finish: its try running out during the close does not reject it closed', async (t) => {
    // types.ts: close() "lets in-flight ones finish (bounded by their deadlines)"; a reload that changes the tls://
    // settings closes the old TlsResolvers that way. An exchange waiting on the first server whose try runs out
    // meanwhile moves to the next server, whose pool is closed too: that 'closed' ends the whole exchange at once
    // (onFailure) and cancels the first server's try, still open, whose answer then comes and is dropped.
    const slow = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    const other = await server(t, dnsTest);
    const resolvers = resolversOf(t, [slow, other]);
    const outcome = exchange(resolvers, 'www.example.org');
    await untilQueries(slow, 1);
    t.equal(slow.queries, 1, 'the first server has the query');
    const closing = resolvers.close();
    // Past the 300 ms try: the exchange would move to the second server, which is closing.
    await new Promise((r) => setTimeout(r, 600));
    slow.releaseHeld();
    const got = await outcome;
    t.ok(Buffer.isBuffer(got), `answered by the first server, not rejected (got ${Buffer.isBuffer(got) ? 'an answer' : got})`);
    if (Buffer.isBuffer(got)) t.equal(aOf(dnsPacket.decode(got)), '192.0.2.10');
    t.equal(other.queries, 0, 'nothing sent to the second server after the close');
    await closing;
  });

  t.test('a DNS-over-TLS server slow to answer (a cold recursive lookup) is not sent the queries again nor given extra connections', async (t) => {
    // The cluster pool's stall rule (tcp-pick.ts) is for a cluster DNS that serves each connection in order and
    // answers cluster names in a millisecond: 300 ms with nothing read means a query ahead holds the others up. A
    // DNS-over-TLS resolver answers out of order (RFC 7766) and takes hundreds of ms for a name not in its cache:
    // nothing is held up, yet the rule opened more TLS connections and sent queries again.
    const s = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    const resolvers = new TlsResolvers({ servers: [parseTlsServer(`tls://127.0.0.1:${s.port}@dns.test`) as TlsServer], ca: [ca.cert], attemptTimeoutMs: 300, connections: 1 });
    t.teardown(() => resolvers.abort());
    const names = ['www.example.org', 'a.example.org', 'b.example.org', 'c.example.org'];
    const outcomes = names.map((n) => exchange(resolvers, n));
    await untilQueries(s, names.length);
    // A second and a half with nothing answered, as a resolver busy with cold lookups.
    await new Promise((r) => setTimeout(r, 1500));
    s.releaseHeld();
    const got = await Promise.all(outcomes);
    t.ok(got.every((g) => Buffer.isBuffer(g)), 'all answered');
    t.equal(s.queries, names.length, `each query sent once (the server got ${s.queries} for ${names.length})`);
    t.equal(s.connections, 1, `on its one connection (${s.connections} made)`);
  });

  t.test('an answer that comes after its try ran out is not also counted a timeout of the server that gave it', async (t) => {
    // TlsResolvers.#finish records a timeout against every try past its expiry that it cancels; the try that just
    // answered was among them: its server, having answered, was marked with a failure too (a third of the way to failing).
    const first = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    const second = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    const resolvers = resolversOf(t, [first, second]);
    const outcome = exchange(resolvers, 'www.example.org');
    await untilQueries(second, 1);
    t.equal(second.queries, 1, 'the first try ran out, the second server was asked');
    first.releaseHeld();
    t.ok(Buffer.isBuffer(await outcome), 'answered by the first server');
    t.equal(resolvers.servers[0]!.pool.health.lastCause, 'answered', 'the first server\'s last health event is its answer, no timeout');
  });

  t.test('SERVFAIL for one domain moves the exchange on but does not count against the server\'s health', async (t) => {
    // The host resolvers' rule: a SERVFAIL (a lame or bogus domain) sends the query to the next server and counts
    // against the route only when no server does better. The DoT servers' pools counted it as the server failing:
    // three lookups of one broken domain marked a healthy first resolver failing, and every name went to the second.
    const lame = 'lame.example.org';
    const first = await server(t, dnsTest, { servfail: [lame] });
    const second = await server(t, dnsTest, { servfail: [lame] });
    const resolvers = resolversOf(t, [first, second]);
    for (let i = 0; i < 3; i++) {
      const got = await exchange(resolvers, lame);
      t.ok(Buffer.isBuffer(got) && rcode(dnsPacket.decode(got)) === 'SERVFAIL', `lookup ${i + 1}: SERVFAIL passed on`);
    }
    t.equal(second.queries, 3, 'each SERVFAIL moved on to the second server');
    t.ok(resolvers.servers[0]!.pool.health.healthy, 'the first server, which answers, stays healthy');
    const before = first.queries;
    t.ok(Buffer.isBuffer(await exchange(resolvers, 'www.example.org')));
    t.equal(first.queries, before + 1, 'the next name still starts at the first server');
  });

  t.test('a failing DNS-over-TLS server\'s failed health checks are counted in coredns_forward_healthcheck_failures_total{to}', async (t) => {
    // Every other probed upstream has its probe's failures counted; the DoT servers' probes were built without counters.
    const gone = await server(t, dnsTest);
    const port = gone.port;
    await gone.close();
    const ag = await agent(t, `tls://127.0.0.1:${port}@dns.test`);
    t.equal(rcode(await udpQuery(ag.target, 'www.example.org', { timeoutMs: 5000 })), 'SERVFAIL', 'the server is down');
    const failures = (): number => ag.agent.metrics.probe(`127.0.0.1:${port}`).get('failures');
    for (let i = 0; i < 500 && failures() === 0; i++) await new Promise((r) => setTimeout(r, 20));
    t.ok(failures() > 0, `the probes of the down server counted as failed health checks (${failures()})`);
  });

  t.test('failover: an answer from the first server after its try ended, but inside the budget, is used', async (t) => {
    // Over TCP/TLS a query is not lost the way a UDP datagram is: a server past the try timeout is still working on it
    // (a cold recursive lookup through slow authoritative servers takes seconds). The host resolvers keep an earlier
    // try open until the exchange's deadline and take whichever answer comes first; the DNS-over-TLS failover drops
    // the first server's try at --timeout, so its answer at 2.6 s is discarded ('late') while the second server,
    // asked from scratch, never answers in the 4 s budget: SERVFAIL for a name that was answered in time.
    const sockets = new Set<tls.TLSSocket>();
    const slow = tls.createServer({ key: dnsTest.key, cert: dnsTest.cert, ALPNProtocols: ['dot'] }, (socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
      const decoder = new FrameDecoder((f) => {
        const q = dnsPacket.decode(Buffer.from(f));
        const name = q.questions?.[0]?.name ?? '.';
        const timer = setTimeout(() => {
          if (socket.writable) socket.write(frame(answer(name, [a(name, '192.0.2.99')], { id: q.id ?? 0 })));
        }, 2600);
        socket.once('close', () => clearTimeout(timer));
      });
      socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    });
    await new Promise<void>((resolve) => slow.listen(0, HOST, () => resolve()));
    t.teardown(() => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      slow.close(() => resolve());
    }));
    const slowPort = (slow.address() as AddressInfo).port;
    const silent = await server(t, dnsTest, { holdUntilPending: 1_000_000 });
    // --timeout 2s: each try 2 s while another server is left, the exchange 4 s in all.
    const ag = await agent(t, `tls://127.0.0.1:${slowPort}@dns.test,tls://127.0.0.1:${silent.port}@dns.test`, '--timeout', '2s');
    const p = await udpQuery(ag.target, 'slow.example.org', { timeoutMs: 6000 });
    t.equal(silent.queries, 1, 'the first try ran out and the second server was asked');
    t.equal(rcode(p), 'NOERROR', 'the first server\'s answer, 1.4 s inside the budget, is the answer');
    t.equal(aOf(p), '192.0.2.99');
  });
}
