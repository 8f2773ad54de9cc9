// The node interface (rtnetlink through koffi) and the firewall rules.
//
// Unit part (no privileges): the exact bytes of the dummy RTM_NEWLINK
// request, real kernel replies captured once into test/fixtures/rtnl-*.hex
// (see test/fixtures/capture-rtnl.ts), error mapping, the rule scheme, the
// order check and the backend detection against a fake runner.
//
// Namespace part (root, iproute2, iptables, nft; skipped otherwise): each
// test creates its own network namespace and deletes it in teardown. The
// netlink socket is opened inside the namespace (setns around socket()), and
// iptables/nft run under `ip netns exec`. The link is of kind `bridge`
// because these kernels have no dummy driver; it goes through the same code
// path. No packet leaves the namespaces.
import t, { type Test } from 'tap';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NodeInterface, InterfaceError, describeNetlinkError } from '../src/iface/node-interface.js';
import { MAX_DUMP_TRIES, type NetlinkIo, Rtnl, openRtnetlink } from '../src/iface/netlink.js';
import {
  IFA_F_NODAD,
  IFF_UP,
  NLMSG_ERROR,
  RTM_GETADDR,
  RTM_GETLINK,
  addrRequest,
  dumpRequest,
  newLinkRequest,
  parseAck,
  parseAddr,
  parseLink,
  splitMessages,
} from '../src/iface/rtnl-wire.js';
import { bytesToIp, canonicalIp, ipToBytes } from '../src/iface/ip-bytes.js';
import { newSetupCounters } from '../src/iface/setup-counters.js';
import { buildRules, diffIptables, iptablesApplyBatch, iptablesRemoveBatch, nftApplyScript, nftRule, normalizeSpec, parseSave } from '../src/iface/firewall-rules.js';
import { Firewall, type FirewallBackend } from '../src/iface/firewall.js';
import { detectFirewallBackend } from '../src/iface/firewall-detect.js';
import { type CommandResult, type CommandRunner, spawnRunner } from '../src/iface/run-command.js';
import { CHILD_ENV, Lines, stopChild, waitExit } from './helpers/netns-proc.js';
import { interceptionPart, interfacePart } from '../src/iface/node-setup.js';
import { type ProcReader, otherListenersOn } from '../src/iface/other-listeners.js';
import { procAddress } from '../src/sys/reuseport.js';
import { ManualClock } from '../src/clock.js';
import { createLogger, silentLogger } from '../src/log.js';
import { ConfigError, loadConfig } from '../src/config.js';

const FIXTURES = new URL('./fixtures/', import.meta.url);

/** The datagrams of one capture file. */
function fixture(name: string): Buffer[] {
  return readFileSync(new URL(name, FIXTURES), 'utf8')
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => Buffer.from(l, 'hex'));
}

/**
 * Replays captured datagrams, one capture per request in the order given,
 * with the sequence number rewritten to the request's (captures were taken
 * with other numbers). Records what was sent.
 */
function replay(script: readonly (string | Buffer[])[]): NetlinkIo & { sent: Buffer[] } {
  const queue = script.map((s) => (typeof s === 'string' ? fixture(s) : s));
  let pending: Buffer[] = [];
  const sent: Buffer[] = [];
  return {
    sent,
    send(msg) {
      sent.push(Buffer.from(msg));
      const seq = msg.readUInt32LE(8);
      pending = (queue.shift() ?? []).map((d) => {
        const copy = Buffer.from(d);
        for (let o = 0; o + 16 <= copy.length; o += (copy.readUInt32LE(o) + 3) & ~3) copy.writeUInt32LE(seq, o + 8);
        return copy;
      });
      return 0;
    },
    recv(buf) {
      const d = pending.shift();
      if (d === undefined) return -11; // EAGAIN: what SO_RCVTIMEO gives
      d.copy(buf);
      return d.length;
    },
    close() {},
  };
}

