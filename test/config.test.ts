// Config: flags, config file, environment, and the errors operators see.
import t from 'tap';
import { ConfigError, helpText, loadConfig, OPTIONS, parseDuration } from '../src/config.js';

const noEnv = {};
const load = (argv: string[], env: NodeJS.ProcessEnv = noEnv, files: Record<string, string> = {}) =>
  loadConfig(argv, {
    env,
    readFile: (p) => {
      const f = files[p];
      if (f === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
      return f;
    },
  });
const err = (argv: string[], env: NodeJS.ProcessEnv = noEnv, files: Record<string, string> = {}): string => {
  try {
    load(argv, env, files);
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  return 'no error';
};

t.test('defaults: local mode on 127.0.0.1:5353 with node-cache cache settings', async (t) => {
  const { config } = load([]);
  t.same(config.listen, [{ host: '127.0.0.1', port: 5353 }]);
  t.equal(config.clusterUpstream, null);
  t.equal(config.clusterDomain, 'cluster.local');
  t.equal(config.resolvConf, '/etc/resolv.conf');
  t.equal(config.cacheSize, 9984);
  t.equal(config.negativeCacheSize, 9984);
  t.equal(config.successTtl, 30);
  t.equal(config.denialTtl, 5);
  t.equal(config.timeoutMs, 2000);
  t.equal(config.maxUdpSize, 1232);
});

t.test('listen addresses: --listen (v4, v6), --localip with --port', async (t) => {
  const { config } = load(['--listen', '127.0.0.1:53', '--listen=[::1]:5300', '--localip', '169.254.20.10,10.96.0.10', '--port', '53']);
  t.same(config.listen, [
    { host: '127.0.0.1', port: 53 },
    { host: '::1', port: 5300 },
    { host: '169.254.20.10', port: 53 },
    { host: '10.96.0.10', port: 53 },
  ]);
  t.match(err(['--listen', '127.0.0.1']), /--listen "127.0.0.1": a port is required/);
  t.match(err(['--listen', 'localhost:53']), /not an IPv4 or IPv6 address/);
  t.match(err(['--listen', '127.0.0.1:53', '--listen', '127.0.0.1:53']), /given twice/);
  // --localip is bare IPs (node-cache's spelling): a port there would have replaced --port's for that address alone.
  t.match(err(['--localip', '127.0.0.1:5399']), /--localip "127\.0\.0\.1:5399": not an IP address .*--port/);
  t.match(err(['--localip', '169.254.20.10,[::1]']), /--localip "\[::1\]": not an IP address/);
  t.match(err(['--localip', '::ffff:10.0.0.1']), /IPv4-mapped .*; write 10\.0\.0\.1$/);
  t.same(load(['--localip', ' fd00::10:53, FE80::1%lo', '--port', '5300']).config.listen, [{ host: 'fd00::10:53', port: 5300 }, { host: 'fe80::1%lo', port: 5300 }], 'IPv6, canonical, zone kept');
});

t.test('cluster DNS address: flag, Service environment, or a loud error when required', async (t) => {
  t.same(load(['--upstream-addr', '10.96.0.10']).config.clusterUpstream, { host: '10.96.0.10', port: 53 });
  t.same(load(['--upstream-addr', '[fd00::10]:5353']).config.clusterUpstream, { host: 'fd00::10', port: 5353 });
  const env = { KUBE_DNS_UPSTREAM_SERVICE_HOST: '10.96.0.11', KUBE_DNS_UPSTREAM_SERVICE_PORT: '53' };
  const fromEnv = load(['--require-cluster-dns'], env).config;
  t.same(fromEnv.clusterUpstream, { host: '10.96.0.11', port: 53 });
  t.equal(fromEnv.clusterUpstreamSource, 'KUBE_DNS_UPSTREAM_SERVICE_HOST');
  t.same(load([], { KUBE_DNS_UPSTREAM_SERVICE_HOST: 'fd00::53' }).config.clusterUpstream, { host: 'fd00::53', port: 53 });
  t.same(load(['--upstream-svc', 'my-dns'], { MY_DNS_SERVICE_HOST: '10.0.0.53' }).config.clusterUpstream, { host: '10.0.0.53', port: 53 });
  t.match(err(['--require-cluster-dns']), /--require-cluster-dns: no cluster DNS address: --upstream-addr is not set and KUBE_DNS_UPSTREAM_SERVICE_HOST is not in the environment/);
  t.match(err([], { KUBE_DNS_UPSTREAM_SERVICE_HOST: 'not-an-ip' }), /KUBE_DNS_UPSTREAM_SERVICE_HOST/);
});

t.test('bad values name the flag and the value', async (t) => {
  t.match(err(['--cache-size', 'lots']), /--cache-size "lots": expected a whole number/);
  t.match(err(['--cache-size', '0']), /--cache-size "0"/);
  t.match(err(['--port', '70000']), /--port "70000": expected a whole number 1-65535/);
  t.match(err(['--timeout', 'soon']), /--timeout "soon": expected a duration/);
  t.match(err(['--success-ttl', '500ms']), /--success-ttl "500ms": must be between 1s and 24h \(DNS TTLs are whole seconds\)/);
  t.match(err(['--serve-stale', '-1']), /--serve-stale "-1"/);
  t.equal(load(['--serve-stale', '0']).config.serveStaleMs, 0, '0 turns stale serving off');
  t.match(err(['--log-level', 'loud']), /--log-level "loud"/);
  t.match(err(['--require-cluster-dns=maybe']), /--require-cluster-dns "maybe": expected true or false/);
  t.match(err(['--no-such-flag']), /unknown flag --no-such-flag/);
  t.match(err(['--timeout']), /--timeout needs a value/);
  t.match(err(['stray']), /unexpected argument "stray"/);
  t.match(err(['--cluster-domain', 'bad..domain']), /--cluster-domain/);
  t.match(err(['--stub-domain', 'corp.example']), /--stub-domain "corp.example": expected ZONE=IP/);
  t.match(err(['--upstream-nameservers', '1.2.3.4:0']), /port must be 1-65535/);
});

t.test('durations', async (t) => {
  t.equal(parseDuration('500ms'), 500);
  t.equal(parseDuration('2s'), 2000);
  t.equal(parseDuration('1m30s'), 90_000);
  t.equal(parseDuration('1.5'), 1500);
  t.equal(parseDuration('5 s'), undefined);
  t.equal(parseDuration(''), undefined);
  t.equal(load(['--timeout', '750ms']).config.timeoutMs, 750);
});

t.test('values out of range or of the wrong type are refused, never coerced', async (t) => {
  // Each of these was accepted silently before.
  t.match(err(['--timeout', '1h']), /--timeout "1h": must be between 100ms and 30s/);
  t.match(err(['--shutdown-grace', '1h']), /--shutdown-grace "1h": must be between/);
  t.match(err(['--serve-stale', '30d']), /--serve-stale "30d"/);
  t.match(err(['--require-cluster-dns=yes']), /--require-cluster-dns "yes": expected true or false/);
  t.match(err(['--require-cluster-dns=1']), /--require-cluster-dns "1": expected true or false/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'requireClusterDns: yes' }), /requireClusterDns must be true or false, got "yes"/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'requireClusterDns: 1' }), /requireClusterDns must be true or false, got 1/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'listen: {host: 127.0.0.1, port: 53}' }), /listen: each item must be a string such as "127.0.0.1:53", got \{"host":"127.0.0.1","port":53\}/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'listen: [[1, 2]]' }), /got \[1,2\]/);
  t.notMatch(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'listen: {a: 1}' }), /object Object/);
  t.equal(load(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'requireClusterDns: false' }).config.listen.length, 1, 'a real boolean is fine');
  t.equal(load(['--cache-memory', '128Mi']).config.cacheMemoryBytes, 128 * 2 ** 20);
  t.equal(load([]).config.cacheMemoryBytes, 64 * 2 ** 20, 'default 64Mi');
  t.match(err(['--cache-memory', 'lots']), /--cache-memory "lots": expected a size such as 64Mi/);
  t.match(err(['--cache-memory', '1Ki']), /--cache-memory "1Ki": must be between/);
  t.equal(load(['--query-log-sample', '0.01']).config.queryLogEvery, 100, 'one query in a hundred');
  t.equal(load([]).config.queryLogEvery, 0, 'off by default');
  t.match(err(['--query-log-sample', '2']), /--query-log-sample "2": expected a share between 0 and 1/);
});

