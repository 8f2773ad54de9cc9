/**
 * Removes records an upstream answer has no business carrying (cache
 * poisoning by "additional" data, the Kaminsky-era lesson): before an answer
 * is cached, every record must belong to the question.
 *
 *   answer      owned by the question name, or by a name the answer's own
 *               CNAME chain leads to (DNAME: owned by an ancestor of one);
 *               an RRSIG also with the RRset it covers (a DNAME's);
 *   authority   owned by the question name, a chain target or one of their
 *               ancestors (the zone's SOA and NS); NSEC/NSEC3 proofs under
 *               such a zone or under a signer of the answer's RRSIGs, with
 *               the RRSIGs of the kept RRsets;
 *   additional  addresses and signatures of names the kept records point
 *               at (NS, MX, SRV targets), and OPT.
 *
 * A full decode (dns-packet) once per upstream answer, before it is cached:
 * a miss already costs a round trip, and a hit never comes here. An answer
 * with nothing to remove keeps its bytes.
 */
import dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket } from 'dns-packet';
import { scanAnswer } from './answer.js';
import { plainlyInBailiwick } from './bailiwick-fast.js';
import { HEADER_LEN, MAX_MESSAGE } from './constants.js';
import { skipName } from './name.js';

export interface Scrubbed {
  readonly msg: Buffer;
  /** Records removed. */
  readonly removed: number;
}

/** DNS folds ASCII letters only (RFC 4343); toLowerCase alone would fold look-alikes too (the Kelvin sign to "k"). */
const lower = (n: string): string => n.replace(/[A-Z]+/g, (c) => c.toLowerCase()).replace(/\.$/, '');

/** True when `name` is `zone` or below it. */
function under(name: string, zone: string): boolean {
  return zone === '' || name === zone || name.endsWith(`.${zone}`);
}

function targetOf(rr: Answer): string | null {
  const d = (rr as { data?: unknown }).data;
  switch (rr.type) {
    case 'NS':
    case 'CNAME':
    case 'PTR':
      return typeof d === 'string' ? lower(d) : null;
    case 'MX':
      return typeof (d as { exchange?: unknown })?.exchange === 'string' ? lower((d as { exchange: string }).exchange) : null;
    case 'SRV':
      return typeof (d as { target?: unknown })?.target === 'string' ? lower((d as { target: string }).target) : null;
    default:
      return null;
  }
}

/** `name` and each of its ancestors up to the root (''), as `lower` spells them. */
function* selfAndAncestors(name: string): Generator<string> {
  for (let at = 0; ; ) {
    yield name.slice(at);
    if (at >= name.length) return;
    const dot = name.indexOf('.', at);
    at = dot < 0 ? name.length : dot + 1;
  }
}

/**
 * `names` and all their ancestors. A name's walk stops at the first ancestor
 * already in (its own ancestors are then in too), so the work is the distinct
 * names and ancestors, not names times labels.
 */
function ancestorsOf(names: Iterable<string>): Set<string> {
  const all = new Set<string>();
  for (const name of names) {
    for (const n of selfAndAncestors(name)) {
      if (all.has(n)) break;
      all.add(n);
    }
  }
  return all;
}

/**
 * Whether `name` is one of `zones` or below one. `memo` holds the answer for
 * every name walked before, so a walk stops at the first ancestor already
 * known: over all calls each distinct name and ancestor is looked at once
 * (NSEC owners of 127 labels each, a pointer apiece, cost a look-up per label).
 */
function underAny(name: string, zones: ReadonlySet<string>, memo: Map<string, boolean>): boolean {
  const walked: string[] = [];
  let found = false;
  for (const n of selfAndAncestors(name)) {
    const known = memo.get(n);
    if (known !== undefined) {
      found = known;
      break;
    }
    walked.push(n);
    if (zones.has(n)) {
      found = true;
      break;
    }
  }
  for (const n of walked) memo.set(n, found);
  return found;
}

/**
 * The records of the answer section that `names` (the question's) and the
 * names its CNAME chain leads to own, a DNAME also when it is owned by an
 * ancestor of one; `names` grows by each CNAME target kept. Each record is
 * looked at once and each name once (with its ancestors, when there are
 * DNAMEs): a chain listed backwards, beside DNAMEs of other names, once took
 * a pass over every record per link and held each DNAME against every name.
 */
function keptForNames(answers: readonly Answer[], names: Set<string>): Set<Answer> {
  const byOwner = new Map<string, Answer[]>();
  const dnames = new Map<string, Answer[]>();
  for (const rr of answers) {
    const owner = lower(rr.name);
    for (const index of rr.type === 'DNAME' ? [byOwner, dnames] : [byOwner]) {
      const list = index.get(owner);
      if (list === undefined) index.set(owner, [rr]);
      else list.push(rr);
    }
  }
  const kept = new Set<Answer>();
  // Ancestors whose DNAMEs are kept already: a walk stops at the first (those above it were walked with it).
  const walked = new Set<string>();
  const todo = [...names];
  for (let name = todo.pop(); name !== undefined; name = todo.pop()) {
    const owned = [...(byOwner.get(name) ?? [])];
    if (dnames.size > 0) {
      for (const zone of selfAndAncestors(name)) {
        if (walked.has(zone)) break;
        walked.add(zone);
        owned.push(...(dnames.get(zone) ?? []));
      }
    }
    for (const rr of owned) {
      if (kept.has(rr)) continue;
      kept.add(rr);
      const t = rr.type === 'CNAME' ? targetOf(rr) : null;
      if (t !== null && !names.has(t)) {
        names.add(t);
        todo.push(t);
      }
    }
  }
  return kept;
}