t.test('ip bytes: both families, canonical IPv6', async (t) => {
  t.equal(ipToBytes('169.254.20.10')?.toString('hex'), 'a9fe140a');
  t.equal(ipToBytes('fd00::a')?.toString('hex'), 'fd00000000000000000000000000000a');
  t.equal(ipToBytes('::ffff:1.2.3.4')?.toString('hex'), '00000000000000000000ffff01020304');
  t.equal(ipToBytes('nodelocaldns'), null);
  t.equal(canonicalIp('FD00:0:0:0:0:0:0:A'), 'fd00::a');
  t.equal(canonicalIp('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1', 'first of two equal zero runs');
  t.equal(bytesToIp(Buffer.alloc(16)), '::');
  t.equal(canonicalIp('1:2:3:4:5:6:7:8'), '1:2:3:4:5:6:7:8');
});

t.test('RTM_NEWLINK for the dummy link: exact bytes', async (t) => {
  const expected = [
    '44000000', // nlmsg_len 68
    '1000', // RTM_NEWLINK
    '0506', // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    '07000000', // seq 7
    '00000000', // pid 0: the kernel
    '00' + '00' + '0000' + '00000000' + '00000000' + '00000000', // ifinfomsg: AF_UNSPEC, no index, flags or change
    '1100' + '0300' + Buffer.from('nodelocaldns\0').toString('hex') + '000000', // IFLA_IFNAME, len 17, padded to 20
    '1000' + '1200', // IFLA_LINKINFO, len 16
    '0a00' + '0100' + Buffer.from('dummy\0').toString('hex') + '0000', // IFLA_INFO_KIND "dummy", len 10, padded
  ].join('');
  t.equal(newLinkRequest(7, 'nodelocaldns', 'dummy').toString('hex'), expected);
  // The kernel echoed the same header for the bridge request it acked (NETLINK_CAP_ACK).
  const ack = splitMessages(fixture('rtnl-newlink-ack.hex')[0]!)[0]!;
  t.equal(ack.body.subarray(4, 12).toString('hex'), '4400000010000506', 'same length, type and flags as the captured request');
});

t.test('RTM_NEWADDR: /32 for IPv4, /128 nodad for IPv6, IFA_LOCAL and IFA_ADDRESS', async (t) => {
  const v4 = addrRequest(3, 'add', 2, ipToBytes('169.254.20.10')!);
  t.equal(v4.toString('hex'), '28000000' + '1400' + '0506' + '03000000' + '00000000' + '02' + '20' + '00' + '00' + '02000000' + '0800' + '0200' + 'a9fe140a' + '0800' + '0100' + 'a9fe140a');
  const v6 = addrRequest(4, 'add', 2, ipToBytes('fd00::a')!);
  t.equal(v6.length, 16 + 8 + 20 + 20);
  t.equal(v6.readUInt8(16), 10, 'AF_INET6');
  t.equal(v6.readUInt8(17), 128);
  t.equal(v6.readUInt8(18), IFA_F_NODAD);
  const del = addrRequest(5, 'del', 2, ipToBytes('fd00::a')!);
  t.equal(del.readUInt16LE(4), 21, 'RTM_DELADDR');
  t.equal(del.readUInt16LE(6), 0x5, 'REQUEST | ACK, no CREATE/EXCL');
  t.equal(del.readUInt8(18), 0, 'no nodad on delete');
  t.equal(dumpRequest(6, RTM_GETLINK).toString('hex').slice(0, 16), '2000000012000103', 'GETLINK dump: REQUEST | ROOT | MATCH');
  t.equal(dumpRequest(6, RTM_GETADDR).length, 24, 'GETADDR dump carries an ifaddrmsg');
});

t.test('captured kernel replies parse', async (t) => {
  t.test('acks and errors', async (t) => {
    const one = (name: string) => {
      const msgs = splitMessages(fixture(name)[0]!);
      t.equal(msgs.length, 1, name);
      t.equal(msgs[0]!.type, NLMSG_ERROR, name);
      return parseAck(msgs[0]!);
    };
    t.same(one('rtnl-newlink-ack.hex'), { errno: 0, message: null });
    t.same(one('rtnl-newaddr-v4-ack.hex'), { errno: 0, message: null });
    t.same(one('rtnl-newaddr-v6-ack.hex'), { errno: 0, message: null });
    t.same(one('rtnl-newlink-dummy-eopnotsupp.hex'), { errno: 95, message: 'Unknown device type' });
    t.same(one('rtnl-newlink-eexist.hex'), { errno: 17, message: null });
    t.same(one('rtnl-newaddr-eexist.hex'), { errno: 17, message: 'ipv4: Address already assigned' });
    t.same(one('rtnl-newlink-eperm.hex'), { errno: 1, message: null });
  });

  t.test('link dump', async (t) => {
    const msgs = fixture('rtnl-getlink-dump.hex').flatMap(splitMessages);
    const links = msgs.map(parseLink).filter((l) => l !== null);
    t.same(links.map((l) => [l.name, l.kind]), [['lo', null], ['nodelocaldns', 'bridge']]);
    const ours = links.find((l) => l.name === 'nodelocaldns')!;
    t.ok(ours.flags & IFF_UP, 'set up before the dump');
    t.equal(msgs.at(-1)?.type, 3, 'ends with NLMSG_DONE');
  });

  t.test('address dump', async (t) => {
    const addrs = fixture('rtnl-getaddr-dump.hex').flatMap(splitMessages).map(parseAddr).filter((a) => a !== null);
    const byAddr = new Map(addrs.map((a) => [a.address, a]));
    t.equal(byAddr.get('169.254.20.10')?.prefixLen, 32);
    t.equal(byAddr.get('169.254.20.10')?.family, 2);
    t.equal(byAddr.get('fd00::a')?.prefixLen, 128);
    t.ok((byAddr.get('fd00::a')?.flags ?? 0) & IFA_F_NODAD, 'nodad kept');
    t.ok(addrs.some((a) => a.address.startsWith('fe80::')), 'the kernel’s own link-local address is listed too');
    t.equal(new Set(addrs.map((a) => a.index)).size, 1, 'all on one link');
  });

  t.test('Rtnl collects a multi-datagram dump up to NLMSG_DONE', async (t) => {
    const rtnl = new Rtnl(replay(['rtnl-getlink-dump.hex']));
    const r = rtnl.request(dumpRequest(rtnl.nextSeq(), RTM_GETLINK));
    t.ok(r.ok);
    if (r.ok) t.equal(r.messages.length, 2);
    const silent = new Rtnl(replay([]));
    const lost = silent.request(dumpRequest(silent.nextSeq(), RTM_GETLINK));
    t.match(lost, { ok: false, errno: 11, message: /no reply within/ }, 'a reply that never comes is an error value after SO_RCVTIMEO');
  });
});

t.test('NodeInterface against replayed kernel replies', async (t) => {
  t.test('no dummy driver: says modprobe dummy', async (t) => {
    const counters = newSetupCounters();
    // "nodelocal1" is not in the captured dump, so ensure() creates it; the kernel says EOPNOTSUPP.
    const io = replay(['rtnl-getlink-dump.hex', 'rtnl-newlink-dummy-eopnotsupp.hex']);
    const ni = new NodeInterface({ name: 'nodelocal1', addresses: ['169.254.20.10'], counters, open: () => io });
    t.throws(() => ni.ensure(), { name: 'InterfaceError', message: /no dummy driver \(modprobe dummy.*\(kernel: Unknown device type\)/ });
    t.equal(counters.get('interfaceAdd'), 1);
    t.equal(io.sent[1]!.toString('hex'), newLinkRequest(io.sent[1]!.readUInt32LE(8), 'nodelocal1', 'dummy').toString('hex'));
  });

  t.test('no CAP_NET_ADMIN: says so', async (t) => {
    const io = replay(['rtnl-getlink-dump.hex', 'rtnl-newlink-eperm.hex']);
    const ni = new NodeInterface({ name: 'nodelocal1', addresses: ['169.254.20.10'], counters: newSetupCounters(), open: () => io });
    t.throws(() => ni.ensure(), { message: /needs CAP_NET_ADMIN/ });
  });

  t.test('an existing link and addresses are reused, nothing is sent but dumps', async (t) => {
    const io = replay(['rtnl-getlink-dump.hex', 'rtnl-getaddr-dump.hex']);
    const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10', 'FD00::A'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
    t.same(ni.ensure(), { linkIndex: 2, created: false, kind: 'bridge', setUp: false, addressesAdded: [], addressesPresent: ['169.254.20.10', 'fd00::a'] });
    t.equal(io.sent.length, 2);
  });

  t.test('a failed repair is a value, counted', async (t) => {
    const counters = newSetupCounters();
    const io = replay(['rtnl-getlink-dump.hex', 'rtnl-newlink-eperm.hex']);
    const ni = new NodeInterface({ name: 'nodelocal1', addresses: ['169.254.20.10'], counters, open: () => io });
    t.match(ni.check(), { repaired: [], error: /needs CAP_NET_ADMIN/ });
    t.equal(counters.get('interfaceCheck'), 1);
    const unopenable = new NodeInterface({ name: 'nodelocal1', addresses: [], counters, open: () => { throw new Error('no netlink'); } });
    t.match(unopenable.check(), { error: /open netlink socket/ });
    t.match(unopenable.teardown(), { removed: [], errors: [/open netlink socket/] });
  });

  t.test('error texts', async (t) => {
    t.match(describeNetlinkError('create link x of kind bridge', 95, null, 'bridge'), /does not support links of kind bridge/);
    t.match(describeNetlinkError('add address', 1, null, 'dummy'), /CAP_NET_ADMIN/);
    t.match(describeNetlinkError('add address', 13, null, 'dummy'), /disable_ipv6/);
    t.match(describeNetlinkError('add address', 22, 'bad', 'dummy'), /errno 22 \(kernel: bad\)/);
    // A link deleted between the check's dump and its next request (a CNI restart, an operator): say so, not "errno 19".
    t.match(describeNetlinkError('add address 169.254.20.10 to nodelocaldns', 19, null, 'dummy'), /^add address 169\.254\.20\.10 to nodelocaldns: the link is gone \(deleted meanwhile\)/);
    t.throws(() => new NodeInterface({ name: 'a-name-too-long-for-linux', addresses: [], counters: newSetupCounters() }), InterfaceError);
    t.throws(() => new NodeInterface({ name: 'x', addresses: ['not-an-ip'], counters: newSetupCounters() }), /not an IP address/);
  });
});

// ---- firewall rules, pure ------------------------------------------------------

const RULES = { name: 'nodelocaldns', addresses: ['169.254.20.10', 'fd00::a'], port: 53, healthPort: 8080 };

t.test('rule scheme: node-cache’s rules per address', async (t) => {
  const rules = buildRules(RULES);
  t.equal(rules.length, 2 * 12, '2 PREROUTING + 6 raw OUTPUT + 2 INPUT + 2 OUTPUT per address');
  t.equal(rules.filter((r) => r.family === 6).length, 12);
  const batch = iptablesApplyBatch('nodelocaldns', 'raw', new Map(), rules.filter((r) => r.family === 4));
  t.match(batch, /^\*raw\n:NODELOCALDNS-PREROUTING - \[0:0\]\n:NODELOCALDNS-OUTPUT - \[0:0\]\n/);
  t.match(batch, /-I PREROUTING 1 -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING\n/);
  t.match(batch, /-A NODELOCALDNS-PREROUTING -d 169.254.20.10\/32 -p udp -m udp --dport 53 -m socket -m comment --comment nodelocaldns -j NOTRACK\n/, 'pods -> us: only while a socket of ours is bound there (fail open)');
  t.match(batch, /-A NODELOCALDNS-OUTPUT -s 169.254.20.10\/32 -p tcp -m tcp --sport 8080 -m comment --comment nodelocaldns -j NOTRACK\n/);
  t.notMatch(batch, /-D /, 'nothing to delete on a clean table');
  t.match(batch, /COMMIT\n$/);
  const nft = nftApplyScript('nodelocaldns', rules);
  t.match(nft, /^table inet nodelocaldns\ndelete table inet nodelocaldns\ntable inet nodelocaldns \{/);
  t.match(nft, /type filter hook prerouting priority -300;/);
  t.match(nft, /ip6 daddr fd00::a udp dport 53 socket wildcard 0 notrack comment "nodelocaldns"/);
  t.match(nft, /ip6 daddr fd00::a tcp dport 53 socket wildcard 1 return comment "nodelocaldns"\n\t\tip6 daddr fd00::a tcp dport 53 socket transparent 0 notrack /, 'TCP: also a half-open or TIME_WAIT socket');
  t.match(nft, /ip6 daddr fd00::a udp dport 53 notrack comment "nodelocaldns"/, 'hostNetwork clients -> us (raw OUTPUT): unconditional, no socket match there');
  t.notMatch(nft, /saddr[^\n]*socket/, 'our replies: unconditional');
  t.notMatch(nft, /type nat/, 'no nat chain without a fail-open target');
  t.notMatch(batch, /socket[^\n]*-j ACCEPT|OUTPUT[^\n]*-m socket/, 'socket match in raw PREROUTING only');
  t.match(nft, /ip saddr 169.254.20.10 tcp sport 53 accept comment "nodelocaldns"/);
  t.same(buildRules({ ...RULES, healthPort: null }).length, 2 * 10);
});

t.test('fail-open DNAT (IPVS mode): link-local -> the ClusterIP, only in nat PREROUTING', async (t) => {
  const opts = { ...RULES, addresses: ['169.254.20.10', '10.96.0.10', 'fd00::a'], failOpenTo: { host: '10.96.0.10', port: 53 } };
  const rules = buildRules(opts);
  const nat = rules.filter((r) => r.table === 'nat');
  t.same(nat.map((r) => [r.addr, r.proto, r.to]), [['169.254.20.10', 'udp', '10.96.0.10:53'], ['169.254.20.10', 'tcp', '10.96.0.10:53']], 'not the target itself, not across families');
  const batch = iptablesApplyBatch('nodelocaldns', 'nat', new Map(), rules.filter((r) => r.family === 4));
  t.match(batch, /^\*nat\n:NODELOCALDNS-PREROUTING - \[0:0\]\n-I PREROUTING 1 -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING\n/);
  t.match(batch, /-A NODELOCALDNS-PREROUTING -d 169.254.20.10\/32 -p tcp -m tcp --dport 53 -m comment --comment nodelocaldns -j DNAT --to-destination 10.96.0.10:53\n/);
  t.notMatch(batch, /OUTPUT/, 'nat OUTPUT untouched: hostNetwork traffic is NOTRACKed in raw OUTPUT whatever happens');
  const nft = nftApplyScript('nodelocaldns', rules);
  t.match(nft, /chain nat-prerouting \{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tip daddr 169.254.20.10 udp dport 53 dnat ip to 10.96.0.10:53 comment "nodelocaldns"\n/);
  const v6 = buildRules({ ...RULES, failOpenTo: { host: 'fd00::10', port: 53 } }).filter((r) => r.table === 'nat');
  t.same(v6.map((r) => [r.addr, r.to]), [['fd00::a', '[fd00::10]:53'], ['fd00::a', '[fd00::10]:53']], 'IPv6 target: IPv6 addresses only, bracketed');
  t.match(nftRule('nodelocaldns', v6[0]!), /^ip6 daddr fd00::a udp dport 53 dnat ip6 to \[fd00::10\]:53 /);
  t.throws(() => buildRules({ ...RULES, failOpenTo: { host: 'kube-dns', port: 53 } }), /fail-open target "kube-dns" is not an IP address/);
  t.same(normalizeSpec('-d 169.254.20.10/32 -p udp -m udp --dport 53 -m socket -m comment --comment "nodelocaldns" -j CT --notrack'),
    '-d 169.254.20.10 -p udp --dport 53 -m socket -m comment --comment nodelocaldns -j NOTRACK');
});

t.test('order check: a rule above our jump is a misorder (sigs/node-local-dns#13)', async (t) => {
  const want = buildRules(RULES).filter((r) => r.family === 4);
  const good = parseSave(iptablesApplyBatch('nodelocaldns', 'raw', new Map(), want).replace(/^-I (\w+) 1 /gm, '-A $1 '), 'raw');
  t.same(diffIptables('nodelocaldns', 'raw', good, want), [], 'the batch as written is what we want');
  const hostile = new Map(good);
  hostile.set('PREROUTING', ['! -p 253 -j ACCEPT', ...(good.get('PREROUTING') ?? [])]);
  t.same(diffIptables('nodelocaldns', 'raw', hostile, want), [
    'raw PREROUTING: jump to NODELOCALDNS-PREROUTING is rule 2, below "-A PREROUTING ! -p 253 -j ACCEPT"',
  ]);
  const repair = iptablesApplyBatch('nodelocaldns', 'raw', hostile, want);
  t.match(repair, /-D PREROUTING -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING\n-I PREROUTING 1 /, 'old jump deleted by its exact spec, new one first');
  t.notMatch(repair, /253/, 'the other rule is left alone');
  const edited = new Map(good);
  edited.set('NODELOCALDNS-PREROUTING', (good.get('NODELOCALDNS-PREROUTING') ?? []).slice(1));
  t.match(diffIptables('nodelocaldns', 'raw', edited, want), [/NODELOCALDNS-PREROUTING: 1 rules, expected 2 \(rule 1/]);
  t.match(diffIptables('nodelocaldns', 'filter', new Map(), want), [/INPUT: no jump/, /chain missing/, /OUTPUT: no jump/, /chain missing/]);
  t.equal(iptablesRemoveBatch('nodelocaldns', 'raw', new Map()), null, 'nothing of ours, nothing to remove');
  t.equal(
    normalizeSpec('-d 169.254.20.10/32 -p udp -m udp --dport 53 -m comment --comment "nodelocaldns" -j CT --notrack'),
    normalizeSpec('-d 169.254.20.10 -p udp --dport 53 -m comment --comment nodelocaldns -j NOTRACK'),
    'spellings of one rule across iptables versions compare equal',
  );
});

function fakeRunner(outputs: Readonly<Record<string, Partial<CommandResult>>>): CommandRunner {
  return async (cmd, args) => {
    const o = outputs[[cmd, ...args].join(' ')] ?? outputs[cmd] ?? { status: 1, error: 'ENOENT' };
    return { status: o.status ?? 0, stdout: o.stdout ?? '', stderr: o.stderr ?? '', error: o.error ?? null };
  };
}

t.test('backend detection (fake commands)', async (t) => {
  const kubeProxyNft = await detectFirewallBackend(fakeRunner({ 'nft list tables': { stdout: 'table inet filter\ntable ip kube-proxy\n' } }));
  t.same(kubeProxyNft.backend, { kind: 'nftables' });
  t.match(kubeProxyNft.reason, /kube-proxy runs in nftables mode/);
  const hint = ':KUBE-IPTABLES-HINT - [0:0]\n';
  const nftMode = await detectFirewallBackend(fakeRunner({ 'nft list tables': { stdout: '' }, 'iptables-nft-save -t mangle': { stdout: `*mangle\n${hint}COMMIT\n` }, 'iptables-legacy-save': {} }));
  t.same(nftMode.backend, { kind: 'iptables', mode: 'nft' });
  const legacy = await detectFirewallBackend(fakeRunner({ 'iptables-nft-save -t mangle': {}, 'ip6tables-nft-save -t mangle': {}, 'iptables-legacy-save': {}, 'ip6tables-legacy-save': { stdout: `*mangle\n:KUBE-KUBELET-CANARY - [0:0]\n` } }));
  t.same(legacy.backend, { kind: 'iptables', mode: 'legacy' });
  t.match(legacy.reason, /KUBE-KUBELET-CANARY.*ip6tables-legacy-save/);
  const rules = Array.from({ length: 12 }, () => '-A INPUT -j ACCEPT').join('\n');
  const moreLegacy = await detectFirewallBackend(fakeRunner({ 'iptables-nft-save -t mangle': {}, 'iptables-nft-save': {}, 'iptables-legacy-save': { stdout: rules } }));
  t.same(moreLegacy.backend, { kind: 'iptables', mode: 'legacy' });
  const nothing = await detectFirewallBackend(fakeRunner({ 'iptables-nft-save -t mangle': {}, 'iptables-nft-save': {}, 'iptables-legacy-save': {} }));
  t.same(nothing.backend, { kind: 'iptables', mode: 'nft' }, 'no evidence: nft, like iptables-wrappers');
  const onlyNft = await detectFirewallBackend(fakeRunner({ 'nft list tables': {} }));
  t.same(onlyNft.backend, { kind: 'nftables' });
});

t.test('firewall counts a held xtables lock apart', async (t) => {
  const counters = newSetupCounters();
  const locked = fakeRunner({
    'iptables-legacy-save -t raw': {},
    'iptables-legacy-save -t filter': {},
    'iptables-legacy-save -t nat': {},
    'iptables-legacy-restore': { status: 4, stderr: 'Another app is currently holding the xtables lock. Stopped waiting after 5s.' },
  });
  const fw = new Firewall({ ...RULES, addresses: ['169.254.20.10'], backend: { kind: 'iptables', mode: 'legacy' }, run: locked, counters });
  await t.rejects(fw.apply(), { name: 'FirewallError', message: /holding the xtables lock/ });
  const c = await fw.check();
  t.match(c.error, /xtables lock/);
  t.equal(counters.get('iptablesLock'), 2);
  t.equal(counters.get('iptables'), 0, 'ip6tables missing does not count: no IPv6 address to serve');
  const v6 = new Firewall({ ...RULES, addresses: ['fd00::a'], backend: { kind: 'iptables', mode: 'legacy' }, run: locked, counters });
  t.match((await v6.check()).error, /ip6tables-legacy-save -t raw: ENOENT/);
  t.equal(counters.get('iptables'), 1);
});

t.test('spawnRunner: a missing command or a hung one is an error value', async (t) => {
  t.match(await spawnRunner()('no-such-command-h-iface', ['x'], 'in'), { status: null, error: /ENOENT/ });
  t.match(await spawnRunner([], 200)('sleep', ['30']), { status: null, error: /killed by SIGKILL/ });
  t.match(await spawnRunner()('sh', ['-c', 'cat; echo err >&2; exit 3'], 'piped'), { status: 3, stdout: 'piped', stderr: 'err\n', error: null });
});

// ---- in network namespaces (root) ----------------------------------------------

function sh(cmd: string, args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 15_000, killSignal: 'SIGKILL' });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function namespaceSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  if (sh('ip', ['-V']).status !== 0) return 'needs iproute2';
  return false;
}

/** Namespaces left by an earlier run of this file that died before its teardown (its pid is gone). */
function cleanLeftovers(): void {
  for (const line of sh('ip', ['netns', 'list']).stdout.split('\n')) {
    const m = /^(h-ifc-(\d+)-\d+)\b/.exec(line.trim());
    if (m === null || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch {
      sh('ip', ['netns', 'del', m[1]!]); // that run is gone; a live one (another engineer's) is left alone
    }
  }
}
if (namespaceSkip() === false) cleanLeftovers();

let nsCounter = 0;
/** A fresh namespace, deleted at the end of the (sub)test. */
function netns(t: Test): string {
  const name = `h-ifc-${process.pid}-${nsCounter++}`;
  const r = sh('ip', ['netns', 'add', name]);
  if (r.status !== 0) throw new Error(`ip netns add ${name}: ${r.stderr}`);
  t.teardown(() => {
    sh('ip', ['netns', 'del', name]);
  });
  return name;
}

function inNs(ns: string, cmd: string, ...args: string[]) {
  return sh('ip', ['netns', 'exec', ns, cmd, ...args]);
}

t.test('NodeInterface in a network namespace', { skip: namespaceSkip() }, async (t) => {
  const ns = netns(t);
  const counters = newSetupCounters();
  const open = () => openRtnetlink({ netnsPath: `/var/run/netns/${ns}` });
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10', 'fd00::a', '10.96.0.10'], kind: 'bridge', counters, open });
  t.teardown(() => ni.close());

  const dummyProbe = inNs(ns, 'ip', 'link', 'add', 'probe0', 'type', 'dummy');
  if (dummyProbe.status !== 0) {
    const dummy = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], counters, open });
    t.throws(() => dummy.ensure(), { message: /the kernel has no dummy driver \(modprobe dummy/ }, 'the real kernel error, mapped');
    dummy.close();
  } else {
    inNs(ns, 'ip', 'link', 'del', 'probe0');
  }

  const first = ni.ensure();
  t.match(first, { created: true, kind: 'bridge', setUp: true, addressesAdded: ['169.254.20.10', 'fd00::a', '10.96.0.10'] });
  const shown = inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns').stdout;
  t.match(shown, /inet 169\.254\.20\.10\/32 /);
  t.match(shown, /inet 10\.96\.0\.10\/32 /);
  t.match(shown, /inet6 fd00::a\/128 scope global nodad/);
  t.notMatch(shown.split('\n').find((l) => l.includes('fd00::a')) ?? '', /tentative/, 'usable at once');
  t.match(inNs(ns, 'ip', '-o', 'link', 'show', 'nodelocaldns').stdout, /<[^>]*\bUP\b/);

  t.match(ni.ensure(), { created: false, setUp: false, addressesAdded: [], addressesPresent: ['169.254.20.10', 'fd00::a', '10.96.0.10'] }, 'idempotent');
  t.same(ni.check(), { repaired: [], error: null });

  inNs(ns, 'ip', 'addr', 'del', 'fd00::a/128', 'dev', 'nodelocaldns');
  inNs(ns, 'ip', 'link', 'set', 'nodelocaldns', 'down');
  t.same(ni.check(), { repaired: ['link nodelocaldns up', 'address fd00::a'], error: null });
  t.match(inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns').stdout, /fd00::a\/128/);

  inNs(ns, 'ip', 'link', 'del', 'nodelocaldns');
  t.same(ni.check().repaired, ['link nodelocaldns', 'link nodelocaldns up', 'address 169.254.20.10', 'address fd00::a', 'address 10.96.0.10']);
  t.equal(counters.get('interfaceRepairs'), 7);
  t.equal(counters.get('interfaceCheck'), 0);

  const down = ni.teardown();
  t.same(down, { removed: ['address 169.254.20.10', 'address fd00::a', 'address 10.96.0.10', 'link nodelocaldns'], errors: [] });
  t.not(inNs(ns, 'ip', 'link', 'show', 'nodelocaldns').status, 0, 'link gone');

  // A link of that name but another kind was not ours: its addresses go, the link stays.
  inNs(ns, 'ip', 'link', 'add', 'nodelocaldns', 'type', 'bridge');
  const other = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], kind: 'veth', counters, open });
  t.match(other.ensure(), { created: false, kind: 'bridge', addressesAdded: ['169.254.20.10'] });
  t.same(other.teardown(), { removed: ['address 169.254.20.10'], errors: [] });
  t.equal(inNs(ns, 'ip', 'link', 'show', 'nodelocaldns').status, 0, 'the foreign link stays');
});