t.test('config file: YAML and JSON, stub domains, flags win', async (t) => {
  const yaml = `
listen: ["127.0.0.1:5300"]
clusterDomain: Example.Cluster.
timeout: 1s
cacheSize: 100
upstreamNameservers: ["127.0.0.9:5353"]
stubDomains:
  corp.example: ["127.0.0.7", "127.0.0.8:5353"]
`;
  const { config } = load(['--config', '/c.yaml', '--cache-size', '200'], noEnv, { '/c.yaml': yaml });
  t.same(config.listen, [{ host: '127.0.0.1', port: 5300 }]);
  t.equal(config.clusterDomain, 'example.cluster');
  t.equal(config.timeoutMs, 1000);
  t.equal(config.cacheSize, 200, 'flag wins over the file');
  t.same(config.upstreamNameservers, [{ host: '127.0.0.9', port: 5353 }]);
  t.same(config.stubDomains, [{ zone: 'corp.example', servers: [{ host: '127.0.0.7', port: 53 }, { host: '127.0.0.8', port: 5353 }] }]);
  const json = load(['--config', '/c.json'], noEnv, { '/c.json': '{"successTtl": "10s", "denialTtl": 2}' }).config;
  t.equal(json.successTtl, 10);
  t.equal(json.denialTtl, 2);
  const stubFlag = load(['--config', '/c.yaml', '--stub-domain', 'corp.example=127.0.0.5'], noEnv, { '/c.yaml': yaml }).config;
  t.same(stubFlag.stubDomains, [{ zone: 'corp.example', servers: [{ host: '127.0.0.5', port: 53 }] }], 'flag replaces the file stub');
  t.match(err(['--config', '/missing.yaml']), /--config \/missing.yaml: cannot read \(ENOENT\)/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'cacheSize: [1' }), /config file \/c.yaml:/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'cachesize: 1' }), /unknown setting "cachesize"/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {x.example: []}' }), /stubDomains.x.example must be a non-empty list/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': '- 1' }), /expected a mapping/);
});

t.test('--help lists every flag with its default', async (t) => {
  const h = helpText();
  for (const o of OPTIONS) t.match(h, `--${o.flag}`);
  t.match(h, '(default 9984)');
  t.equal(load(['--help']).help, true);
});

t.test('ConfigWatcher: a change in any watched file is reported once, a missing file is a state like any other', async (t) => {
  const { ManualClock } = await import('../src/clock.js');
  const { ConfigWatcher, CONFIG_POLL_MS } = await import('../src/config-watch.js');
  const clock = new ManualClock();
  const files = new Map<string, string | null>([['/c.yaml', 'a: 1'], ['/kube-dns/stubDomains', null]]);
  let changes = 0;
  const w = new ConfigWatcher(clock, [...files.keys()], () => changes++, (p) => files.get(p) ?? null);
  clock.advance(3 * CONFIG_POLL_MS);
  t.equal(changes, 0, 'nothing changed');
  files.set('/c.yaml', 'a: 2');
  // Two polls: the second reads what the first did (not a file caught mid-write).
  clock.advance(2 * CONFIG_POLL_MS);
  t.equal(changes, 1);
  clock.advance(3 * CONFIG_POLL_MS);
  t.equal(changes, 1, 'reported once');
  files.set('/kube-dns/stubDomains', '{}');
  clock.advance(2 * CONFIG_POLL_MS);
  t.equal(changes, 2, 'a file that appears is a change');
  w.stop();
  files.set('/c.yaml', 'a: 3');
  clock.advance(3 * CONFIG_POLL_MS);
  t.equal(changes, 2, 'stopped');
});