/** Adds to `kept` the RRSIGs of `section` over an RRset kept there (same owner, the type they cover). */
function keepSignatures(section: readonly Answer[], kept: Set<Answer>): void {
  const rrsets = new Set<string>();
  for (const rr of kept) rrsets.add(`${lower(rr.name)} ${rr.type}`);
  for (const rr of section) {
    if (rr.type === 'RRSIG' && rrsets.has(`${lower(rr.name)} ${rr.data.typeCovered}`)) kept.add(rr);
  }
}

/**
 * The scrubbed answer; null when every record belongs; 'unusable' when
 * records must go but the rest cannot be re-encoded, or when the message is
 * not something dns-packet reads (then the answer is treated as malformed,
 * never cached with the intruders).
 */
export function scrubOutOfBailiwick(msg: Buffer): Scrubbed | null | 'unusable' {
  // Most answers (an address, or a negative answer with its zone's SOA): nothing to remove, known without a decode.
  if (plainlyInBailiwick(msg)) return null;
  // Only what our scanner takes goes to the decode: dns-packet follows pointers without counting them, and a hostile
  // answer of names that are runs of pointers to pointers cost it most of a second; scanAnswer bounds every name it
  // reads (owners, and the names in the RDATA of the types that carry compressed ones), and what it refuses is never
  // cached or served anyway.
  if (scanAnswer(msg) === undefined) return 'unusable';
  let p: DecodedPacket;
  try {
    p = dnsPacket.decode(msg);
  } catch {
    // Not known clean (the fast path said so), and unreadable here: whatever it carries cannot be checked. Our own
    // scanner is no guarantee: it reads no OPT RDATA, nor the names of the types it does not know, where dns-packet throws.
    return 'unusable';
  }
  const q = p.questions?.[0];
  if (q === undefined) return null;
  const answers = p.answers ?? [];
  const authorities = p.authorities ?? [];
  const additionals = p.additionals ?? [];

  // The names the answer may speak for: the question, then wherever its CNAME chain leads (in any order).
  const names = new Set([lower(q.name)]);
  const keptAnswers = keptForNames(answers, names);
  // A kept RRset's signature goes with it: a DNAME's RRSIG is owned by the DNAME's owner, no name of the chain.
  keepSignatures(answers, keptAnswers);
  // The zones whose denial proofs belong here: the answer's signers (the wildcard proof of a signed answer comes with
  // no SOA beside it) and the owners of a kept SOA or NS. A signer counts only above its own record, which the answer
  // speaks for: where a kept SOA could stand too.
  const zones = new Set<string>();
  for (const rr of keptAnswers) {
    if (rr.type !== 'RRSIG') continue;
    const signer = lower(rr.data.signersName);
    if (under(lower(rr.name), signer)) zones.add(signer);
  }
  // Each authority record and each NSEC is looked up, not held against every name or zone: that was quadratic, and a
  // hostile 64 KB answer (NS records of the zone beside NSECs owned elsewhere) held the event loop for most of a second.
  const speaksFor = ancestorsOf(names);
  const keptAuth = new Set<Answer>();
  for (const rr of authorities) {
    const owner = lower(rr.name);
    if (!speaksFor.has(owner)) continue;
    keptAuth.add(rr);
    if (rr.type === 'SOA' || rr.type === 'NS') zones.add(owner);
  }
  // DNSSEC denial proofs are owned by other names of the same zone.
  const inZone = new Map<string, boolean>();
  for (const rr of authorities) {
    if ((rr.type === 'NSEC' || rr.type === 'NSEC3') && underAny(lower(rr.name), zones, inZone)) keptAuth.add(rr);
  }
  keepSignatures(authorities, keptAuth);
  const glue = new Set<string>();
  for (const rr of [...keptAnswers, ...keptAuth]) {
    const t = rr.type === 'CNAME' ? null : targetOf(rr);
    if (t !== null) glue.add(t);
  }
  const keptAdd = additionals.filter(
    (rr) => rr.type === 'OPT' || ((rr.type === 'A' || rr.type === 'AAAA' || rr.type === 'RRSIG') && glue.has(lower(rr.name))),
  );
  const removed = answers.length - keptAnswers.size + authorities.length - keptAuth.size + additionals.length - keptAdd.length;
  if (removed === 0) return null;
  try {
    const kept = { ...p, answers: answers.filter((rr) => keptAnswers.has(rr)), authorities: authorities.filter((rr) => keptAuth.has(rr)), additionals: keptAdd };
    // dns-packet writes every name in full: past the largest message the scan would refuse it anyway, so it is not
    // written (a hostile answer of long names, a pointer each, would take a 1.5 MB encode).
    if (dnsPacket.encodingLength(kept) > MAX_MESSAGE) return 'unusable';
    const out = dnsPacket.encode(kept);
    return sameQuestion(msg, out) ? { msg: out, removed } : 'unusable';
  } catch {
    return 'unusable';
  }
}

/**
 * Whether `out` starts with `msg`'s question, byte for byte. dns-packet reads
 * labels as UTF-8 text: a label that is not UTF-8, or holds a dot, comes back
 * as another name (often of another length). The cache writes each client's
 * spelling over the stored question, so that must still be the name asked:
 * and names that do not survive the decode were not compared as sent either.
 */
function sameQuestion(msg: Buffer, out: Buffer): boolean {
  const end = skipName(msg, HEADER_LEN) + 4;
  return end > HEADER_LEN + 4 && end <= msg.length && end <= out.length && msg.compare(out, HEADER_LEN, end, HEADER_LEN, end) === 0;
}