const BACKENDS: readonly { label: string; backend: FirewallBackend; need: string }[] = [
  { label: 'iptables-legacy', backend: { kind: 'iptables', mode: 'legacy' }, need: 'iptables-legacy-restore' },
  { label: 'iptables-nft', backend: { kind: 'iptables', mode: 'nft' }, need: 'iptables-nft-restore' },
  { label: 'nftables', backend: { kind: 'nftables' }, need: 'nft' },
];

function hasCommand(cmd: string): boolean {
  return sh('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

for (const { label, backend, need } of BACKENDS) {
  t.test(`firewall in a network namespace: ${label}, IPv4 + IPv6`, { skip: namespaceSkip() || (hasCommand(need) ? false : `${need} not installed`) }, async (t) => {
    const ns = netns(t);
    const run = spawnRunner(['ip', 'netns', 'exec', ns]);
    const counters = newSetupCounters();
    // IPVS-mode fail open: 169.254.20.10 is DNATed to the kube-dns ClusterIP while no socket of ours is bound.
    const fw = new Firewall({ ...RULES, failOpenTo: { host: '10.96.0.10', port: 53 }, backend, run, counters });
    await fw.apply();
    t.same(await fw.check(), { repaired: [], error: null }, 'freshly applied: nothing to repair');

    if (backend.kind === 'iptables') {
      const ipt = `iptables-${backend.mode}`;
      const ip6t = `ip6tables-${backend.mode}`;
      const raw4 = inNs(ns, ipt, '-t', 'raw', '-S').stdout;
      t.match(raw4, /^-A PREROUTING -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING$/m);
      t.match(raw4, /^-A NODELOCALDNS-PREROUTING -d 169\.254\.20\.10\/32 -p udp -m udp --dport 53 -m socket -m comment --comment nodelocaldns -j (NOTRACK|CT --notrack)$/m);
      t.match(raw4, /^-A NODELOCALDNS-OUTPUT -d 169\.254\.20\.10\/32 -p udp -m udp --dport 53 -m comment --comment nodelocaldns -j (NOTRACK|CT --notrack)$/m, 'raw OUTPUT: no socket match (the kernel has none there)');
      const nat4 = inNs(ns, ipt, '-t', 'nat', '-S').stdout;
      t.match(nat4, /^-A PREROUTING -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING$/m);
      t.match(nat4, /^-A NODELOCALDNS-PREROUTING -d 169\.254\.20\.10\/32 -p tcp -m tcp --dport 53 -m comment --comment nodelocaldns -j DNAT --to-destination 10\.96\.0\.10:53$/m);
      t.notMatch(inNs(ns, ip6t, '-t', 'nat', '-S').stdout, /NODELOCALDNS/, 'an IPv4 target: no IPv6 DNAT');
      t.match(raw4, /^-A NODELOCALDNS-OUTPUT -s 169\.254\.20\.10\/32 -p tcp -m tcp --sport 8080 .*-j (NOTRACK|CT --notrack)$/m);
      t.notMatch(raw4, /fd00::a/, 'IPv6 rules stay out of iptables');
      const filter6 = inNs(ns, ip6t, '-t', 'filter', '-S').stdout;
      t.match(filter6, /^-A INPUT -m comment --comment nodelocaldns -j NODELOCALDNS-INPUT$/m);
      t.match(filter6, /^-A NODELOCALDNS-INPUT -d fd00::a\/128 -p tcp -m tcp --dport 53 -m comment --comment nodelocaldns -j ACCEPT$/m);

      // The node-local-dns#13 rule, and a blanket ACCEPT on IPv6 INPUT, above our jumps.
      inNs(ns, ipt, '-t', 'raw', '-I', 'PREROUTING', '1', '!', '-p', '253', '-j', 'ACCEPT');
      inNs(ns, ip6t, '-t', 'filter', '-I', 'INPUT', '1', '-j', 'ACCEPT');
      inNs(ns, ip6t, '-t', 'raw', '-D', 'NODELOCALDNS-OUTPUT', '1');
      const c = await fw.check();
      t.equal(c.error, null);
      t.match(c.repaired, [
        /^IPv4 raw PREROUTING: jump to NODELOCALDNS-PREROUTING is rule 2, below "-A PREROUTING ! -p 253 -j ACCEPT"$/,
        /^IPv6 raw NODELOCALDNS-OUTPUT: 5 rules, expected 6/,
        /^IPv6 filter INPUT: jump to NODELOCALDNS-INPUT is rule 2/,
      ]);
      t.equal(c.repaired.length, 3);
      const pre = inNs(ns, ipt, '-t', 'raw', '-S', 'PREROUTING').stdout.split('\n').filter((l) => l.startsWith('-A'));
      t.same(pre, ['-A PREROUTING -m comment --comment nodelocaldns -j NODELOCALDNS-PREROUTING', '-A PREROUTING ! -p 253 -j ACCEPT'], 'our jump first again, theirs kept');
      t.equal(inNs(ns, ip6t, '-t', 'raw', '-S', 'NODELOCALDNS-OUTPUT').stdout.split('\n').filter((l) => l.startsWith('-A')).length, 6);
      t.same(await fw.check(), { repaired: [], error: null }, 'repaired for good');
      t.equal(counters.get('firewallRepairs'), 3);

      // A DNAT edited away is put back; a run without a fail-open target clears an earlier run's at startup.
      inNs(ns, ipt, '-t', 'nat', '-F', 'NODELOCALDNS-PREROUTING');
      t.match((await fw.check()).repaired, [/^IPv4 nat NODELOCALDNS-PREROUTING: 0 rules, expected 2/]);
      const plain = new Firewall({ ...RULES, backend, run, counters });
      await plain.apply();
      t.notMatch(inNs(ns, `${ipt}-save`, '-t', 'nat').stdout, /NODELOCALDNS/, 'stale DNAT removed at startup');
      t.same(await plain.check(), { repaired: [], error: null });
      await fw.apply();

      // The config drops the IPv6 address: a check by the new set clears the IPv6 rules, keeps IPv4.
      const v4only = new Firewall({ ...RULES, addresses: ['169.254.20.10'], backend, run, counters });
      t.same(await v4only.check(), { repaired: ['IPv6: removed rules for addresses no longer served'], error: null });
      t.notMatch(inNs(ns, `${ip6t}-save`).stdout, /NODELOCALDNS/);
      t.match(inNs(ns, `${ipt}-save`, '-t', 'raw').stdout, /NODELOCALDNS-PREROUTING/);

      t.equal(await fw.remove(), null);
      for (const cmd of [`${ipt}-save`, `${ip6t}-save`]) {
        const all = inNs(ns, cmd).stdout;
        t.notMatch(all, /nodelocaldns|NODELOCALDNS/i, `${cmd}: nothing of ours left`);
      }
      t.match(inNs(ns, ipt, '-t', 'raw', '-S').stdout, /! -p 253 -j ACCEPT/, 'not ours: left alone');
      t.equal(await fw.remove(), null, 'remove twice is fine');
    } else {
      const listed = inNs(ns, 'nft', 'list', 'table', 'inet', 'nodelocaldns').stdout;
      t.match(listed, /chain raw-prerouting \{\s+type filter hook prerouting priority raw; policy accept;\s+ip daddr 169\.254\.20\.10 udp dport 53 socket wildcard 0 notrack comment "nodelocaldns"/);
      t.match(listed, /chain nat-prerouting \{\s+type nat hook prerouting priority dstnat; policy accept;\s+ip daddr 169\.254\.20\.10 udp dport 53 dnat ip to 10\.96\.0\.10:53 comment "nodelocaldns"/);
      t.match(listed, /ip6 daddr fd00::a tcp dport 53 notrack/);
      t.match(listed, /chain filter-input \{\s+type filter hook input priority filter - 10;/);
      t.match(listed, /ip6 saddr fd00::a udp sport 53 accept/);

      inNs(ns, 'nft', 'insert', 'rule', 'inet', 'nodelocaldns', 'raw-prerouting', 'meta', 'l4proto', '!=', '253', 'accept');
      const c = await fw.check();
      t.equal(c.error, null);
      t.match(c.repaired, [/^nftables: table inet nodelocaldns changed \(line 4: have "meta l4proto != 253 accept"/]);
      inNs(ns, 'nft', 'flush', 'chain', 'inet', 'nodelocaldns', 'nat-prerouting');
      t.match((await fw.check()).repaired, [/^nftables: table inet nodelocaldns changed/], 'the DNAT flushed away: rewritten');
      t.match(inNs(ns, 'nft', 'list', 'chain', 'inet', 'nodelocaldns', 'nat-prerouting').stdout, /dnat ip to 10\.96\.0\.10:53/);
      t.notMatch(inNs(ns, 'nft', 'list', 'table', 'inet', 'nodelocaldns').stdout, /253/, 'the inserted rule is gone: the table is ours');
      inNs(ns, 'nft', 'delete', 'table', 'inet', 'nodelocaldns');
      t.same((await fw.check()).repaired, ['nftables: table inet nodelocaldns missing']);
      t.same(await fw.check(), { repaired: [], error: null });
      const another = new Firewall({ ...RULES, failOpenTo: { host: '10.96.0.10', port: 53 }, backend, run, counters });
      t.same((await another.check()).repaired, ['nftables: table inet nodelocaldns not written by this process'], 'a new process rewrites once, then has its baseline');
      t.same(await fw.check(), { repaired: [], error: null }, 'same content rewritten: the first instance still agrees');

      inNs(ns, 'nft', 'add', 'table', 'inet', 'other');
      t.equal(await fw.remove(), null);
      const ruleset = inNs(ns, 'nft', 'list', 'ruleset').stdout;
      t.notMatch(ruleset, /nodelocaldns/, 'nothing of ours left');
      t.match(ruleset, /table inet other/, 'not ours: left alone');
    }
  });
}

t.test('backend detection in a network namespace', { skip: namespaceSkip() || (hasCommand('iptables-legacy') && hasCommand('nft') ? false : 'needs iptables-legacy, iptables-nft and nft') }, async (t) => {
  const cases: readonly [string, readonly string[][], FirewallBackend][] = [
    ['kubelet chain via iptables-legacy', [['iptables-legacy', '-t', 'mangle', '-N', 'KUBE-IPTABLES-HINT']], { kind: 'iptables', mode: 'legacy' }],
    ['kubelet chain via iptables-nft', [['iptables-nft', '-t', 'mangle', '-N', 'KUBE-KUBELET-CANARY']], { kind: 'iptables', mode: 'nft' }],
    ['kube-proxy nftables table', [['nft', 'add', 'table', 'ip', 'kube-proxy']], { kind: 'nftables' }],
  ];
  for (const [label, setup, backend] of cases) {
    const ns = netns(t);
    for (const argv of setup) inNs(ns, argv[0]!, ...argv.slice(1));
    const choice = await detectFirewallBackend(spawnRunner(['ip', 'netns', 'exec', ns]));
    t.same(choice.backend, backend, `${label}: ${choice.reason}`);
  }
});

// ---- review: defects, each shown by a test that fails until it is fixed ---------

let agentDir: string | null = null;

/**
 * The built agent (dist/, which the test command builds first, as clients.test.ts
 * uses it) and a resolv.conf of its own, for tests that need whole agent processes.
 */
function agentFiles(): { main: string; resolv: string } {
  const root = fileURLToPath(new URL('..', import.meta.url));
  if (agentDir === null) {
    const dir = mkdtempSync(join(tmpdir(), 'nldns-iface-review-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'resolv.conf'), 'nameserver 127.0.0.1\n');
    agentDir = dir;
  }
  return { main: join(root, 'dist/src/main.js'), resolv: join(agentDir, 'resolv.conf') };
}

/** One agent process inside `ns` with `args` (killed at the end of the test). */
function spawnAgentIn(t: Test, ns: string, args: readonly string[]): { proc: ChildProcess; log: Lines } {
  const files = agentFiles();
  // env -i: tap puts its loader into every child's NODE_OPTIONS; setpriv: the agent dies with this process.
  const pdeath = hasCommand('setpriv') ? ['setpriv', '--pdeathsig', 'KILL', '--'] : [];
  const clean = ['env', '-i', ...Object.entries(CHILD_ENV).map(([k, v]) => `${k}=${v ?? ''}`)];
  const argv = [process.execPath, files.main, '--resolv-conf', files.resolv, '--no-kube', ...args];
  const proc = spawn('ip', ['netns', 'exec', ns, ...pdeath, ...clean, ...argv], { env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.on('error', () => {});
  const log = new Lines(proc.stderr!);
  new Lines(proc.stdout!);
  t.teardown(async () => {
    await stopChild(proc, 'SIGKILL', 2000);
    if (!t.passing()) t.comment(`agent log:\n${log.all.join('\n')}`);
  });
  return { proc, log };
}

/** spawnAgentIn, resolved once the agent logs "started". */
async function startAgentIn(t: Test, ns: string, args: readonly string[]): Promise<{ proc: ChildProcess; log: Lines }> {
  const agent = spawnAgentIn(t, ns, args);
  const started = await agent.log.next((l) => l.includes('"msg":"started"'), 90_000);
  if (started === null) throw new Error(`agent did not start (exit ${agent.proc.exitCode ?? agent.proc.signalCode ?? 'none'}):\n${agent.log.all.join('\n')}`);
  return agent;
}

t.test('surge upgrade: the old agent leaves the link and addresses to the new one beside it', { skip: namespaceSkip(), timeout: 300_000 }, async (t) => {
  const ns = netns(t);
  inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
  const args = ['--listen', '169.254.20.10:53', '--interface-kind', 'bridge', '--firewall', 'none', '--health-port', '0', '--shutdown-grace', '300ms', '--log-level', 'info'];
  const old = await startAgentIn(t, ns, args);
  t.match(inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns').stdout, /inet 169\.254\.20\.10\/32 /, 'the first agent set up the link');
  const next = await startAgentIn(t, ns, args);
  await stopChild(old.proc, 'SIGTERM', 30_000);
  t.equal(old.proc.exitCode, 0, 'the old agent stopped cleanly');
  // The new agent is bound to 169.254.20.10 and serving: without the address on a local link, pods' queries are routed away.
  t.match(inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns').stdout, /inet 169\.254\.20\.10\/32 /, 'the link and address the new agent serves on are still there');
  await stopChild(next.proc, 'SIGTERM', 30_000);
  t.not(inNs(ns, 'ip', 'link', 'show', 'nodelocaldns').status, 0, 'the last agent alone removes the link');
});

t.test('shutdown while a periodic check is running leaves no rules behind', { skip: namespaceSkip() || (hasCommand('nft') ? false : 'nft not installed') }, async (t) => {
  const ns = netns(t);
  const real = spawnRunner(['ip', 'netns', 'exec', ns]);
  // The check's read of our table is held (as a slow fork would hold it) until the test lets it go.
  let hold: Promise<void> | null = null;
  let letGo = (): void => {};
  const calls = new Set<Promise<CommandResult>>();
  let removed = false;
  const run: CommandRunner = (cmd, args, stdin) => {
    const p = (async () => {
      if (hold !== null && args[0] === 'list') await hold;
      const r = await real(cmd, args, stdin);
      if (stdin?.includes('delete table') === true && !stdin.includes('{')) removed = true;
      return r;
    })();
    calls.add(p);
    void p.finally(() => calls.delete(p));
    return p;
  };
  /** Until no command is running and none follows: every continuation of the check has run. */
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 100; i++) {
      await Promise.all([...calls]);
      await new Promise((r) => setImmediate(r));
      if (calls.size === 0) return;
    }
  };
  const clock = new ManualClock();
  const part = interceptionPart({
    addresses: ['169.254.20.10'], port: 53, healthPort: null, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
    firewall: 'nftables', skipTeardown: false, syncIntervalMs: 1000, clock, logger: silentLogger, counters: newSetupCounters(), run,
  })!;
  await part.start();
  t.equal(inNs(ns, 'nft', 'list', 'table', 'inet', 'nodelocaldns').status, 0, 'rules in place');

  hold = new Promise((resolve) => {
    letGo = resolve;
  });
  clock.advance(1000); // the periodic check starts and reads the table
  const stopping = part.stop(clock.now() + 1000);
  // Let the read go once the teardown has deleted the table (or after a bounded wait, should stop() wait for the check).
  for (let i = 0; i < 250 && !removed; i++) await new Promise((r) => setTimeout(r, 20));
  letGo();
  hold = null;
  await stopping;
  t.ok(removed, 'the teardown deleted the table');
  await settle();
  const left = inNs(ns, 'nft', 'list', 'table', 'inet', 'nodelocaldns');
  t.not(left.status, 0, `no table of ours after shutdown (found: ${left.stdout.split('\n').slice(0, 3).join(' ')})`);
});

t.test('a start that fails half way through the interface leaves no link or address behind', { skip: namespaceSkip(), timeout: 300_000 }, async (t) => {
  const ns = netns(t);
  inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
  // IPv6 off on the node (a common hardening): the IPv6 listen address cannot be added, after the link and the IPv4 one were.
  inNs(ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
  const agent = spawnAgentIn(t, ns, ['--listen', '169.254.20.10:53', '--listen', '[fd00::a]:53', '--interface-kind', 'bridge', '--firewall', 'none', '--health-port', '0']);
  t.ok(await waitExit(agent.proc, 90_000), 'the agent gave up');
  t.equal(agent.proc.exitCode, 1, 'a start-up failure');
  t.match(agent.log.all.join('\n'), /add address fd00::a/, 'for the reason set up');
  const left = inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns');
  t.not(left.status, 0, `the link it created is gone (found: ${left.stdout.trim()})`);
});

t.test('interception whose start fails for one family leaves none of its rules behind, --skip-teardown or not', { skip: namespaceSkip() || (hasCommand('iptables-legacy-restore') ? false : 'iptables-legacy not installed') }, async (t) => {
  // --skip-teardown keeps what a running agent set up when it exits; a start that failed set up nothing to keep: the interface
  // part's rollback removes the link it created either way, and rules left without it would send the node's own NOTRACKed
  // DNS to the ClusterIP off the node (no local address, no kube-proxy DNAT) for as long as the start keeps failing.
  for (const skipTeardown of [false, true]) {
    const ns = netns(t);
    const real = spawnRunner(['ip', 'netns', 'exec', ns]);
    // ip6tables refuses the batch (no xt_socket / ip6table_raw for IPv6 on this kernel, say); iptables takes its own.
    const run: CommandRunner = (cmd, args, stdin) =>
      cmd === 'ip6tables-legacy-restore'
        ? Promise.resolve({ status: 2, stdout: '', stderr: "ip6tables-restore v1.8.9 (legacy): Couldn't load match `socket':No such file or directory\n", error: null })
        : real(cmd, args, stdin);
    const options = {
      port: 53, healthPort: 8080, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
      firewall: 'iptables-legacy', skipTeardown, syncIntervalMs: 1000, clock: new ManualClock(), logger: silentLogger, counters: newSetupCounters(), run,
    } as const;
    const ours = (): string[] => inNs(ns, 'iptables-legacy-save').stdout.split('\n').filter((l) => /nodelocaldns/i.test(l));
    const part = interceptionPart({ ...options, addresses: ['169.254.20.10', 'fd00::a'] })!;
    await t.rejects(part.start(), /Couldn't load match `socket'/);
    // The lifecycle stops only the parts that started: a part whose start failed must undo its own half.
    t.same(ours(), [], `skipTeardown ${skipTeardown}: no IPv4 rule of ours on a node the agent is not serving`);
    // A start that succeeded, rolled back because a later part failed.
    const v4 = interceptionPart({ ...options, addresses: ['169.254.20.10'] })!;
    await v4.start();
    t.not(ours().length, 0, 'rules in place');
    await v4.stop(0, 'rollback');
    t.same(ours(), [], `skipTeardown ${skipTeardown}: a rolled-back start leaves no rule either`);
    // A running agent's exit: --skip-teardown keeps its rules (node-cache -skipteardown), without it they go.
    const running = interceptionPart({ ...options, addresses: ['169.254.20.10'] })!;
    await running.start();
    const before = ours();
    t.not(before.length, 0, 'rules in place again');
    await running.stop(0, 'stop');
    t.same(ours(), skipTeardown ? before : [], `skipTeardown ${skipTeardown}: a running agent's exit ${skipTeardown ? 'keeps' : 'removes'} its rules`);
  }
});

t.test('EACCES from RTM_NEWADDR is IPv6 turned off on the link, not a missing capability', async (t) => {
  // The kernel refuses an IPv6 address on a link with disable_ipv6 with EACCES (addrconf), while a missing CAP_NET_ADMIN is EPERM (netlink_ns_capable).
  const text = describeNetlinkError('add address fd00::a to nodelocaldns', 13, 'ipv6: IPv6 is disabled on this device', 'dummy');
  t.notMatch(text, /CAP_NET_ADMIN/, text);
});

t.test('a link dump the kernel marks interrupted (NLM_F_DUMP_INTR) is not taken as the whole list', async (t) => {
  // Links come and go during the dump (pods' veths while the node drains): the kernel flags every part after the change,
  // and the list may miss entries. Here it missed ours; asked again, it is there.
  const NLM_F_DUMP_INTR = 0x10;
  const interrupted = fixture('rtnl-getlink-dump.hex').map((d) => {
    const parts = splitMessages(d).filter((m) => parseLink(m)?.name !== 'nodelocaldns');
    return Buffer.concat(parts.map((m) => {
      const h = Buffer.alloc(16);
      h.writeUInt32LE(16 + m.body.length, 0);
      h.writeUInt16LE(m.type, 4);
      h.writeUInt16LE(m.flags | NLM_F_DUMP_INTR, 6);
      h.writeUInt32LE(m.seq, 8);
      return Buffer.concat([h, m.body, Buffer.alloc(((m.body.length + 3) & ~3) - m.body.length)]);
    }));
  });
  t.same(interrupted.flatMap(splitMessages).map(parseLink).filter((l) => l !== null).map((l) => l.name), ['lo'], 'the crafted reply lacks our link');
  const io = replay([interrupted, 'rtnl-getlink-dump.hex', 'rtnl-getaddr-dump.hex', 'rtnl-newaddr-v4-ack.hex', 'rtnl-newlink-ack.hex']);
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
  t.same(ni.teardown(), { removed: ['address 169.254.20.10', 'link nodelocaldns'], errors: [] }, 'the link is found and removed at shutdown');
});

t.test('teardown neither deletes nor reports as removed a listen address the link holds with another prefix (not the /32 we add)', async (t) => {
  // The kernel deletes an address only with its own prefix length: asked for 169.254.20.10/32 when the link holds
  // 169.254.20.10/24 it answers EADDRNOTAVAIL, which the teardown took for "already gone": "removed", while it stayed.
  const otherPrefix = fixture('rtnl-getaddr-dump.hex').map((d) => {
    const copy = Buffer.from(d);
    for (let o = 0; o + 16 <= copy.length; o += (copy.readUInt32LE(o) + 3) & ~3) {
      const m = splitMessages(copy.subarray(o, o + copy.readUInt32LE(o)))[0];
      if (m !== undefined && parseAddr(m)?.address === '169.254.20.10') copy.writeUInt8(24, o + 16 + 1);
    }
    return copy;
  });
  t.equal(otherPrefix.flatMap(splitMessages).map(parseAddr).find((a) => a?.address === '169.254.20.10')?.prefixLen, 24, 'the crafted dump holds it as a /24');
  const io = replay(['rtnl-getlink-dump.hex', otherPrefix, 'rtnl-newlink-ack.hex']);
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
  const r = ni.teardown();
  t.notOk(r.removed.includes('address 169.254.20.10'), `not reported removed: ${JSON.stringify(r)}`);
  t.equal(io.sent.length, 3, 'dumps and the link\'s removal only: no delete of an address that is not ours');
});

t.test('rules an earlier run left in another backend do not outlive a run on the new one', { skip: namespaceSkip() || (hasCommand('iptables-legacy-restore') && hasCommand('nft') ? false : 'needs iptables-legacy and nft') }, async (t) => {
  const ns = netns(t);
  const run = spawnRunner(['ip', 'netns', 'exec', ns]);
  const counters = newSetupCounters();
  const opts = { name: 'nodelocaldns', addresses: ['169.254.20.10', '10.96.0.10'], port: 53, healthPort: 8080 };
  // An earlier run on iptables-legacy, killed (no teardown); kube-proxy has since moved to nftables mode.
  await new Firewall({ ...opts, backend: { kind: 'iptables', mode: 'legacy' }, run, counters }).apply();
  inNs(ns, 'nft', 'add', 'table', 'ip', 'kube-proxy');
  const part = interceptionPart({
    addresses: opts.addresses, port: 53, healthPort: 8080, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
    firewall: 'auto', skipTeardown: false, syncIntervalMs: 1000, clock: new ManualClock(), logger: silentLogger, counters, run,
  })!;
  await part.start();
  t.equal(part.mode, 'nftables', 'follows kube-proxy');
  await part.stop(0);
  t.not(inNs(ns, 'nft', 'list', 'table', 'inet', 'nodelocaldns').status, 0, 'its own table removed');
  // Left, the unconditional raw OUTPUT NOTRACK keeps node processes' DNS to the ClusterIP from kube-proxy's DNAT for good.
  const left = inNs(ns, 'iptables-legacy-save').stdout.split('\n').filter((l) => /nodelocaldns/i.test(l) && l.startsWith('-A'));
  t.same(left, [], 'no rule of ours left in iptables-legacy either');
});

t.test('a dump interrupted on every try is an error after MAX_DUMP_TRIES, not a partial list', async (t) => {
  const flagged = fixture('rtnl-getlink-dump.hex').map((d) => {
    const copy = Buffer.from(d);
    for (let o = 0; o + 16 <= copy.length; o += (copy.readUInt32LE(o) + 3) & ~3) copy.writeUInt16LE(copy.readUInt16LE(o + 6) | 0x10, o + 6);
    return copy;
  });
  const io = replay(Array.from({ length: MAX_DUMP_TRIES }, () => flagged));
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
  t.match(ni.teardown(), { removed: [], errors: [/list links: .*interrupted by changes 5 times in a row/] });
  t.equal(io.sent.length, MAX_DUMP_TRIES, 'asked again each time, then gave up');
});

t.test('a failed ensure() on a link it did not create removes only the addresses it added', async (t) => {
  // The captured link holds 169.254.20.10 and fd00::a; 10.96.0.10 is added, then 10.96.0.11 is refused.
  const io = replay(['rtnl-getlink-dump.hex', 'rtnl-getaddr-dump.hex', 'rtnl-newaddr-v4-ack.hex', 'rtnl-newlink-eperm.hex', 'rtnl-newaddr-v4-ack.hex']);
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10', '10.96.0.10', '10.96.0.11'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
  t.throws(() => ni.ensure(), { message: /add address 10\.96\.0\.11 .*CAP_NET_ADMIN/ });
  t.equal(io.sent.length, 5, 'one request to undo, no link deleted');
  const undo = io.sent[4]!;
  t.equal(undo.toString('hex'), addrRequest(undo.readUInt32LE(8), 'del', 2, ipToBytes('10.96.0.10')!).toString('hex'), 'the address it added, deleted');
});

t.test('another agent beside us: only listeners held by other processes count', async (t) => {
  const row = (sl: number, local: string, st: string, inode: string): string =>
    `  ${sl}: ${local} 00000000:0000 ${st} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 100 0 0 10 0`;
  const addr = { host: '169.254.20.10', port: 53 };
  const local = procAddress(addr);
  const table = ['  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode', row(0, local, '0A', '111'), row(1, local, '0A', '222'), row(2, local, '01', '333')].join('\n');
  const proc = (own: string[]): ProcReader => ({ readFile: () => table, ownSockets: () => new Set(own) });
  t.equal(otherListenersOn(addr, proc(['111'])), 1, 'ours apart, the new agent counts');
  t.equal(otherListenersOn(addr, proc(['111', '222'])), 0, 'both ours: no one else');
  t.equal(otherListenersOn(addr, proc([])), 2, 'none of them ours: both count, the established socket does not');
  t.equal(otherListenersOn(addr, { readFile: () => { throw new Error('no /proc'); }, ownSockets: () => new Set() }), 0);
});

t.test('a second agent whose listeners cannot bind leaves the running agent its link and addresses (--no-reuse-port)', { skip: namespaceSkip(), timeout: 300_000 }, async (t) => {
  const ns = netns(t);
  inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
  const args = ['--listen', '169.254.20.10:53', '--no-reuse-port', '--io', 'dgram', '--interface-kind', 'bridge', '--firewall', 'none', '--health-port', '0', '--metrics-listen-address', 'off', '--log-level', 'info'];
  await startAgentIn(t, ns, args);
  // Started again by mistake (a debug run, a DaemonSet swap that overlaps): it reuses the link, then its bind fails.
  const second = spawnAgentIn(t, ns, args);
  t.ok(await waitExit(second.proc, 90_000), 'the second agent gave up');
  t.equal(second.proc.exitCode, 1, 'a start-up failure');
  t.match(second.log.all.join('\n'), /EADDRINUSE|address already in use/i, 'because the first one holds the address');
  // The first agent still serves on 169.254.20.10: without the address on a local link its pods' queries are routed away.
  const shown = inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns');
  t.match(shown.stdout, /inet 169\.254\.20\.10\/32 /, `the running agent's address is still there (found: ${shown.stdout.trim() || shown.stderr.trim()})`);
});

t.test('a dump the kernel ends with an error in NLMSG_DONE is an error, not the partial list', async (t) => {
  // The kernel reports a dump callback's failure (say -EMSGSIZE: one entry fits no datagram) as the int payload of
  // NLMSG_DONE (netlink_dump_done); iproute2 prints "Dump terminated". What came before it is not the whole table.
  const EMSGSIZE = 90;
  const [links, done] = fixture('rtnl-getlink-dump.hex');
  const partial = Buffer.concat(splitMessages(links!).filter((m) => parseLink(m)?.name !== 'nodelocaldns').map((m) => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(16 + m.body.length, 0);
    h.writeUInt16LE(m.type, 4);
    h.writeUInt16LE(m.flags, 6);
    return Buffer.concat([h, m.body, Buffer.alloc(((m.body.length + 3) & ~3) - m.body.length)]);
  }));
  const failed = Buffer.from(done!);
  failed.writeInt32LE(-EMSGSIZE, 16);
  t.same(splitMessages(failed).map((m) => m.type), [3], 'an NLMSG_DONE');
  const io = replay([[partial, failed]]);
  const ni = new NodeInterface({ name: 'nodelocaldns', addresses: ['169.254.20.10'], kind: 'bridge', counters: newSetupCounters(), open: () => io });
  // Taken as the whole list, our link is "not there": the teardown leaves it and says nothing went wrong.
  t.match(ni.teardown(), { removed: [], errors: [/list links/] }, 'the failed dump is reported');
});

t.test('a check whose rewrite fails counts no repair: nothing was put back', async (t) => {
  // Every rule missing (a firewall reload flushed them), and the rewrite refused (kube-proxy holds the xtables lock, nft lacks a module).
  const iptables = newSetupCounters();
  const locked = fakeRunner({
    'iptables-legacy-save -t raw': {},
    'iptables-legacy-save -t filter': {},
    'iptables-legacy-restore': { status: 4, stderr: 'Another app is currently holding the xtables lock. Stopped waiting after 5s.' },
  });
  const fw = new Firewall({ ...RULES, addresses: ['169.254.20.10'], backend: { kind: 'iptables', mode: 'legacy' }, run: locked, counters: iptables });
  const c = await fw.check();
  t.match(c.error, /xtables lock/, 'the check failed');
  t.equal(iptables.get('iptablesLock'), 1);
  t.equal(iptables.get('firewallRepairs'), 0, `nodelocal_setup_repairs_total{part="firewall"} unchanged (reported repaired: ${JSON.stringify(c.repaired)})`);

  const nft = newSetupCounters();
  const refused = fakeRunner({ 'nft list table inet nodelocaldns': { status: 1, stderr: 'Error: No such file or directory' }, 'nft -f -': { status: 1, stderr: "Error: Could not process rule: No such file or directory\n" } });
  const table = new Firewall({ ...RULES, addresses: ['169.254.20.10'], backend: { kind: 'nftables' }, run: refused, counters: nft });
  const n = await table.check();
  t.match(n.error, /nft -f: exit 1/, 'the check failed');
  t.equal(nft.get('firewallRepairs'), 0, `nftables: nothing put back either (reported repaired: ${JSON.stringify(n.repaired)})`);
});

t.test('a start that fails at the listeners still removes the link it created (the rollback undoes its own start)', { skip: namespaceSkip(), timeout: 300_000 }, async (t) => {
  const ns = netns(t);
  inNs(ns, 'ip', 'link', 'set', 'lo', 'up');
  // Port 53 held on the wildcard by something else: the link and address go in, then the listeners cannot bind.
  const holder = spawn('ip', ['netns', 'exec', ns, 'env', '-i', process.execPath, '-e',
    "const d=require('node:dgram').createSocket('udp4');d.bind(53,'0.0.0.0',()=>{require('node:net').createServer().listen(53,'0.0.0.0',()=>console.log('held'))})"], { env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => stopChild(holder, 'SIGKILL', 2000));
  t.ok(await new Lines(holder.stdout!).next((l) => l === 'held', 30_000), 'port 53 is held');
  const agent = spawnAgentIn(t, ns, ['--listen', '169.254.20.10:53', '--no-reuse-port', '--io', 'dgram', '--interface-kind', 'bridge', '--firewall', 'none', '--health-port', '0', '--metrics-listen-address', 'off', '--log-level', 'info']);
  t.ok(await waitExit(agent.proc, 90_000), 'the agent gave up');
  t.equal(agent.proc.exitCode, 1, 'a start-up failure');
  t.match(agent.log.all.join('\n'), /interface ready.*"created":true/, 'after creating the link');
  t.match(agent.log.all.join('\n'), /interface start undone.*"removed":\["link nodelocaldns"\]/, 'which the rollback removed');
  const left = inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns');
  t.not(left.status, 0, `the link it created is gone (found: ${left.stdout.trim()})`);
});

t.test('--interface-name "." or "..": a flag error naming the flag, not a kernel refusal at start', async (t) => {
  // dev_valid_name() refuses both (they would clash with /sys/class/net's own entries).
  for (const name of ['.', '..']) {
    let msg = 'no error';
    try {
      loadConfig(['--interface-name', name], { env: {}, readFile: () => { throw Object.assign(new Error('no such file'), { code: 'ENOENT' }); } });
    } catch (e) {
      msg = e instanceof ConfigError ? e.message : `not a ConfigError: ${String(e)}`;
    }
    t.match(msg, /--interface-name/, `"${name}" is refused as a flag error`);
    t.throws(() => new NodeInterface({ name, addresses: [], counters: newSetupCounters() }), InterfaceError, `NodeInterface refuses "${name}" too`);
  }
  t.equal(new NodeInterface({ name: '.nl-0', addresses: [], counters: newSetupCounters() }).name, '.nl-0', 'a name that only starts with a dot is fine');
});

t.test('spawnRunner: a timed-out command is answered at its timeout, and a grandchild holding its output dies with it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nldns-run-'));
  const pidFile = join(dir, 'pid');
  let grandchild = 0;
  t.teardown(() => {
    if (grandchild > 0) {
      try {
        process.kill(grandchild, 'SIGKILL');
      } catch {
        // gone, as it should be
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  // A wrapper whose helper inherits stdout and outlives it: killing only the wrapper leaves the pipe open for 600 s.
  const pending = spawnRunner([], 300)('sh', ['-c', `sleep 600 & echo $! > ${pidFile}; wait`]);
  const r = await Promise.race([pending, new Promise<'pending'>((res) => setTimeout(() => res('pending'), 20_000).unref())]);
  grandchild = Number(readFileSync(pidFile, 'utf8').trim());
  t.not(r, 'pending', 'the runner answered (not still waiting on the grandchild\'s pipe)');
  t.match(r, { status: null, error: /killed by SIGKILL/ }, 'as a timeout');
  let alive = true;
  for (let i = 0; i < 50 && alive; i++) {
    try {
      process.kill(grandchild, 0);
      await new Promise((res) => setTimeout(res, 100));
    } catch {
      alive = false;
    }
  }
  t.notOk(alive, `the grandchild (pid ${grandchild}) was killed with the command`);
});

t.test('no fail-open DNAT wanted: a nat table that cannot be read neither stops interception nor keeps teardown from raw and filter', { skip: namespaceSkip() || (hasCommand('iptables-legacy-restore') ? false : 'iptables-legacy not installed') }, async (t) => {
  const ns = netns(t);
  const real = spawnRunner(['ip', 'netns', 'exec', ns]);
  // A kernel without ip6table_nat: IPv6 raw and filter work, the nat table does not exist.
  const run: CommandRunner = (cmd, args, stdin) =>
    cmd === 'ip6tables-legacy-save' && args.includes('nat')
      ? Promise.resolve({ status: 1, stdout: '', stderr: "ip6tables-save v1.8.9 (legacy): Cannot initialize: Table does not exist (do you need to insmod?)\n", error: null })
      : real(cmd, args, stdin);
  const fw = new Firewall({ ...RULES, backend: { kind: 'iptables', mode: 'legacy' }, run, counters: newSetupCounters() });
  await fw.apply().then(() => t.pass('apply succeeded'), (e: unknown) => t.fail(`apply failed: ${String(e)}`));
  const ours = (family: 'iptables' | 'ip6tables') => ['raw', 'filter'].flatMap((tbl) => inNs(ns, `${family}-legacy-save`, '-t', tbl).stdout.split('\n')).filter((l) => /^-A .*nodelocaldns/i.test(l));
  t.ok(ours('ip6tables').length > 0, 'IPv6 rules in place');
  t.equal((await fw.check()).error, null, 'the check passes');
  t.equal(await fw.remove(), null, 'teardown reports no error');
  t.same(ours('ip6tables'), [], 'no IPv6 rule of ours left in raw or filter');
  t.same(ours('iptables'), [], 'nor IPv4');
});

t.test('order check: a jump to another user chain above ours (Calico, kube-proxy) is no misorder; a verdict above it is', async (t) => {
  // Calico's Felix (insert mode) keeps its own jump first in raw PREROUTING and filter INPUT and rewrites every ~90 s:
  // demanding rule 1 for ours as well made the two swap for good, with a repair and a warning each time.
  const want = buildRules(RULES).filter((r) => r.family === 4);
  const good = parseSave(iptablesApplyBatch('nodelocaldns', 'raw', new Map(), want).replace(/^-I (\w+) 1 /gm, '-A $1 '), 'raw');
  const withAbove = (...above: string[]) => {
    const m = new Map(good);
    m.set('cali-PREROUTING', ['-m mark --mark 0x10000/0x10000 -j ACCEPT']);
    m.set('PREROUTING', [...above, ...(good.get('PREROUTING') ?? [])]);
    return m;
  };
  const calico = withAbove('-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING');
  t.same(diffIptables('nodelocaldns', 'raw', calico, want), [], 'below Calico\'s jump: in place, nothing to repair');
  t.same(diffIptables('nodelocaldns', 'raw', withAbove('-j LOG --log-prefix "raw: "', '-p udp -j cali-PREROUTING', '-m mark --mark 0x1 -j MARK --set-mark 0x2'), want), [], 'below a LOG, a MARK and a narrowed jump to a user chain: in place');
  t.match(diffIptables('nodelocaldns', 'raw', withAbove('-j SOME-TARGET'), want), [/is rule 2, below "-A PREROUTING -j SOME-TARGET"/], 'a target that is no chain of this table (an extension we do not know): a misorder');
  t.match(diffIptables('nodelocaldns', 'raw', withAbove('-g cali-PREROUTING'), want), [/is rule 2, below "-A PREROUTING -g cali-PREROUTING"/], 'a goto never comes back to this chain: a misorder');
  t.same(diffIptables('nodelocaldns', 'raw', withAbove('-m comment --comment "cali:x" -j cali-PREROUTING', '-p udp -j DROP'), want), [
    'raw PREROUTING: jump to NODELOCALDNS-PREROUTING is rule 3, below "-A PREROUTING -p udp -j DROP"',
  ], 'a verdict above it (here under Calico\'s jump) still is');
});

/** A TCP server in a namespace: answers each connection with "WORD <the local address it was reached on>" and closes. */
const TCP_STAND_IN = `require('node:net').createServer((c) => { c.on('error', () => {}); c.end(process.argv[2] + ' ' + c.localAddress); })
  .listen(53, process.argv[1], () => console.log('listening'));
setTimeout(() => process.exit(0), 60000);`;
/** One connection to HOST:53: prints what the server said, or the error. */
const TCP_CLIENT = `const c = require('node:net').connect(53, process.argv[1]);
let got = '';
c.setTimeout(3000, () => { console.log('timeout'); c.destroy(); });
c.on('data', (d) => { got += d; });
c.on('end', () => console.log(got));
c.on('error', (e) => console.log(e.code));`;

for (const { label, backend, need } of BACKENDS) {
  t.test(`pods' DNS over TCP to an address kube-proxy DNATs reaches our listener, and kube-dns once it is gone: ${label}`, { skip: namespaceSkip() || (hasCommand(need) ? false : `${need} not installed`) }, async (t) => {
    // node: veth0 10.244.0.1, link nodelocaldns holding the ClusterIP 10.96.0.10 (iptables mode), the "kube-dns pod" 10.244.1.53 on lo;
    // pod: veth1 10.244.0.2. kube-proxy's DNAT of 10.96.0.10:53 to 10.244.1.53:53 in the backend's own tool.
    const node = netns(t);
    const pod = netns(t);
    const steps: string[][] = [
      ['ip', '-n', node, 'link', 'set', 'lo', 'up'],
      ['ip', '-n', pod, 'link', 'set', 'lo', 'up'],
      ['ip', 'link', 'add', 'veth0', 'netns', node, 'type', 'veth', 'peer', 'name', 'veth1', 'netns', pod],
      ['ip', '-n', node, 'addr', 'add', '10.244.0.1/24', 'dev', 'veth0'],
      ['ip', '-n', node, 'link', 'set', 'veth0', 'up'],
      ['ip', '-n', pod, 'addr', 'add', '10.244.0.2/24', 'dev', 'veth1'],
      ['ip', '-n', pod, 'link', 'set', 'veth1', 'up'],
      ['ip', '-n', pod, 'route', 'add', 'default', 'via', '10.244.0.1'],
      ['ip', '-n', node, 'link', 'add', 'nodelocaldns', 'type', 'bridge'],
      ['ip', '-n', node, 'link', 'set', 'nodelocaldns', 'up'],
      ['ip', '-n', node, 'addr', 'add', '10.96.0.10/32', 'dev', 'nodelocaldns'],
      ['ip', '-n', node, 'addr', 'add', '10.244.1.53/32', 'dev', 'lo'],
    ];
    t.same(steps.filter((s) => sh(s[0]!, s.slice(1)).status !== 0), [], 'the two namespaces wired');
    const kubeProxy = backend.kind === 'nftables'
      ? spawnSync('ip', ['netns', 'exec', node, 'nft', '-f', '-'], { input: 'table ip kube-proxy {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat;\n\t\tip daddr 10.96.0.10 tcp dport 53 dnat to 10.244.1.53:53\n\t}\n}\n' })
      : spawnSync('ip', ['netns', 'exec', node, `iptables-${backend.mode}`, '-t', 'nat', '-A', 'PREROUTING', '-d', '10.96.0.10/32', '-p', 'tcp', '--dport', '53', '-j', 'DNAT', '--to-destination', '10.244.1.53:53']);
    t.equal(kubeProxy.status, 0, 'kube-proxy stand-in in place');
    const fw = new Firewall({ name: 'nodelocaldns', addresses: ['10.96.0.10'], port: 53, healthPort: null, backend, run: spawnRunner(['ip', 'netns', 'exec', node]), counters: newSetupCounters() });
    await fw.apply();

    const serve = async (host: string, word: string): Promise<ChildProcess> => {
      const child = spawn('ip', ['netns', 'exec', node, process.execPath, '-e', TCP_STAND_IN, host, word], { env: CHILD_ENV, stdio: ['ignore', 'pipe', 'inherit'] });
      t.teardown(() => stopChild(child, 'SIGKILL', 2000));
      t.not(await new Lines(child.stdout).next((l) => l === 'listening', 30_000), null, `${word} listens on ${host}:53`);
      return child;
    };
    const ask = (): string => {
      const r = spawnSync('ip', ['netns', 'exec', pod, process.execPath, '-e', TCP_CLIENT, '10.96.0.10'], { encoding: 'utf8', env: CHILD_ENV, timeout: 20_000, killSignal: 'SIGKILL' });
      return (r.stdout ?? '').trim();
    };

    const kubeDns = await serve('10.244.1.53', 'kube-dns');
    const agent = await serve('10.96.0.10', 'agent');
    // The client's ACK that completes the handshake must be NOTRACKed too: tracked, it takes kube-proxy's DNAT and kube-dns resets it.
    for (let i = 0; i < 3; i++) t.equal(ask(), 'agent 10.96.0.10', `connection ${i + 1}: answered by our listener`);
    await stopChild(agent, 'SIGKILL', 2000);
    t.equal(ask(), 'kube-dns 10.244.1.53', 'no socket of ours: kube-proxy\'s DNAT to kube-dns (fail open)');
    await stopChild(kubeDns, 'SIGKILL', 2000);
    // A listener on the wildcard (someone else's *:53) does not keep the interception on, as iptables' -m socket.
    await serve('0.0.0.0', 'wildcard');
    t.equal(ask(), 'wildcard 10.244.1.53', 'a wildcard listener is no socket of ours: the connection still takes the DNAT');
    t.equal(await fw.remove(), null, 'rules removed');
  });
}

t.test('a rollback after a periodic check put the link back removes the link the check made', { skip: namespaceSkip() }, async (t) => {
  // A later part's start fails after a sync interval or more (interception waiting on the xtables lock), and meanwhile
  // the link was deleted (a CNI restart) and the check created it again: the rollback deleted the first link's index
  // (gone: taken for done) and left the new one, holding the kube-dns ClusterIP, on a node no agent serves.
  for (const found of [false, true]) {
    const ns = netns(t);
    if (found) inNs(ns, 'ip', 'link', 'add', 'nodelocaldns', 'type', 'bridge'); // another agent's, at our start
    const clock = new ManualClock();
    const part = interfacePart({
      addresses: ['169.254.20.10'], port: 53, healthPort: null, setupInterface: true, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
      firewall: 'none', skipTeardown: false, syncIntervalMs: 1000, clock, logger: silentLogger, counters: newSetupCounters(),
      netlink: () => openRtnetlink({ netnsPath: `/var/run/netns/${ns}` }),
    })!;
    await part.start();
    t.equal(inNs(ns, 'ip', 'link', 'del', 'nodelocaldns').status, 0, `found ${found}: the link deleted behind our back`);
    clock.advance(1000);
    t.equal(inNs(ns, 'ip', 'link', 'show', 'nodelocaldns').status, 0, `found ${found}: the check put it back`);
    await part.stop(clock.now(), 'rollback');
    const left = inNs(ns, 'ip', '-o', 'addr', 'show', 'dev', 'nodelocaldns');
    t.not(left.status, 0, `found ${found}: the link the check made is gone after the rollback (found: ${left.stdout.trim()})`);
  }
});

t.test('a teardown or rollback of the interface that fails is logged at warn, naming what was left', { skip: namespaceSkip() }, async (t) => {
  // An operator filtering warnings must see a link that holds the ClusterIP left on the node.
  for (const why of ['stop', 'rollback'] as const) {
    const ns = netns(t);
    let broken = false;
    // The namespace's own netlink socket, whose sends fail (EPERM) once `broken` is set.
    const netlink = (): NetlinkIo => {
      const io = openRtnetlink({ netnsPath: `/var/run/netns/${ns}` });
      return { send: (m) => (broken ? 1 : io.send(m)), recv: (b) => io.recv(b), close: () => io.close() };
    };
    const lines: Array<{ level: string; msg: string; errors?: string[] }> = [];
    const logger = createLogger('info', (l) => lines.push(JSON.parse(l) as { level: string; msg: string }));
    const part = interfacePart({
      addresses: ['169.254.20.10'], port: 53, healthPort: null, setupInterface: true, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
      firewall: 'none', skipTeardown: false, syncIntervalMs: 60_000, clock: new ManualClock(), logger, counters: newSetupCounters(), netlink,
    })!;
    await part.start();
    broken = true;
    await part.stop(0, why);
    t.equal(inNs(ns, 'ip', 'link', 'show', 'nodelocaldns').status, 0, `${why}: the link is still there`);
    const outcome = lines.find((l) => /^interface (removed|start undone)/.test(l.msg));
    t.equal(outcome?.level, 'warn', `${why}: ${JSON.stringify(outcome)}`);
    t.match(outcome?.errors, [/\S/], `${why}: naming what failed`);
  }
});

t.test('interception: a pod\'s TCP connection to an intercepted address completes with us, its handshake not taken by kube-proxy\'s DNAT', { skip: namespaceSkip() }, async (t) => {
  // `-m socket` (and nft `socket`) must match the handshake's half-open (SYN_RECV) socket too: the client's ACK that
  // completes it otherwise is tracked, takes kube-proxy's DNAT to kube-dns and is reset there.
  for (const { label, backend, need } of BACKENDS) {
    if (!hasCommand(need) || !hasCommand('nft')) {
      t.comment(`${label}: ${need} or nft not installed`);
      continue;
    }
    const node = netns(t);
    const pod = netns(t);
    const ipn = (...a: string[]): void => {
      const r = sh('ip', ['-n', node, ...a]);
      if (r.status !== 0) throw new Error(`ip -n node ${a.join(' ')}: ${r.stderr}`);
    };
    const ipp = (...a: string[]): void => {
      const r = sh('ip', ['-n', pod, ...a]);
      if (r.status !== 0) throw new Error(`ip -n pod ${a.join(' ')}: ${r.stderr}`);
    };
    ipn('link', 'set', 'lo', 'up');
    ipn('link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod);
    ipn('addr', 'add', '10.244.0.1/24', 'dev', 'v0');
    ipn('addr', 'add', 'fd00:244::1/64', 'dev', 'v0', 'nodad');
    ipn('link', 'set', 'v0', 'up');
    ipp('addr', 'add', '10.244.0.2/24', 'dev', 'eth0');
    ipp('addr', 'add', 'fd00:244::2/64', 'dev', 'eth0', 'nodad');
    ipp('link', 'set', 'eth0', 'up');
    ipp('route', 'add', 'default', 'via', '10.244.0.1');
    ipp('-6', 'route', 'add', 'default', 'via', 'fd00:244::1');
    ipn('link', 'add', 'nodelocaldns', 'type', 'bridge');
    ipn('addr', 'add', '10.96.0.10/32', 'dev', 'nodelocaldns');
    ipn('addr', 'add', 'fd00::10/128', 'dev', 'nodelocaldns', 'nodad');
    ipn('link', 'set', 'nodelocaldns', 'up');
    // kube-dns's pod, and kube-proxy's DNAT of the ClusterIPs to it.
    ipn('addr', 'add', '10.244.1.53/32', 'dev', 'lo');
    ipn('addr', 'add', 'fd00:1::53/128', 'dev', 'lo', 'nodad');
    const kp = sh('ip', ['netns', 'exec', node, 'sh', '-c',
      `printf '%s\\n' 'table inet kp {' ' chain pre {' '  type nat hook prerouting priority dstnat; policy accept;' '  ip daddr 10.96.0.10 tcp dport 53 dnat ip to 10.244.1.53:53' '  ip6 daddr fd00::10 tcp dport 53 dnat ip6 to [fd00:1::53]:53' ' }' '}' | nft -f -`]);
    t.equal(kp.status, 0, `kube-proxy's DNAT in place: ${kp.stderr}`);
    const fw = new Firewall({ name: 'nodelocaldns', addresses: ['10.96.0.10', 'fd00::10'], port: 53, healthPort: null, backend, run: spawnRunner(['ip', 'netns', 'exec', node]), counters: newSetupCounters() });
    await fw.apply();
    const listeners = spawn('ip', ['netns', 'exec', node, process.execPath, '-e', [
      "const net = require('node:net'); let n = 0; const up = () => { if (++n === 4) console.log('ready'); };",
      "for (const a of ['10.96.0.10', 'fd00::10']) net.createServer((s) => s.end('ours')).listen(53, a, up);",
      "for (const a of ['10.244.1.53', 'fd00:1::53']) net.createServer((s) => s.end('kube-dns')).listen(53, a, up);",
    ].join('\n')], { env: CHILD_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => stopChild(listeners, 'SIGKILL', 2000));
    t.ok(await new Lines(listeners.stdout!).next((l) => l === 'ready', 30_000), `${label}: listening`);
    for (const addr of ['10.96.0.10', 'fd00::10']) {
      const got = sh('ip', ['netns', 'exec', pod, process.execPath, '-e',
        `const s = require('node:net').connect(53, '${addr}'); let d = ''; s.on('data', (c) => { d += c; }); s.on('end', () => console.log(d)); s.on('error', (e) => console.log(e.code)); setTimeout(() => { console.log('timeout'); process.exit(0); }, 5000).unref();`]);
      t.equal(got.stdout.trim(), 'ours', `${label}: TCP to ${addr} is answered by our listener`);
    }
    t.equal(await fw.remove(), null);
    await stopChild(listeners, 'SIGKILL', 2000);
  }
});

t.test('shutdown during a periodic check: the check writes nothing more once the stop is asked for', async (t) => {
  // Every save is empty, so each check finds both families missing and rewrites IPv4, then IPv6.
  const calls: { cmd: string; stdin: string; afterStop: boolean }[] = [];
  let stopAsked = false;
  let holdRestore = false;
  let reached = (): void => {};
  const atRestore = new Promise<void>((resolve) => {
    reached = resolve;
  });
  let letGo = (): void => {};
  const released = new Promise<void>((resolve) => {
    letGo = resolve;
  });
  const fake = fakeRunner({
    'iptables-legacy-save -t raw': {}, 'iptables-legacy-save -t filter': {}, 'iptables-legacy-save -t nat': {},
    'ip6tables-legacy-save -t raw': {}, 'ip6tables-legacy-save -t filter': {}, 'ip6tables-legacy-save -t nat': {},
    'iptables-legacy-restore': {}, 'ip6tables-legacy-restore': {},
  });
  const run: CommandRunner = async (cmd, args, stdin) => {
    calls.push({ cmd, stdin: stdin ?? '', afterStop: stopAsked });
    if (holdRestore && cmd === 'iptables-legacy-restore') {
      // The check's IPv4 write waits (on the xtables lock, say) until the test lets it go.
      reached();
      await released;
    }
    return fake(cmd, args, stdin);
  };
  const clock = new ManualClock();
  const part = interceptionPart({
    addresses: ['169.254.20.10', 'fd00::a'], port: 53, healthPort: null, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
    firewall: 'iptables-legacy', skipTeardown: false, syncIntervalMs: 1000, clock, logger: silentLogger, counters: newSetupCounters(), run,
  })!;
  await part.start();
  holdRestore = true;
  clock.advance(1000); // the periodic check starts
  await atRestore;
  stopAsked = true;
  const stopping = part.stop(clock.now() + 1000);
  letGo();
  await stopping;
  const writesAfter = calls.filter((c) => c.afterStop && c.cmd.endsWith('-restore') && c.stdin.includes('-I '));
  t.same(writesAfter.map((c) => c.cmd), [], 'no rules written after the stop was asked for: the teardown that follows would have to undo them');
});

/** What `p` gives, or `otherwise` once `ms` have passed without it (a bound against hangs, not a timing to assert). */
async function orAfter(p: Promise<string>, ms: number, otherwise: string): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([p, new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(otherwise), ms);
  })]);
  clearTimeout(timer);
  return r;
}

t.test('a firewall command that hangs (a held xtables lock) does not hold the stop past its time: the check in flight and the teardown are cut short', async (t) => {
  // main's hard stop exits at the grace plus 10 s whatever is still running: a teardown that waited out a hung
  // command's own 15 s timeout (each) got the agent killed before the link went, leaving it holding the ClusterIP.
  const fake = fakeRunner({
    'iptables-legacy-save -t raw': {}, 'iptables-legacy-save -t filter': {}, 'iptables-legacy-save -t nat': {},
    'iptables-legacy-restore': {},
  });
  let hang = false;
  // Once `hang` is set every command waits for good (as one stuck on the lock would until its timeout).
  const run: CommandRunner = (cmd, args, stdin) => (hang ? new Promise<CommandResult>(() => {}) : fake(cmd, args, stdin));
  const lines: Array<{ level: string; msg: string; error?: string }> = [];
  const logger = createLogger('info', (l) => lines.push(JSON.parse(l) as { level: string; msg: string }));
  const clock = new ManualClock();
  const counters = newSetupCounters();
  const part = interceptionPart({
    addresses: ['169.254.20.10'], port: 53, healthPort: null, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
    firewall: 'iptables-legacy', skipTeardown: false, syncIntervalMs: 1000, clock, logger, counters, run,
  })!;
  await part.start();
  hang = true;
  clock.advance(1000); // the periodic check starts, and hangs in its first command
  const stopping = part.stop(clock.now()).then(() => 'stopped');
  clock.advance(60_000); // a minute past the stop's deadline: longer than anything the teardown may take beyond it
  const outcome = await orAfter(stopping, 20_000, 'still stopping');
  t.equal(outcome, 'stopped', 'the stop returned, so the parts after it (the link) are still taken down');
  t.match(lines.find((l) => l.msg === 'could not remove interception rules'), { level: 'warn', error: /deadline/ }, 'saying the rules may be left, and why');
  // coredns_nodecache_setup_errors_total: a command the stop cut is no setup error (an alert on it would fire at a rollout).
  t.same([counters.get('iptables'), counters.get('iptablesLock')], [0, 0], 'the commands cut short are not counted as setup errors');
});

t.test('a stop during the start cuts its firewall command in flight: the start ends at once, what it may have written is removed, and no setup error is counted', async (t) => {
  // Each command is bounded (15 s), but a start runs several: a SIGTERM that waited for the start to finish could
  // wait past the pod's terminationGracePeriodSeconds. The start's write hangs (a held xtables lock) until it is cut.
  const fake = fakeRunner({
    'iptables-legacy-save -t raw': {}, 'iptables-legacy-save -t filter': {}, 'iptables-legacy-save -t nat': {},
    'iptables-legacy-restore': {},
  });
  const calls: { cmd: string; afterCut: boolean }[] = [];
  const cut = new AbortController();
  let reached = (): void => {};
  const atWrite = new Promise<void>((resolve) => {
    reached = resolve;
  });
  const run: CommandRunner = (cmd, args, stdin) => {
    calls.push({ cmd, afterCut: cut.signal.aborted });
    if (cmd === 'iptables-legacy-restore' && !cut.signal.aborted) {
      reached();
      return new Promise<CommandResult>(() => {});
    }
    return fake(cmd, args, stdin);
  };
  const counters = newSetupCounters();
  const lines: Array<{ msg: string }> = [];
  const part = interceptionPart({
    addresses: ['169.254.20.10'], port: 53, healthPort: null, setupInterface: false, interfaceName: 'nodelocaldns', interfaceKind: 'bridge',
    firewall: 'iptables-legacy', skipTeardown: false, syncIntervalMs: 1000, clock: new ManualClock(), logger: createLogger('info', (l) => lines.push(JSON.parse(l) as { msg: string })), counters, run,
  })!;
  // Component.start(cut): what the lifecycle passes; a start that takes no signal ignores it.
  const start: (cut: AbortSignal) => Promise<void> = part.start.bind(part);
  const starting = start(cut.signal).then(() => 'started', () => 'start ended');
  await atWrite;
  cut.abort();
  const outcome = await orAfter(starting, 20_000, 'still starting');
  t.equal(outcome, 'start ended', 'the start did not wait for the hung command');
  t.ok(calls.some((c) => c.afterCut && c.cmd === 'iptables-legacy-save'), 'what it may have written was read back to be removed');
  t.ok(lines.some((l) => l.msg === 'interception rules removed'), 'and removed');
  t.same([counters.get('iptables'), counters.get('iptablesLock')], [0, 0], 'the command cut short is not counted as a setup error');
  t.notOk(part.inPlace, 'nothing in place');
});

t.test('spawnRunner: a command cut short by the stop\'s deadline is killed and answered at once', async (t) => {
  const run: (cmd: string, args: readonly string[], stdin?: string, signal?: AbortSignal) => Promise<CommandResult> = spawnRunner([], 60_000);
  t.match(await run('sleep', ['5'], '', AbortSignal.timeout(100)), { status: null, error: /deadline/ }, 'killed when the signal fired');
  const done = new AbortController();
  done.abort();
  t.match(await run('sh', ['-c', 'exit 0'], '', done.signal), { status: null, error: /deadline/ }, 'not even started once the time is up');
});

t.test('rule parsing: "-j"/"-g" inside another rule\'s quoted comment is text, not its target', async (t) => {
  // As iptables-save prints them: comments with spaces are quoted, with \" and \\ escaped.
  const want = buildRules(RULES).filter((r) => r.family === 4);
  const ours = parseSave(iptablesApplyBatch('nodelocaldns', 'raw', new Map(), want).replace(/^-I (\w+) 1 /gm, '-A $1 '), 'raw');
  const withAbove = (hook: 'PREROUTING' | 'OUTPUT', ...above: string[]) => {
    const m = new Map(ours);
    m.set('OTHER', ['-j RETURN']);
    m.set(hook, [...above, ...(ours.get(hook) ?? [])]);
    return m;
  };
  const acceptNamingAChain = withAbove('OUTPUT', '-m comment --comment "then -j OTHER runs" -j ACCEPT');
  t.match(diffIptables('nodelocaldns', 'raw', acceptNamingAChain, want), [/raw OUTPUT: jump to NODELOCALDNS-OUTPUT is rule 2, below/], 'an ACCEPT above our jump is a misorder whatever its comment names');
  const jumpNamingAVerdict = withAbove('PREROUTING', '-m comment --comment "odd \\"x\\" \\\\ -j ACCEPT -g X" -j OTHER');
  t.same(diffIptables('nodelocaldns', 'raw', jumpNamingAVerdict, want), [], 'a jump to a user chain above ours is in place whatever its comment says');
  const notOurs = '-p udp -m comment --comment "keep before -j NODELOCALDNS-PREROUTING always" -j ACCEPT';
  const theirs = new Map(ours);
  theirs.set('PREROUTING', [...(ours.get('PREROUTING') ?? []), notOurs]);
  const removal = iptablesRemoveBatch('nodelocaldns', 'raw', theirs) ?? '';
  t.notMatch(removal, /keep before/, 'teardown deletes only our jumps, not a rule whose comment names our chain');
  t.same(diffIptables('nodelocaldns', 'raw', theirs, want), [], 'nor is that rule a second jump of ours');
});