t.test('the root zone is refused as the cluster domain or a stub domain (it would take every name)', async (t) => {
  // A zone of "" or "." matches every name in the router's suffix walk: all external names would go to the
  // cluster DNS (or the stub's servers), and with the view as the cluster route's local answerer, a slow
  // cluster DNS would get external names answered from the cluster view. A templated
  // `--cluster-domain=$(CLUSTER_DOMAIN)` with an empty variable gives exactly this.
  t.match(err(['--cluster-domain', '']), /--cluster-domain/);
  t.match(err(['--cluster-domain', '.']), /--cluster-domain/);
  t.match(err(['--stub-domain', '.=127.0.0.1']), /--stub-domain/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {".": ["127.0.0.1"]}' }), /stubDomains/);
  t.match(
    err(['--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{".": ["127.0.0.1"]}' }),
    /kube-dns ConfigMap.*stubDomains/,
    'kube-dns refuses it too (IsDNS1123Subdomain)',
  );
});

t.test('a cluster or stub zone with a label DNS allows but no cluster uses (a space, a quote) is refused, naming the flag', async (t) => {
  // nameToWire takes any byte in a label: " " (a templated manifest's stray space) or a quote left by YAML passed as a
  // zone that matches no name a pod asks, so every cluster name would go to the host's resolvers, silently.
  for (const zone of [' ', 'cluster .local', '"cluster.local"', 'cluster.local\t']) {
    t.match(err(['--cluster-domain', zone]), /--cluster-domain.*not a valid domain name/, JSON.stringify(zone));
    t.match(err(['--stub-domain', `${zone}=127.0.0.1`]), /--stub-domain.*not a valid zone name/, `stub ${JSON.stringify(zone)}`);
  }
  for (const zone of ['cluster.local', 'Cluster.Local.', 'my-cluster.example_zone', 'a1.b2']) {
    t.equal(load(['--cluster-domain', zone]).config.clusterDomain, zone.toLowerCase().replace(/\.$/, ''), zone);
  }
});

t.test('a cluster domain of two dots is the root zone too, and refused like "."', async (t) => {
  // validate() strips one trailing dot and then refuses only "": "..", left as ".", passes nameToWire as the root
  // name, so the cluster route's zone is the root and every name (external ones too) goes to the cluster DNS,
  // with the view answering them when it is slow: what the root-zone check exists to refuse. A templated
  // `--cluster-domain=$(CLUSTER_DOMAIN).` whose variable holds "." gives exactly this.
  let domain = '';
  try {
    domain = load(['--cluster-domain', '..']).config.clusterDomain;
  } catch (e) {
    t.match((e as Error).message, /--cluster-domain/, 'refused, naming the flag');
    return;
  }
  t.fail(`accepted as cluster domain "${domain}"`);
});

t.test('cache sizes have an upper bound: a huge one is a flag error, not a crash at start', async (t) => {
  // Entry slots are allocated up front by count, outside --cache-memory: 1e9 entries throws
  // "RangeError: Array buffer allocation failed" from the Agent constructor, which main.ts reports as
  // "unexpected error" with a stack and exit 1, not exit 2 naming the flag. No count above what the
  // byte budget can hold (64 bytes of slot each at least) is of any use.
  t.match(err(['--cache-size', '1000000000']), /--cache-size "1000000000"/);
  t.match(err(['--negative-cache-size', '3000000000']), /--negative-cache-size "3000000000"/);
  t.match(err(['--cache-size', '99999999999999999999']), /--cache-size "99999999999999999999"/);
});

t.test('reload: settings only read at start are reported as needing a restart, never claimed applied', async (t) => {
  const { keepRestartOnly } = await import('../src/agent-config.js');
  // --reuse-port is a bind option of the listeners and HTTP servers made at start; --max-query-age is handed to
  // the batched workers when they are spawned (worker-spawn.ts), and their configure() message has no field for
  // it. A reload changing either logs "configuration reloaded" with no restartNeeded, and agent.config then shows
  // the new value while the old one is in force.
  const old = load(['--io', 'batched']).config;
  const next = load(['--io', 'batched', '--no-reuse-port', '--max-query-age', '1s']).config;
  const { merged, restartNeeded } = keepRestartOnly(old, next);
  t.ok(restartNeeded.includes('reusePort'), `reusePort reported (got ${JSON.stringify(restartNeeded)})`);
  t.ok(restartNeeded.includes('maxQueryAgeMs'), `maxQueryAgeMs reported (got ${JSON.stringify(restartNeeded)})`);
  t.equal(merged.reusePort, old.reusePort, 'the running value is kept');
  t.equal(merged.maxQueryAgeMs, old.maxQueryAgeMs, 'the running value is kept');
});

t.test('loop guard: an upstream that is one of our own addresses is refused whatever its spelling, and under a wildcard listen', async (t) => {
  const { hostServers } = await import('../src/agent-config.js');
  const { silentLogger } = await import('../src/log.js');
  const { networkInterfaces } = await import('node:os');
  const guard = (argv: string[]): string => {
    try {
      hostServers(load(argv).config, () => 'nameserver 127.0.0.254\n', silentLogger);
    } catch (e) {
      return (e as Error).message;
    }
    return 'no error';
  };
  t.match(guard(['--listen', '127.0.0.1:5300', '--upstream-nameservers', '127.0.0.1:5300']), /would loop/, 'the same spelling is caught');
  // agent-config.ts guardLoops compares host strings: one address written in another case is not noticed, and
  // every query for an external name is forwarded to ourselves until it times out (SERVFAIL for all of them).
  t.match(guard(['--listen', '[FD00::A]:5300', '--upstream-nameservers', '[fd00::a]:5300']), /would loop/, 'IPv6 in another case is the same address');
  t.match(guard(['--listen', '[fd00::a]:5300', '--upstream-addr', '[fd00:0:0:0:0:0:0:a]:5300']), /would loop/, 'IPv6 written out in full is the same address');
  // Under 0.0.0.0 only 127/8 counts as ours, but the wildcard receives on every local address: a resolv.conf
  // naming this host's own IP (a common set-up for a caching host) loops.
  const own = Object.values(networkInterfaces()).flat().find((i) => i !== undefined && i.family === 'IPv4' && !i.internal);
  if (own === undefined) t.comment('no non-loopback IPv4 address on this machine: the wildcard case is not checked');
  else t.match(guard(['--listen', '0.0.0.0:5300', '--upstream-nameservers', `${own.address}:5300`]), /would loop/, `a wildcard listen covers ${own.address}`);
});

t.test('an external-name server written in a non-canonical IPv6 form is answered like any other', async (t) => {
  // resolv.conf, --upstream-nameservers and the kube-dns ConfigMap take any valid spelling of an IPv6 address
  // (glibc's inet_pton does). The host resolvers keep it as written, and accept an answer only when its source
  // (rinfo.address, always canonical: "::1") matches the server by sameHost() in udp-sockets.ts, which lower-cases
  // and drops a %zone but does not canonicalise. So every answer from "0:0:0:0:0:0:0:1" (or "2001:db8::0053", or
  // "::ffff:7f00:1"-style forms) is dropped as spoofed, and every external name ends in SERVFAIL.
  const { SimDnsServer, staticHandler } = await import('../testkit/dns-server.js');
  const { startAgent } = await import('./helpers/agent.js');
  const { udpQuery } = await import('./helpers/dns-client.js');
  const server = await SimDnsServer.start({ host: '::1', handler: staticHandler({ 'www.example.com': { A: ['192.0.2.80'] } }, { soaZone: 'example.com' }) });
  t.teardown(() => server.close());
  const a = await startAgent('127.0.20.9', ['--upstream-nameservers', `[0:0:0:0:0:0:0:1]:${server.port}`]);
  t.teardown(a.stop);
  const answer = await udpQuery(a.target, 'www.example.com', { timeoutMs: 5000 });
  t.equal((answer.flags ?? 0) & 0xf, 0, 'NOERROR, not SERVFAIL');
  t.same((answer.answers ?? []).map((r) => (r as { data?: unknown }).data), ['192.0.2.80']);
  t.ok((server.stats.byName.get('www.example.com') ?? 0) > 0, 'the server was asked');
});

t.test('an IPv6 address with an empty zone ("fe80::1%") is a flag error, not a crash with a stack at start', async (t) => {
  // parseHostPort (addr.ts) checks only the part before "%", so "[fe80::1%]:53" passes validation. With
  // --setup-interface (the default) NodeInterface's constructor then throws InterfaceError '"fe80::1%" is not an
  // IP address' from inside Agent.#build: not a StartupError, so main.ts prints "unexpected error" and a stack
  // trace (exit 1), not exit 2 naming --listen. The same text is accepted for --upstream-addr and stub servers.
  t.match(err(['--listen', '[fe80::1%]:53']), /--listen/);
  t.match(err(['--upstream-addr', '[fe80::1%]:53']), /--upstream-addr/);
  t.equal(load(['--listen', '[fe80::1%eth0]:53']).config.listen[0]?.host, 'fe80::1%eth0', 'a named zone is fine');
});

t.test('an ops port on a DNS listen address:port is refused, naming both flags (both would be SO_REUSEPORT on one port)', async (t) => {
  const refused = (argv: string[]): string => {
    try {
      load(argv);
    } catch (e) {
      return (e as Error).message;
    }
    return 'accepted';
  };
  t.match(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '127.0.0.1:5300']), /--metrics-listen-address.*--listen/, 'the same address');
  t.match(refused(['--listen', '[fd00::a]:5300', '--metrics-listen-address', '[FD00:0::A]:5300']), /--metrics-listen-address/, 'one IPv6 address in two spellings');
  t.match(refused(['--listen', '0.0.0.0:5300', '--metrics-listen-address', '127.0.0.5:5300']), /--metrics-listen-address/, 'under a DNS wildcard');
  t.match(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '0.0.0.0:5300']), /--metrics-listen-address/, 'a metrics wildcard');
  t.match(refused(['--listen', '127.0.0.1:5300', '--health-port', '5300']), /--health-port.*--listen/, '--health-port on the DNS port of the first address');
  t.match(refused(['--localip', '127.0.0.2,127.0.0.3', '--port', '5300', '--health-port', '5300']), /--health-port/, 'with --localip and --port');
  t.equal(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '127.0.0.2:5300', '--health-port', '5301']), 'accepted', 'another address or port is fine');
  t.equal(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', 'off', '--health-port', '0']), 'accepted', 'off is fine');
  // The DNS sockets on a wildcard are of one family (IPV6_V6ONLY on `::`); the HTTP server on `::` is dual-stack.
  t.equal(refused(['--listen', '0.0.0.0:5300', '--metrics-listen-address', '[::1]:5300']), 'accepted', 'an IPv6 ops address beside an IPv4 DNS wildcard: no socket of one family clashes');
  t.equal(refused(['--listen', '[::]:5300', '--metrics-listen-address', '127.0.0.5:5300']), 'accepted', 'an IPv4 ops address beside the IPv6-only DNS wildcard');
  t.equal(refused(['--listen', '[fd00::a]:5300', '--metrics-listen-address', '0.0.0.0:5300']), 'accepted', 'an IPv4 ops wildcard beside an IPv6 DNS address');
  t.match(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '[::]:5300']), /--metrics-listen-address/, 'the dual-stack ops wildcard takes IPv4 DNS addresses too');
  t.match(refused(['--listen', '[::]:5300', '--metrics-listen-address', '[fd00::5]:5300']), /--metrics-listen-address/, 'an IPv6 ops address under the IPv6 DNS wildcard');
  // Two HTTP servers on one port: the specific address takes its connections, so /metrics there is a 404 (exit 1 at bind without SO_REUSEPORT).
  t.match(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '0.0.0.0:5310', '--health-port', '5310']), /--metrics-listen-address 0\.0\.0\.0:5310.*--health-port/, 'metrics on a wildcard and health under it, one port');
  t.match(refused(['--listen', '[fd00::a]:5300', '--metrics-listen-address', '[::]:5310', '--health-port', '5310']), /--health-port \[fd00::a\]:5310/, 'under an IPv6 wildcard');
  t.equal(refused(['--listen', '[fd00::a]:5300', '--metrics-listen-address', '[FD00:0::A]:5310', '--health-port', '5310']), 'accepted', 'one address in two spellings: one server');
  t.equal(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '127.0.0.1:5310', '--health-port', '5310']), 'accepted', 'one address: one server for all three paths');
  t.equal(refused(['--listen', '127.0.0.1:5300', '--metrics-listen-address', '127.0.0.2:5310', '--health-port', '5310']), 'accepted', 'two addresses, neither a wildcard: two servers side by side');
});

t.test('one stub zone spelled two ways is refused (the router used one, the health gauge named the other)', async (t) => {
  const file = 'stubDomains:\n  consul.local: ["127.0.0.7"]\n  Consul.Local.: ["127.0.0.8"]\n';
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': file }), /stubDomains.*"consul\.local".*"Consul\.Local\."|given twice/, 'in our config file');
  t.match(
    err(['--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{"consul.local": ["127.0.0.7"], "Consul.Local.": ["127.0.0.8"]}' }),
    /kube-dns ConfigMap.*given twice/,
    'in the kube-dns ConfigMap (CoreDNS refuses a zone defined twice too)',
  );
  // Across sources a zone is one zone: the flag's replaces the file's, the file's the ConfigMap's.
  const c = load(['--config', '/c.yaml', '--kube-dns-config-dir', '/kd'], noEnv, {
    '/c.yaml': 'stubDomains:\n  Consul.Local.: ["127.0.0.8"]\n',
    '/kd/stubDomains': '{"consul.local": ["127.0.0.7"]}',
  }).config;
  t.same(c.stubDomains, [{ zone: 'consul.local', servers: [{ host: '127.0.0.8', port: 53 }] }], 'the file wins over the ConfigMap');
});

t.test('config file: every unknown key is named; a number for a text setting is refused, not turned into other text', async (t) => {
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'cachesize: 1\nlogLevel: info\ntimout: 2s\n' }), /"cachesize".*"timout"/);
  // YAML reads 0123 as the number 123: the link would be named "123".
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'interfaceName: 0123\n' }), /interfaceName.*string/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'clusterDomain: 1e3\n' }), /clusterDomain.*string/);
  t.equal(load(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'interfaceName: "0123"\nqueryLogSample: 0.5\n' }).config.interfaceName, '0123', 'quoted, it is text');
});

t.test('--interface-kind is one of the kinds the link can be; messages of durations say what is allowed', async (t) => {
  t.match(err(['--interface-kind', 'dumy']), /--interface-kind "dumy": expected dummy or bridge/);
  t.equal(load(['--interface-kind', 'bridge']).config.interfaceKind, 'bridge');
  // "0" is a duration; it is out of range, and the range said "between 0s and ..." though 0 was refused.
  t.match(err(['--success-ttl', '0']), /--success-ttl "0": must be between 1s and 24h/);
  t.match(err(['--timeout', '0']), /--timeout "0": must be between 100ms and 30s/);
  t.match(err(['--upstream-rotate-after', '0']), /must be between 1s and/);
});

t.test('--query-log-sample: a share that is no one-in-N is honoured, not rounded to every query', async (t) => {
  const every = load(['--query-log-sample', '0.7']).config.queryLogEvery;
  t.ok(Math.abs(every - 1 / 0.7) < 1e-9, `one in ${every} (0.7 was rounded to 1: every query)`);
  t.equal(load(['--query-log-sample', '0.01']).config.queryLogEvery, 100);
  t.equal(load(['--query-log-sample', '0']).config.queryLogEvery, 0);
});

t.test('ConfigWatcher: compared against what the configuration was read from, and the files of the one in force after a reload', async (t) => {
  const { ManualClock } = await import('../src/clock.js');
  const { ConfigWatcher, CONFIG_POLL_MS } = await import('../src/config-watch.js');
  const clock = new ManualClock();
  const files = new Map<string, string | null>([['/c.yaml', 'a: 2'], ['/resolv-1', 'nameserver 127.0.0.2'], ['/resolv-2', 'nameserver 127.0.0.3']]);
  const read = (p: string): string | null => files.get(p) ?? null;
  let changes = 0;
  // The config was read as "a: 1" at start; it became "a: 2" while the agent started.
  const w = new ConfigWatcher(clock, ['/c.yaml', '/resolv-1'], () => changes++, read, (p) => (p === '/c.yaml' ? 'a: 1' : undefined));
  clock.advance(2 * CONFIG_POLL_MS);
  t.equal(changes, 1, 'a change made after the read and before the watcher is one');
  w.watch(['/c.yaml', '/resolv-2'], (p) => (p === '/c.yaml' ? 'a: 2' : undefined));
  files.set('/resolv-1', 'nameserver 127.0.0.4');
  clock.advance(2 * CONFIG_POLL_MS);
  t.equal(changes, 1, 'a file no longer used is no longer watched');
  files.set('/resolv-2', 'nameserver 127.0.0.5');
  clock.advance(2 * CONFIG_POLL_MS);
  t.equal(changes, 2, 'the file now in use is');
  w.stop();
});

t.test('--max-tcp-per-client: 64 by default, 0 turns the cap off, a bad value names the flag', async (t) => {
  // The defaults keep what pods can make the agent hold over TCP (~240 KiB a connection that leaves its answers
  // unread, plus a 16 MiB room) under the DaemonSet's memory limit with every state docs/install.md measured.
  t.equal(load([]).config.maxTcpConnections, 256);
  t.equal(load([]).config.maxTcpPerClient, 64, 'a quarter of the connections, as a pod\'s share of --max-concurrent');
  t.equal(load(['--max-tcp-per-client', '0']).config.maxTcpPerClient, 0);
  t.equal(load(['--max-tcp-per-client=8']).config.maxTcpPerClient, 8);
  t.equal(load(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'maxTcpPerClient: 16\n' }).config.maxTcpPerClient, 16, 'config file key');
  for (const bad of ['-1', 'many', '1.5', '']) t.match(err(['--max-tcp-per-client', bad]), /^--max-tcp-per-client /, `"${bad}" refused`);
});

t.test('a bad value from the config file or the kube-dns ConfigMap says where it was written, not only the flag it stands for', async (t) => {
  const fromFile = err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'cacheSize: 0\n' });
  t.match(fromFile, /^--cache-size "0": expected a whole number/);
  t.match(fromFile, /config file \/c\.yaml: cacheSize/, 'names the file and its key');
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'listen: ["127.0.0.1:99999"]\n' }), /config file \/c\.yaml: listen/);
  const fromConfigMap = err(['--kube-dns-config-dir', '/kd'], noEnv, { '/kd/upstreamNameservers': '["1.1.1.1:99999"]' });
  t.match(fromConfigMap, /port must be 1-65535/);
  t.match(fromConfigMap, /kube-dns ConfigMap \/kd\/upstreamNameservers/, 'names the ConfigMap file the operator edited');
  t.notMatch(err(['--config', '/c.yaml', '--cache-size', '0'], noEnv, { '/c.yaml': 'cacheSize: 5\n' }), /config file/, 'a flag is named as the flag alone');
});

t.test('a kube-dns ConfigMap file that exists but cannot be read is an error, not "no stub domains" (only a missing one is none)', async (t) => {
  const files = (code: string) => (p: string): string => {
    if (p === '/kd/stubDomains') throw Object.assign(new Error(`${code}: ${p}`), { code });
    throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
  };
  const load1 = (code: string) => loadConfig(['--kube-dns-config-dir', '/kd'], { env: noEnv, readFile: files(code) });
  t.same(load1('ENOENT').config.stubDomains, [], 'missing: none');
  t.same(load1('ENOTDIR').config.stubDomains, [], 'no directory: none');
  for (const code of ['EACCES', 'EISDIR', 'EIO']) {
    t.throws(() => load1(code), new RegExp(`kube-dns ConfigMap /kd/stubDomains: cannot read \\(${code}\\)`), `${code} refused`);
  }
});

t.test('--stub-domain given twice for one zone (in any spelling) is refused, as in the file, not settled by which came last', async (t) => {
  t.match(err(['--stub-domain', 'corp.example=127.0.0.7', '--stub-domain', 'Corp.Example.=127.0.0.8']), /--stub-domain: zone "corp.example" given twice, as "corp.example" and "Corp.Example."/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomain: ["a.example=127.0.0.7", "a.example=127.0.0.8"]\n' }), /zone "a.example" given twice/);
  const two = load(['--stub-domain', 'a.example=127.0.0.7', '--stub-domain', 'b.example=127.0.0.8']).config.stubDomains.map((d) => d.zone);
  t.same(two, ['a.example', 'b.example'], 'two zones are two');
});

t.test('numbers past what a double holds exactly, and hex or binary shares, are refused rather than read as some other number', async (t) => {
  // 2^53 + 1 would be read as 2^53: a value other than the one written.
  t.match(err(['--max-tcp-connections', '9007199254740993']), /^--max-tcp-connections "9007199254740993": expected a whole number 1-9007199254740991/);
  t.match(err(['--upstream-rotate-queries', '99999999999999999999']), /^--upstream-rotate-queries /);
  t.equal(load(['--max-tcp-connections', '9007199254740991']).config.maxTcpConnections, 9007199254740991, 'the largest exact one is fine');
  for (const bad of ['0x1', '0b1', '0o1', 'Infinity']) t.match(err(['--query-log-sample', bad]), /^--query-log-sample /, `"${bad}" refused`);
  t.equal(load(['--query-log-sample', '.5']).config.queryLogEvery, 2);
  t.equal(load(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'queryLogSample: 0.0000001\n' }).config.queryLogEvery, 1e7, 'YAML writes this one as 1e-7: still a share');
});

t.test('--help and --version answer whatever else the command line or the environment holds', async (t) => {
  t.equal(load(['--help', '--cache-size', '0']).help, true, 'a bad value beside --help');
  t.equal(load(['--version', '--require-cluster-dns']).version, true, 'no cluster DNS in this environment');
  t.equal(load(['--config', '/missing.yaml', '--version']).version, true, 'a config file not there');
  t.match(err(['--help', '--no-such-flag']), /unknown flag --no-such-flag/, 'an unknown flag is still named');
});

t.test('listen addresses on the command line replace the file\'s (flags win), not add to them', async (t) => {
  // The shipped DaemonSet passes --localip; the README's config file example has listen: the two together must start.
  const file = { '/c.yaml': 'listen: ["169.254.20.10:53", "10.96.0.10:53"]\n' };
  const both = load(['--config', '/c.yaml', '--localip', '169.254.20.10,10.96.0.10', '--port', '53'], noEnv, file).config.listen;
  t.same(both, [{ host: '169.254.20.10', port: 53 }, { host: '10.96.0.10', port: 53 }], 'the flag\'s, once each');
  const moved = load(['--config', '/c.yaml', '--listen', '127.0.0.1:5301'], noEnv, { '/c.yaml': 'localip: 127.0.0.2\nport: 5300\n' }).config.listen;
  t.same(moved, [{ host: '127.0.0.1', port: 5301 }], 'the file\'s localip is not added to --listen');
  t.same(load(['--config', '/c.yaml'], noEnv, file).config.listen.length, 2, 'the file alone still sets them');
  const portToo = load(['--config', '/c.yaml', '--listen', '127.0.0.1:5301'], noEnv, { '/c.yaml': 'localip: 127.0.0.2\nport: 5300\n' }).config.listen;
  t.same(portToo, [{ host: '127.0.0.1', port: 5301 }], 'nor its port, which goes with its localip');
});

t.test('--port without --localip (it would be ignored) is a flag error naming both, wherever it was written', async (t) => {
  t.match(err(['--port', '5300']), /^--port 5300: the port of the --localip addresses, and there are none; with --listen write ADDR:PORT/);
  t.match(err(['--listen', '127.0.0.1:5301', '--port', '5300']), /^--port 5300/, 'beside --listen too');
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'port: 5300\n' }), /config file \/c\.yaml: port/, 'from the config file, named as written there');
  t.same(load(['--localip', '127.0.0.2', '--port', '5300']).config.listen, [{ host: '127.0.0.2', port: 5300 }], 'with --localip: its port');
  t.same(load(['--localip', '127.0.0.2']).config.listen, [{ host: '127.0.0.2', port: 53 }], '--localip alone: 53');
});

t.test('an IPv4-mapped IPv6 listen address (which an IPv6-only listener cannot bind: EINVAL at start) is a flag error naming the IPv4 spelling', async (t) => {
  t.match(err(['--listen', '[::ffff:127.0.0.1]:5300']), /^--listen \[::ffff:127\.0\.0\.1\]:5300: an IPv4-mapped IPv6 address.*127\.0\.0\.1:5300/);
  t.match(err(['--localip', '::ffff:169.254.20.10']), /^--localip \[::ffff:169\.254\.20\.10\]:53: an IPv4-mapped IPv6 address/);
  t.same(load(['--listen', '[::1]:5300']).config.listen, [{ host: '::1', port: 5300 }], 'other IPv6 addresses are fine');
});

t.test('a stub domain that is the cluster domain or a reverse zone is refused while a cluster DNS is set (CoreDNS refuses a zone defined twice)', async (t) => {
  // The router let the stub replace the cluster route: cluster names went to the stub's servers over UDP, and the
  // view no longer answered for the zone, with nothing said. node-cache's CoreDNS refuses the second block for the zone.
  const up = ['--upstream-addr', '127.0.0.10'];
  t.match(err([...up, '--stub-domain', 'Cluster.Local.=127.0.0.9']), /stub domain "cluster\.local".*cluster DNS/, 'the cluster domain, any spelling');
  t.match(err([...up, '--stub-domain', 'in-addr.arpa=127.0.0.9']), /stub domain "in-addr\.arpa".*cluster DNS/, 'a reverse zone');
  t.match(err([...up, '--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {ip6.arpa.: ["127.0.0.9"]}' }), /stub domain "ip6\.arpa"/, 'from the file');
  t.match(err([...up, '--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{"cluster.local": ["127.0.0.9"]}' }), /stub domain "cluster\.local"/, 'from the ConfigMap');
  t.match(err([...up, '--cluster-domain', 'k8s.example', '--stub-domain', 'k8s.example=127.0.0.9']), /stub domain "k8s\.example"/, 'the configured cluster domain');
  // A zone under them is more specific, as CoreDNS allows; in local mode there is no cluster route to take.
  t.same(load([...up, '--stub-domain', 'corp.cluster.local=127.0.0.9', '--stub-domain', '10.in-addr.arpa=127.0.0.9']).config.stubDomains.map((d) => d.zone), ['corp.cluster.local', '10.in-addr.arpa']);
  t.same(load(['--stub-domain', 'cluster.local=127.0.0.9']).config.stubDomains.map((d) => d.zone), ['cluster.local'], 'local mode');
});

t.test('a config file with a key given twice is refused naming that key and its value, not only a line number', async (t) => {
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'successTtl: 10s\ncacheSize: 5\nsuccessTtl: 20s\n' }), /config file \/c\.yaml: .*unique.*line 3.*successTtl: 20s/);
  t.match(err(['--config', '/c.json'], noEnv, { '/c.json': '{"cacheSize": 5, "cacheSize": 6}' }), /config file \/c\.json: .*unique.*"cacheSize": 6/);
});

t.test('a TTL flag that is not a whole number of seconds is refused, not cut down to one', async (t) => {
  // "1500ms" was cached for 1 s and "2.5s" for 2 s, with nothing said.
  t.match(err(['--success-ttl', '1500ms']), /--success-ttl "1500ms": .*whole seconds/);
  t.match(err(['--denial-ttl', '2.5']), /--denial-ttl "2.5": .*whole seconds/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'localTtl: 2.5s\n' }), /--local-ttl "2.5s": .*whole seconds.*localTtl/);
  t.equal(load(['--success-ttl', '1m30s', '--denial-ttl', '2000ms', '--local-ttl', '1.0']).config.successTtl, 90);
  t.equal(load(['--denial-ttl', '2000ms']).config.denialTtl, 2);
});

t.test('an unbracketed IPv6 address with a port ("::1:5353") is refused, not taken as an IPv4-compatible address no server has', async (t) => {
  // "::1:5353" is the address ::0.1.83.83 (deprecated, RFC 4291 2.5.5.1) at port 53: a stub whose server never answers.
  t.match(err(['--stub-domain', 'x.example=::1:5353']), /--stub-domain.*"::1:5353".*\[::1\]:5353/);
  t.match(err(['--upstream-addr', '::1:53']), /--upstream-addr.*"::1:53"/);
  t.match(err(['--upstream-nameservers', '127.0.0.1,::53']), /--upstream-nameservers.*"::53"/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {x.example: ["::1:5353"]}' }), /stubDomains.*"::1:5353"/);
  t.same(load(['--stub-domain', 'x.example=[::1]:5353,::1,fd00::1:53', '--listen', '[::]:5353']).config.stubDomains[0]?.servers, [
    { host: '::1', port: 5353 }, { host: '::1', port: 53 }, { host: 'fd00::1:53', port: 53 },
  ]);
});

t.test('--listen "fd00::10:53" (no default port) is refused with the bracketed form to write, and the agent exits 2 naming both', async (t) => {
  // It was refused with "a port is required (ADDR:PORT)" alone: the operator had written a port, and was not told where it went.
  const bracketed = /^--listen "fd00::10:53": a port is required \(ADDR:PORT\); an IPv6 address with a port is written in brackets, such as \[fd00::10\]:53$/;
  t.match(err(['--listen', 'fd00::10:53']), bracketed);
  t.match(err(['--listen', 'FD00::10:5353%eth0']), /a port is required \(ADDR:PORT\)$/, 'no suggestion where the last group is no port');
  t.match(err(['--listen', 'fd00::10']), /^--listen "fd00::10": a port is required \(ADDR:PORT\)$/, 'nor for an address whose rest is no address');
  t.match(err(['--listen', '127.0.0.1']), /^--listen "127\.0\.0\.1": a port is required \(ADDR:PORT\)$/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'listen: ["fd00::1:5353"]\n' }), /^--listen "fd00::1:5353": .*such as \[fd00::1\]:5353 \(set in config file \/c\.yaml: listen\)$/);
  t.same(load(['--listen', '[fd00::10]:53']).config.listen, [{ host: 'fd00::10', port: 53 }], 'the suggestion is taken as written');
  // The built binary, as an operator meets it: refused before anything starts (nothing is bound or sent).
  const { spawnSync } = await import('node:child_process');
  const main = new URL('../dist/src/main.js', import.meta.url).pathname;
  const run = spawnSync(process.execPath, [main, '--listen', 'fd00::10:53', '--kube-dns-config-dir='], { encoding: 'utf8', timeout: 30_000 });
  t.equal(run.status, 2, 'exit 2');
  t.match(run.stderr, /--listen "fd00::10:53": .*written in brackets, such as \[fd00::10\]:53/);
});

t.test('ConfigWatcher: a file caught mid-write (truncated, then written in place) is not reloaded until two polls read it the same', async (t) => {
  // An empty config file is a valid one (every default): a poll that fell between the truncate and the write of an
  // in-place edit reloaded it, dropping the stub domains and upstream nameservers until the next poll.
  const { ManualClock } = await import('../src/clock.js');
  const { ConfigWatcher, CONFIG_POLL_MS } = await import('../src/config-watch.js');
  const clock = new ManualClock();
  const files = new Map<string, string | null>([['/c.yaml', 'stubDomains: {a.example: ["127.0.0.9"]}\n'], ['/resolv.conf', 'nameserver 127.0.0.2\n']]);
  let changes = 0;
  const w = new ConfigWatcher(clock, [...files.keys()], () => changes++, (p) => files.get(p) ?? null);
  files.set('/c.yaml', '');
  clock.advance(CONFIG_POLL_MS);
  t.equal(changes, 0, 'the truncated file is not reported');
  files.set('/c.yaml', 'stubDomains: {a.example: ["127.0.0.10"]}\n');
  clock.advance(CONFIG_POLL_MS);
  t.equal(changes, 0, 'nor the written one, until it reads the same twice');
  clock.advance(CONFIG_POLL_MS);
  t.equal(changes, 1, 'then once');
  clock.advance(3 * CONFIG_POLL_MS);
  t.equal(changes, 1, 'and only once');
  // Another file still changing holds the reload back too: it would read that one half-written.
  files.set('/c.yaml', 'a: 3');
  clock.advance(CONFIG_POLL_MS);
  files.set('/resolv.conf', 'nameserver 127.0.0.3\n');
  clock.advance(CONFIG_POLL_MS);
  t.equal(changes, 1, 'held while resolv.conf changes');
  clock.advance(CONFIG_POLL_MS);
  t.equal(changes, 2, 'both settled: one reload');
  w.stop();
});

t.test('the kube-dns ConfigMap\'s stubDomains with one zone written twice the same way is refused, as in any other spelling', async (t) => {
  // JSON.parse keeps the last of two equal keys, so one server list was dropped without a word.
  t.match(
    err(['--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{"consul.local": ["127.0.0.7"], "consul.local": ["127.0.0.8"]}' }),
    /kube-dns ConfigMap \/kd\/stubDomains: .*"consul\.local".*twice/,
  );
  t.same(load(['--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{"a.example": ["127.0.0.7"], "b.example": ["127.0.0.8"]}' }).config.stubDomains.length, 2);
});

t.test('--no-reuse-port with a wildcard and another address of its family on one port is refused naming both (the second bind fails)', async (t) => {
  // It used to start and die on bind with EADDRINUSE (exit 1), as if another process held the port.
  t.match(err(['--no-reuse-port', '--listen', '127.0.0.1:5353', '--listen', '0.0.0.0:5353']), /--listen 127\.0\.0\.1:5353 and 0\.0\.0\.0:5353: .*--no-reuse-port/);
  t.match(err(['--no-reuse-port', '--listen', '[::]:5353', '--listen', '[::1]:5353']), /--listen \[::\]:5353 and \[::1\]:5353/);
  // Other families, other ports, or SO_REUSEPORT (the kernel gives the specific address its own traffic): fine.
  t.equal(load(['--no-reuse-port', '--listen', '0.0.0.0:5353', '--listen', '[::1]:5353', '--listen', '127.0.0.1:5354']).config.listen.length, 3);
  t.equal(load(['--listen', '127.0.0.1:5353', '--listen', '0.0.0.0:5353']).config.listen.length, 2);
});

t.test('one file giving a zone both in stubDomains and in stubDomain is refused (a zone once per file), not settled by the list', async (t) => {
  const file = 'stubDomains:\n  a.example: ["127.0.0.7"]\nstubDomain: ["A.Example.=127.0.0.8"]\n';
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': file }), /zone "a\.example" given twice/);
  // A flag still replaces the file's stub for its zone.
  t.same(load(['--config', '/c.yaml', '--stub-domain', 'a.example=127.0.0.9'], noEnv, { '/c.yaml': file }).config.stubDomains, [{ zone: 'a.example', servers: [{ host: '127.0.0.9', port: 53 }] }]);
});

t.test('a config file stubDomain entry still wins over the kube-dns ConfigMap for its zone', async (t) => {
  const c = load(['--config', '/c.yaml', '--kube-dns-config-dir', '/kd'], noEnv, {
    '/c.yaml': 'stubDomain: ["a.example=127.0.0.8"]\n',
    '/kd/stubDomains': '{"a.example": ["127.0.0.7"]}',
  }).config;
  t.same(c.stubDomains, [{ zone: 'a.example', servers: [{ host: '127.0.0.8', port: 53 }] }]);
});

t.test('--tls-ca-file with no tls:// upstream is refused naming the flag (it was silently ignored)', async (t) => {
  t.match(err(['--tls-ca-file', '/ca.pem']), /^--tls-ca-file \/ca\.pem: no tls:\/\/ upstream uses it/);
  t.match(err(['--tls-ca-file', '/ca.pem', '--upstream-nameservers', '127.0.0.9']), /^--tls-ca-file \/ca\.pem: no tls:\/\/ upstream/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'tlsCaFile: /ca.pem\n' }), /^--tls-ca-file \/ca\.pem: no tls:\/\/ upstream.*config file \/c\.yaml: tlsCaFile/);
  // A kube-dns ConfigMap's plain upstreamNameservers are no user of it either.
  t.match(err(['--tls-ca-file', '/ca.pem', '--kube-dns-config-dir', '/kd'], noEnv, { '/kd/upstreamNameservers': '["127.0.0.9"]' }), /^--tls-ca-file/);
  t.equal(load(['--tls-ca-file', '/ca.pem', '--upstream-nameservers', 'tls://127.0.0.9@dns.test']).config.tlsCaFile, '/ca.pem', 'a tls:// upstream uses it');
  t.equal(load(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'tlsCaFile: /ca.pem\nupstreamNameservers: ["tls://127.0.0.9@dns.test"]\n' }).config.tlsCaFile, '/ca.pem', 'in the file too');
  // Stub domains (--stub-domain, the config file, the ConfigMap) and the cluster DNS take plain addresses only: a tls:// one there is its own error.
  t.match(err(['--tls-ca-file', '/ca.pem', '--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {x.example: ["tls://127.0.0.9@dns.test"]}' }), /stubDomains\.x\.example: "tls:\/\/127\.0\.0\.9@dns\.test"/);
  t.match(err(['--tls-ca-file', '/ca.pem', '--kube-dns-config-dir', '/kd'], noEnv, { '/kd/stubDomains': '{"x.example": ["tls://127.0.0.9"]}' }), /stubDomains\.x\.example: "tls:\/\/127\.0\.0\.9"/);
  t.match(err(['--tls-ca-file', '/ca.pem', '--upstream-addr', 'tls://127.0.0.9']), /^--upstream-addr "tls:\/\/127\.0\.0\.9"/);
});

t.test('one server twice in an operator\'s list (in any spelling) is refused naming the list and the server; resolv.conf\'s duplicates are dropped', async (t) => {
  // Accepted before: the server got twice its share of queries (and a second try before the next server), and a typo went unseen.
  t.match(err(['--upstream-nameservers', '127.0.0.1:53,127.0.0.1:53']), /^--upstream-nameservers: 127\.0\.0\.1:53 given twice/);
  t.match(err(['--upstream-nameservers', '127.0.0.1', '--upstream-nameservers', '127.0.0.1:53']), /^--upstream-nameservers: 127\.0\.0\.1:53 given twice \("127\.0\.0\.1" and "127\.0\.0\.1:53"\)/);
  t.match(err(['--upstream-nameservers', '[::1]:53,::1']), /^--upstream-nameservers: \[::1\]:53 given twice/);
  t.match(err(['--upstream-nameservers', 'tls://127.0.0.9@dns.test,tls://127.0.0.9:853@dns.test']), /^--upstream-nameservers: 127\.0\.0\.9:853 given twice/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'upstreamNameservers: ["127.0.0.1", "127.0.0.1"]\n' }), /^--upstream-nameservers: 127\.0\.0\.1:53 given twice.*config file \/c\.yaml/);
  t.match(err(['--stub-domain', 'x.example=127.0.0.7,127.0.0.7:53']), /^--stub-domain: 127\.0\.0\.7:53 given twice/);
  t.match(err(['--config', '/c.yaml'], noEnv, { '/c.yaml': 'stubDomains: {x.example: ["::1", "[::1]:53"]}' }), /stubDomains\.x\.example: \[::1\]:53 given twice/);
  // Another port is another server; one server in two lists is two routes.
  t.equal(load(['--upstream-nameservers', '127.0.0.1,127.0.0.1:5353', '--stub-domain', 'x.example=127.0.0.1']).config.upstreamNameservers.length, 2);
  // The host's resolv.conf is not the operator's list: a duplicate line is dropped, silently, and the agent runs.
  const { hostServers } = await import('../src/agent-config.js');
  const warnings: string[] = [];
  const { createLogger } = await import('../src/log.js');
  const logger = createLogger('warn', (l) => warnings.push(l));
  t.same(hostServers(load([]).config, () => 'nameserver 127.0.0.2\nnameserver ::1\nnameserver 127.0.0.2\n', logger).servers, [{ host: '127.0.0.2', port: 53 }, { host: '::1', port: 53 }], 'each server once, in the order first written');
  t.same(hostServers(load([]).config, () => 'nameserver ::1\nnameserver 0:0::1\n', logger).servers, [{ host: '::1', port: 53 }], 'in any spelling');
  t.same(warnings, [], 'nothing to say about it');
});

t.test('the kube-dns ConfigMap: one server twice in a list is used once, with a warning, not refused (kube-dns and node-cache take it: the ConfigMap is theirs too)', async (t) => {
  // Refused, a ConfigMap the cluster's kube-dns serves with made every node's agent exit 2 at start: no node-local DNS at all.
  const files = { '/kd/upstreamNameservers': '["127.0.0.1", "127.0.0.1:53", "127.0.0.2"]', '/kd/stubDomains': '{"x.example": ["127.0.0.7", "127.0.0.7:53", "::1"]}' };
  const loaded = load(['--kube-dns-config-dir', '/kd'], noEnv, files);
  t.same(loaded.config.upstreamNameservers, [{ host: '127.0.0.1', port: 53 }, { host: '127.0.0.2', port: 53 }], 'each upstream once, in the order first written');
  t.same(loaded.config.stubDomains.find((d) => d.zone === 'x.example')?.servers, [{ host: '127.0.0.7', port: 53 }, { host: '::1', port: 53 }], 'each stub server once');
  t.match(loaded.warnings, [
    /^kube-dns ConfigMap stubDomains\.x\.example: 127\.0\.0\.7:53 given twice \("127\.0\.0\.7" and "127\.0\.0\.7:53"\); used once/,
    /^kube-dns ConfigMap \/kd\/upstreamNameservers: 127\.0\.0\.1:53 given twice \("127\.0\.0\.1" and "127\.0\.0\.1:53"\); used once/,
  ]);
  t.equal(loaded.warnings.length, 2, 'one warning a duplicate');
  // Our own flag, or file, naming the same servers is still refused: that list is only ours.
  t.match(err(['--kube-dns-config-dir', '/kd', '--upstream-nameservers', '127.0.0.1,127.0.0.1'], noEnv, files), /^--upstream-nameservers: 127\.0\.0\.1:53 given twice/);
});

t.test('a kube-dns ConfigMap stub zone (or upstream list) that our flag or file replaces by design logs no warning about its unused servers', async (t) => {
  // "given twice ...; used once" and the port-like reading were logged at warn level for servers the agent never asks.
  const files = {
    '/kd/stubDomains': '{"Consul.Local": ["127.0.0.7", "127.0.0.7:53"], "b.example": ["fd00::10:53"], "kept.example": ["127.0.0.9", "127.0.0.9"]}',
    '/kd/upstreamNameservers': '["127.0.0.1", "127.0.0.1:53"]',
    '/c.yaml': 'stubDomains: {b.example: ["127.0.0.11"]}\n',
  };
  const loaded = load(['--kube-dns-config-dir', '/kd', '--config', '/c.yaml', '--stub-domain', 'consul.local=127.0.0.10', '--upstream-nameservers', '127.0.0.2'], noEnv, files);
  t.same(loaded.config.stubDomains.map((d) => [d.zone, d.servers[0]?.host]), [['kept.example', '127.0.0.9'], ['b.example', '127.0.0.11'], ['consul.local', '127.0.0.10']], 'the flag and the file win');
  t.same(loaded.config.upstreamNameservers, [{ host: '127.0.0.2', port: 53 }]);
  t.match(loaded.warnings, [/^kube-dns ConfigMap stubDomains\.kept\.example: 127\.0\.0\.9:53 given twice/], 'only the zone still used is warned about');
  t.equal(loaded.warnings.length, 1);
  // Not replaced, each is still said, as before.
  const alone = load(['--kube-dns-config-dir', '/kd'], noEnv, files).warnings;
  t.match(alone, [/stubDomains\.Consul\.Local: 127\.0\.0\.7:53 given twice/, /stubDomains\.b\.example: "fd00::10:53": read as/, /stubDomains\.kept\.example/, /\/kd\/upstreamNameservers: 127\.0\.0\.1:53 given twice/]);
  t.equal(alone.length, 4);
});

t.test('a node name that is no DNS-1123 subdomain is refused where the pod watch would use it, naming the flag or $NODE_NAME', async (t) => {
  // It goes into the pod watch's fieldSelector spec.nodeName=NAME: anything else matched no pod (or another selector), silently.
  t.match(err(['--metrics-by-namespace', '--node-name', 'Node_A']), /^--node-name "Node_A": not a DNS-1123 subdomain/);
  t.match(err(['--metrics-by-namespace'], { NODE_NAME: 'node-a,spec.nodeName!=x' }), /^\$NODE_NAME "node-a,spec\.nodeName!=x": not a DNS-1123 subdomain/);
  t.match(err(['--metrics-by-namespace', '--config', '/c.yaml'], noEnv, { '/c.yaml': 'nodeName: "node a"\n' }), /^--node-name "node a": .*config file \/c\.yaml: nodeName/);
  for (const bad of ['-a', 'a-', 'a..b', '.a', 'a.', 'a.-b', 'a b', `${'a'.repeat(250)}.bcd`]) {
    t.match(err(['--metrics-by-namespace', '--node-name', bad]), /^--node-name "[^"]*": not a DNS-1123 subdomain/, `"${bad.slice(0, 20)}" refused`);
  }
  for (const good of ['a', 'node-1', 'ip-10-0-0-1.ec2.internal', '0', `${'a'.repeat(249)}.bcd`]) {
    t.equal(load(['--metrics-by-namespace', '--node-name', good]).config.nodeName, good, `"${good.slice(0, 20)}" taken`);
  }
  t.equal(load(['--metrics-by-namespace'], { NODE_NAME: 'node-b' }).config.nodeName, 'node-b');
  // Not used without --metrics-by-namespace: not checked either.
  t.equal(load(['--node-name', 'Node_A']).config.nodeName, 'Node_A');
});

t.test('an unbracketed IPv6 address whose last group could be a port is taken as the address, with one warning naming both readings', async (t) => {
  // "fd00::10:53" is a valid address, read as fd00::10:53 port 53; an operator who meant fd00::10 port 53 got a server that never answers, unwarned.
  const warningsOf = (argv: string[], files: Record<string, string> = {}): readonly string[] =>
    (load(argv, noEnv, files) as { warnings?: readonly string[] }).warnings ?? [];
  const one = warningsOf(['--upstream-nameservers', 'fd00::10:53']);
  t.equal(one.length, 1, 'one warning');
  t.match(one[0], /^--upstream-nameservers "fd00::10:53": read as \[fd00::10:53\]:53; .*\[fd00::10\]:53/);
  t.same(load(['--upstream-nameservers', 'fd00::10:53']).config.upstreamNameservers, [{ host: 'fd00::10:53', port: 53 }], 'and not refused');
  t.match(warningsOf(['--stub-domain', 'x.example=fd00::10:5353']), [/^--stub-domain: "fd00::10:5353": read as \[fd00::10:5353\]:53; .*\[fd00::10\]:5353/]);
  t.match(warningsOf(['--upstream-addr', 'fd00::10:53']), [/^--upstream-addr "fd00::10:53"/]);
  t.match(warningsOf(['--config', '/c.yaml'], { '/c.yaml': 'stubDomains: {x.example: ["fd00::10:53"]}\nupstreamNameservers: ["fd00::9:53"]\n' }), [
    /config file \/c\.yaml: stubDomains\.x\.example: "fd00::10:53"/,
    /^--upstream-nameservers "fd00::9:53".*\(set in config file \/c\.yaml: upstreamNameservers\)/,
  ]);
  t.match(warningsOf(['--kube-dns-config-dir', '/kd'], { '/kd/stubDomains': '{"x.example": ["fd00::10:53"]}' }), [/kube-dns ConfigMap stubDomains\.x\.example: "fd00::10:53"/]);
  // --localip carries no port, so its last group is never one: no warning.
  t.same(warningsOf(['--localip', 'fd00::10:53']), [], 'none for --localip');
  for (const plain of ['[fd00::10]:53', 'fd00::10', '::1', '[fd00::10:53]:53', '127.0.0.1:53', 'fe80::1%eth0']) {
    t.same(warningsOf(['--upstream-nameservers', plain, '--stub-domain', `x.example=${plain}`]), [], `none for ${plain}`);
  }
});
