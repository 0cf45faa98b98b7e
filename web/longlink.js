// longlink.js — a minimal browser client for the longlink gateway over
// WebSocket. No dependencies, no build step: import it as an ES module.
//
//   import { LonglinkClient } from "./longlink.js";
//   const c = new LonglinkClient("ws://127.0.0.1:7100/ws", { token, device: "web",
//     onPush: (p) => console.log("type", p.type, "reached", p.version) });
//   await c.connect();
//   const answer = await c.call("echo", "hello");   // Uint8Array
//
// Each binary WebSocket message carries longlink frames exactly as on TCP
// (docs/protocol.md): an 8-byte big-endian header, then a protobuf body,
// encoded here by hand.
//
// With { serverKey: "<id>:<64 hex>" } (a pin printed by `longlink keys`) the
// connection is encrypted (docs/protocol.md "Encryption"): Noise NK with
// X25519, SHA-256 and AES-256-GCM, all from WebCrypto (which has no
// ChaCha20-Poly1305), AUTH in the first flight; then every message carries
// sealed records. A forged server fails the handshake; there is no
// fallback to plaintext.
//
// In a fleet (docs/fleet.md) give { seeds: [ws URLs…], fleetPins: ["<id>:<64 hex>"] }:
// signed node lists from AUTH_OK, CONFIG, a GOAWAY 3014 redirect or
// c.fetchNodes(".../v1/nodes") are verified with WebCrypto Ed25519, the
// newest kept (optionally in { storage: localStorage }); connect() races the
// list's ws_url addresses (race 2, 250 ms apart), bans failing ones (1 s
// doubling to 5 min) and falls back to the seeds; onReconnect(ms, url) and
// c.reconnects report reconnect times.

const MAGIC = 0xd7, VERSION = 1;
export const Cmd = Object.freeze({
  AUTH: 0x01, AUTH_OK: 0x02, HEARTBEAT: 0x03, PONG: 0x04, REQUEST: 0x05,
  RESPONSE: 0x06, PUSH: 0x07, ERROR: 0x08, GOAWAY: 0x09, POLICY: 0x0a, CONFIG: 0x0b,
  HELLO: 0x20, HELLO_OK: 0x21,
});

const enc = new TextEncoder(), dec = new TextDecoder();
const bytes = (v) => (v instanceof Uint8Array ? v : typeof v === "string" ? enc.encode(v) : new Uint8Array(v ?? 0));

// --- protobuf, the small subset the protocol needs ---
function varint(n, out) {
  n = BigInt(n);
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
}
function fieldBytes(num, data, out) {
  data = bytes(data);
  if (!data.length) return;
  varint((num << 3) | 2, out);
  varint(data.length, out);
  for (const b of data) out.push(b);
}
function fieldVarint(num, v, out) {
  if (!v) return;
  varint(num << 3, out);
  varint(v, out);
}
// scanFields calls fn(fieldNumber, value) for each field of buf, in order:
// varints as a Number when exact (else a BigInt), length-delimited fields
// as a Uint8Array; fixed 32- and 64-bit fields are skipped.
function scanFields(buf, fn) {
  let i = 0;
  const rv = () => {
    let shift = 0n, n = 0n, b;
    do {
      if (i >= buf.length) throw new Error("truncated varint");
      b = buf[i++];
      n |= BigInt(b & 0x7f) << shift;
      shift += 7n;
    } while (b & 0x80);
    return n;
  };
  while (i < buf.length) {
    const key = Number(rv()), num = key >> 3, typ = key & 7;
    if (typ === 0) {
      const v = rv();
      fn(num, v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
    } else if (typ === 2) {
      const n = Number(rv());
      if (i + n > buf.length) throw new Error("truncated field");
      fn(num, buf.subarray(i, i + n));
      i += n;
    } else if (typ === 1) i += 8;
    else if (typ === 5) i += 4;
    else throw new Error("unsupported wire type " + typ);
  }
}

// parseFields returns {fieldNumber: value} (the last value of a repeated field).
export function parseFields(buf) {
  const f = {};
  scanFields(buf, (n, v) => { f[n] = v; });
  return f;
}

// --- frames ---
export function frame(cmd, seq, body, flags = 0) {
  body = bytes(body);
  const b = new Uint8Array(8 + body.length);
  const dv = new DataView(b.buffer);
  b[0] = MAGIC;
  b[1] = (VERSION << 4) | flags;
  b[2] = cmd;
  dv.setUint16(3, seq);
  b[5] = (body.length >> 16) & 0xff;
  b[6] = (body.length >> 8) & 0xff;
  b[7] = body.length & 0xff;
  b.set(body, 8);
  return b;
}
export function* frames(buf) {
  let off = 0;
  while (off + 8 <= buf.length) {
    if (buf[off] !== MAGIC || buf[off + 1] >> 4 !== VERSION) throw new Error("bad frame header");
    const len = (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7];
    if (off + 8 + len > buf.length) throw new Error("frame spans messages");
    yield { cmd: buf[off + 2], seq: (buf[off + 3] << 8) | buf[off + 4], body: buf.subarray(off + 8, off + 8 + len) };
    off += 8 + len;
  }
}

// --- encryption: Noise_NK_25519_AESGCM_SHA256 on WebCrypto ---
const subtle = globalThis.crypto?.subtle;
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
};
const sha256 = async (...parts) => new Uint8Array(await subtle.digest("SHA-256", cat(...parts)));
async function hmac(key, data) {
  const k = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, data));
}
async function hkdf2(ck, ikm) { // Noise HKDF with two outputs
  const t = await hmac(ck, ikm);
  const o1 = await hmac(t, Uint8Array.of(1));
  return [o1, await hmac(t, cat(o1, Uint8Array.of(2)))];
}
const gcmIV = (n) => { const iv = new Uint8Array(12); new DataView(iv.buffer).setBigUint64(4, BigInt(n)); return iv; };
const gcmKey = (raw) => subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
const gcmSeal = async (key, n, ad, pt) =>
  new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: gcmIV(n), additionalData: ad, tagLength: 128 }, key, pt));
const gcmOpen = async (key, n, ad, ct) =>
  new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: gcmIV(n), additionalData: ad, tagLength: 128 }, key, ct));
async function x25519(priv, pub) {
  const k = await subtle.importKey("raw", pub, { name: "X25519" }, false, []);
  return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: k }, priv, 256));
}

// parsePin parses "<id>:<64 hex digits>".
export function parsePin(pin) {
  const m = /^(\d+):([0-9a-fA-F]{64})$/.exec(String(pin).trim());
  if (!m) throw new Error("server key pin must be <id>:<64 hex digits>");
  return { id: Number(m[1]), pub: Uint8Array.from(m[2].match(/../g), (h) => parseInt(h, 16)) };
}

// helloNK writes Noise NK message 1 carrying payload; finish reads message 2.
export async function helloNK({ id, pub }, payload) {
  const prefix = Uint8Array.of(1, 2, id >>> 24, (id >>> 16) & 0xff, (id >>> 8) & 0xff, id & 0xff);
  const name = enc.encode("Noise_NK_25519_AESGCM_SHA256");
  let h = new Uint8Array(32);
  h.set(name);
  let ck = h;
  h = await sha256(h, enc.encode("longlink/1 "), prefix);
  h = await sha256(h, pub);
  const e = await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
  const epub = new Uint8Array(await subtle.exportKey("raw", e.publicKey));
  h = await sha256(h, epub);
  let k;
  [ck, k] = await hkdf2(ck, await x25519(e.privateKey, pub));
  const c = await gcmSeal(await gcmKey(k), 0, h, payload);
  h = await sha256(h, c);
  const finish = async (msg2) => {
    const re = msg2.subarray(0, 32), c2 = msg2.subarray(32);
    let h2 = await sha256(h, re), k2, ck2;
    [ck2, k2] = await hkdf2(ck, await x25519(e.privateKey, re));
    let p;
    try { p = await gcmOpen(await gcmKey(k2), 0, h2, c2); } catch { throw new LonglinkError(0, "server failed the key check (forged server key or wrong pin)"); }
    const [ks, kr] = await hkdf2(ck2, new Uint8Array(0));
    return { payload: p, send: await gcmKey(ks), recv: await gcmKey(kr) };
  };
  return { body: cat(prefix, epub, c), finish };
}

// Records: u24 length, then AES-GCM(frames) with the length as associated data.
class Records {
  constructor(send, recv) { Object.assign(this, { send, recv, sn: 0, rn: 0 }); }
  async seal(pt) {
    const n = pt.length + 16, ad = Uint8Array.of((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    return cat(ad, await gcmSeal(this.send, this.sn++, ad, pt));
  }
  async open(buf) { // every record in buf (one WebSocket message)
    const out = [];
    for (let off = 0; off < buf.length;) {
      const n = (buf[off] << 16) | (buf[off + 1] << 8) | buf[off + 2];
      if (off + 3 + n > buf.length) throw new Error("record spans messages");
      out.push(await gcmOpen(this.recv, this.rn++, buf.subarray(off, off + 3), buf.subarray(off + 3, off + 3 + n)));
      off += 3 + n;
    }
    return cat(...out);
  }
}

// LonglinkError is a failed call (code 1000-2999) or a server close (3000-4999).
export class LonglinkError extends Error {
  constructor(code, message, retryAfterMs = 0) {
    super(`longlink ${code}: ${message}`);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
  get temporary() { return this.code >= 2000 && this.code < 3000; }
  get reconnect() { return this.code < 4000 || this.code >= 5000; }
}

// --- fleet: signed node lists (docs/fleet.md "Clients") ---
// parseAll is parseFields keeping every value of repeated fields.
function parseAll(buf) {
  const f = {};
  scanFields(buf, (n, v) => { (f[n] ??= []).push(v); });
  return f;
}
const one = (f, n) => f[n]?.[f[n].length - 1];
const str = (v) => (v ? dec.decode(v) : "");
const LIST_CONTEXT = enc.encode("longlink node list v1");
const BAN_MIN_MS = 1000, BAN_MAX_MS = 300000, REDIRECT_AVOID_MS = 30000;
const b64 = (u8) => btoa(String.fromCharCode(...u8));
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

// parseFleetPin reads "<key id>:<64 hex digits>" (`longlink keys --fleet`).
export function parseFleetPin(s) {
  const m = /^(\d+):([0-9a-fA-F]{64})$/.exec(String(s).trim());
  if (!m) throw new Error(`fleet pin ${JSON.stringify(s)}: want <key id>:<64 hex digits>`);
  return { id: Number(m[1]), key: Uint8Array.from(m[2].match(/../g), (h) => parseInt(h, 16)) };
}

// verifyNodeList checks a SignedNodeList (bytes, or {list, key_id,
// signature} as GET /v1/nodes answers in JSON) against the pins with
// WebCrypto's Ed25519; it resolves with the decoded list or rejects.
export async function verifyNodeList(signed, pins) {
  let list, keyId, sig;
  if (signed instanceof Uint8Array) {
    const f = parseAll(signed);
    list = one(f, 1) ?? new Uint8Array(0); keyId = one(f, 2) ?? 0; sig = one(f, 3) ?? new Uint8Array(0);
  } else {
    list = unb64(signed.list); keyId = signed.key_id; sig = unb64(signed.signature);
  }
  const pin = pins.find((p) => p.id === keyId);
  if (!pin) throw new LonglinkError(0, `node list signed by key ${keyId}, which is not pinned`);
  const k = await subtle.importKey("raw", pin.key, { name: "Ed25519" }, false, ["verify"]);
  if (!(await subtle.verify({ name: "Ed25519" }, k, sig, cat(LIST_CONTEXT, new Uint8Array([0]), list)))) {
    throw new LonglinkError(0, "node list signature does not verify");
  }
  const l = parseAll(list);
  return {
    nodes: (l[1] ?? []).slice(0, 5).map((n) => {
      const f = parseAll(n);
      return { addr: str(one(f, 1)), wsUrl: str(one(f, 2)), host: str(one(f, 3)), weight: one(f, 4) ?? 0, region: str(one(f, 5)), carrier: str(one(f, 6)) };
    }),
    ttlS: one(l, 2) ?? 0, backoffMinMs: one(l, 3) ?? 0, backoffMaxMs: one(l, 4) ?? 0, issuedMs: one(l, 5) ?? 0,
    region: str(one(l, 6)), carrier: str(one(l, 7)), race: one(l, 8) ?? 0, raceStaggerMs: one(l, 9) ?? 0,
    signed: signed instanceof Uint8Array ? signed : null,
  };
}

export class LonglinkClient {
  // url is a seed WebSocket URL (seeds may add more). Fleet options:
  // fleetPins (pins of the node-list keys), race (2), raceStaggerMs (250),
  // storage (a localStorage-like object caching the newest list),
  // onNodeList(list), onReconnect(ms, url).
  constructor(url, { token, device = "web", onPush, onState, reconnect = true, pongTimeoutMs = 10000, serverKey,
    seeds = [], fleetPins = [], race = 2, raceStaggerMs = 250, storage, onNodeList, onReconnect } = {}) {
    Object.assign(this, { url, token, device, onPush, onState, reconnect, pongTimeoutMs, race, raceStaggerMs, storage, onNodeList, onReconnect });
    this.pin = serverKey ? parsePin(serverKey) : null;
    this.pending = new Map();
    this.seq = 0;
    this.attempt = 0;
    this.closed = false;
    this.seeds = [...(url ? [url] : []), ...seeds.filter((s) => s !== url)];
    this.fleetPins = fleetPins.map(parseFleetPin);
    this.bans = new Map();
    this.list = null;
    this.reconnects = { count: 0, lastMs: 0 };
    this.listReady = Promise.resolve();
    const cached = storage?.getItem?.("longlink.nodes");
    if (cached) this.listReady = this.acceptNodeList(unb64(cached)).catch(() => false);
  }

  // acceptNodeList takes a signed list if it verifies and is newer than the
  // one held; resolves true when it replaced it.
  async acceptNodeList(signed) {
    const l = await verifyNodeList(signed, this.fleetPins);
    if (this.list && l.issuedMs <= this.list.issuedMs) return false;
    this.list = l;
    if (l.backoffMinMs) this.backoffMinMs = l.backoffMinMs;
    if (l.backoffMaxMs) this.backoffMaxMs = l.backoffMaxMs;
    if (l.signed) try { this.storage?.setItem?.("longlink.nodes", b64(l.signed)); } catch { /* full or denied */ }
    this.onNodeList?.(l);
    return true;
  }

  // fetchNodes gets a list from GET /v1/nodes (JSON; the gateway's HTTP
  // port must allow this page's origin) and offers it to acceptNodeList.
  async fetchNodes(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) throw new LonglinkError(0, `GET ${url}: ${r.status}`);
    return this.acceptNodeList(await r.json());
  }

  // listStale: the list held is older than its ttl_s (still used).
  get listStale() { return !!this.list && this.list.ttlS > 0 && Date.now() - this.list.issuedMs > this.list.ttlS * 1000; }

  _banned(u) { return (this.bans.get(u)?.until ?? 0) > Date.now(); }
  _ban(u) {
    const b = this.bans.get(u) ?? { fails: 0, until: 0 };
    b.until = Date.now() + Math.min(BAN_MAX_MS, BAN_MIN_MS * 2 ** Math.min(b.fails, 16));
    b.fails++;
    this.bans.set(u, b);
  }
  _avoid(u, ms) { const b = this.bans.get(u) ?? { fails: 0, until: 0 }; b.until = Date.now() + ms; this.bans.set(u, b); }

  // _candidates: the list's unbanned ws URLs, else the unbanned seeds, else
  // every seed (the backoff paces them).
  _candidates() {
    let c = (this.list?.nodes ?? []).map((n) => n.wsUrl).filter((u) => u && !this._banned(u));
    if (!c.length) c = this.seeds.filter((u) => !this._banned(u));
    if (!c.length) c = [...this.seeds];
    if (this.preferred) c = [this.preferred, ...c.filter((u) => u !== this.preferred)];
    return c;
  }

  // connect races the candidates (the first to reach AUTH_OK wins, the
  // others are closed; each next one starts raceStaggerMs after the
  // previous, or at once when one fails); resolves with the AUTH_OK fields.
  async connect() {
    await this.listReady;
    const cands = this._candidates();
    const race = Math.min(3, Math.max(1, this.list?.race || this.race));
    const stagger = this.list?.raceStaggerMs || this.raceStaggerMs;
    return new Promise((resolve, reject) => {
      let idx = 0, running = 0, won = false, lastErr = null, timer;
      const attempts = [];
      const fail = (e) => {
        this.preferred = undefined;
        this._state("disconnected");
        this._scheduleReconnect();
        reject(e);
      };
      const next = () => {
        if (won || this.closed || idx >= cands.length) return;
        const a = this._open(cands[idx++]);
        running++;
        attempts.push(a);
        a.done.then((auth) => {
          running--;
          if (won || this.closed) { a.ws.close(1000); return; }
          won = true;
          clearTimeout(timer);
          for (const o of attempts) if (o !== a) o.abort();
          this.bans.delete(a.url);
          a.commit();
          this.attempt = 0;
          this.auth = auth;
          if (this.lostAt) {
            this.reconnects = { count: this.reconnects.count + 1, lastMs: Date.now() - this.lostAt };
            this.onReconnect?.(this.reconnects.lastMs, a.url);
          }
          this._startHeartbeat(auth.heartbeat);
          this._state("connected");
          resolve(auth);
        }, (e) => {
          running--;
          if (won) return;
          if (!e.aborted) this._ban(a.url);
          if (!lastErr || (e.code && !lastErr.code)) lastErr = e;
          if (e.code && !e.reconnect) { this.closed = true; won = true; clearTimeout(timer); for (const o of attempts) o.abort(); return fail(e); }
          if (idx < cands.length) next();
          else if (running === 0) fail(lastErr);
        });
      };
      const tick = () => {
        timer = setTimeout(() => {
          if (!won && running < race) next();
          if (!won && idx < cands.length) tick();
        }, stagger);
      };
      next();
      tick();
    });
  }

  // _open is one attempt: socket, optional handshake, AUTH. commit() makes
  // it the client's connection; abort() ends a loser.
  _open(url) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const a = { ws, url };
    let authed = false, committed = false, hs = null, rx = Promise.resolve(), sec = null, tx = Promise.resolve();
    const early = [];
    const send = (b) => {
      if (!sec) return ws.send(b);
      tx = tx.then(async () => ws.send(await sec.seal(b))).catch(() => {});
    };
    a.done = new Promise((resolve, reject) => {
      a.abort = () => {
        const e = new LonglinkError(0, "another address won the race");
        e.aborted = true;
        reject(e);
        ws.close(1000);
      };
      a.commit = () => {
        committed = true;
        Object.assign(this, { ws, sec, tx, url });
        this.goodbye = false;
        for (const f of early) this._frame(f);
      };
      ws.onopen = async () => {
        const body = [];
        fieldBytes(1, this.token, body);
        fieldBytes(2, this.device, body);
        const auth = frame(Cmd.AUTH, 0, new Uint8Array(body));
        if (!this.pin) return ws.send(auth);
        try {
          hs = await helloNK(this.pin, auth);
          ws.send(frame(Cmd.HELLO, 0, hs.body, 0x1));
        } catch (e) { this.closed = true; reject(e); ws.close(1000); }
      };
      // Messages are handled one at a time, in order: opening records is async.
      ws.onmessage = (ev) => { rx = rx.then(() => onMessage(new Uint8Array(ev.data))).catch((e) => { reject(e); ws.close(1000); }); };
      const onMessage = async (data) => {
        if (this.pin && !sec) { // HELLO_OK, or a plaintext ERROR before the keys
          const [f] = frames(data);
          if (f?.cmd !== Cmd.HELLO_OK) {
            if (f?.cmd === Cmd.ERROR) reject(this._closeError(f));
            ws.close(1000);
            return;
          }
          const r = await hs.finish(f.body).catch((e) => { this.closed = true; throw e; });
          sec = new Records(r.send, r.recv);
          send(frame(Cmd.HEARTBEAT, 0)); // the first record: the server admits the session now
          data = r.payload;
        } else if (sec) {
          data = await sec.open(data);
        }
        for (const f of frames(data)) {
          if (!authed) {
            if (f.cmd === Cmd.AUTH_OK) {
              authed = true;
              const ok = parseFields(f.body);
              const hb = ok[4] ? parseFields(ok[4]) : {};
              if (ok[7]) await this.acceptNodeList(new Uint8Array(ok[7])).catch(() => {});
              resolve({ uid: ok[1], device: ok[2] ? dec.decode(ok[2]) : "", node: ok[5] ? dec.decode(ok[5]) : "", heartbeat: hb });
              continue;
            }
            reject(this._closeError(f));
            continue;
          }
          if (committed) this._frame(f);
          else early.push(f);
        }
      };
      ws.onclose = () => {
        if (!committed) return reject(new LonglinkError(0, "connection closed before AUTH_OK"));
        if (this.ws !== ws) return;
        this._stopHeartbeat();
        for (const [, p] of this.pending) p.reject(new LonglinkError(0, "connection lost"));
        this.pending.clear();
        this.lostAt = Date.now();
        if (!this.goodbye) this._ban(url); // lost without a goodbye: the host may be gone
        this._state("disconnected");
        this._scheduleReconnect();
      };
    });
    return a;
  }

  // call invokes a backend method; resolves with the answer body.
  call(method, body, { timeoutMs = 10000 } = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return Promise.reject(new LonglinkError(0, "not connected"));
    do this.seq = (this.seq + 1) & 0xffff; while (this.seq === 0 || this.pending.has(this.seq));
    const seq = this.seq, b = [];
    fieldBytes(1, method, b);
    fieldBytes(2, body, b);
    fieldVarint(3, timeoutMs, b);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(seq); reject(new LonglinkError(2001, "timeout")); }, timeoutMs);
      this.pending.set(seq, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this._send(frame(Cmd.REQUEST, seq, new Uint8Array(b)));
    });
  }

  // _send writes frames, sealed in order when encrypted.
  _send(b) {
    if (!this.sec) return this.ws.send(b);
    const ws = this.ws, sec = this.sec;
    this.tx = this.tx.then(async () => ws.send(await sec.seal(b))).catch(() => {});
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000, "bye");
  }

  _frame(f) {
    this.lastRecv = Date.now();
    switch (f.cmd) {
      case Cmd.RESPONSE: {
        const p = this.pending.get(f.seq);
        if (!p) return;
        this.pending.delete(f.seq);
        const r = parseFields(f.body);
        if (r[1]) p.reject(new LonglinkError(r[1], r[2] ? dec.decode(r[2]) : "", r[4] ?? 0));
        else p.resolve(r[3] ?? new Uint8Array(0));
        return;
      }
      case Cmd.PUSH: {
        const p = parseFields(f.body);
        this.onPush?.({ type: p[1] ?? 0, version: p[2] ?? 0, payload: p[3] ?? new Uint8Array(0) });
        return;
      }
      case Cmd.POLICY:
        this._startHeartbeat(parseFields(f.body));
        return;
      case Cmd.CONFIG: { // degrade mode: send less
        const cc = parseFields(f.body);
        this.degrade = { level: cc[1] ?? 0, shakeMinIntervalMs: cc[5] ?? 0, shakePermille: cc[6] ?? 1000 };
        if (cc[2]) this._startHeartbeat(parseFields(cc[2]));
        // Level 0 carries no backoff (zero is "unchanged"): put back the one from before the degrade.
        if (!cc[1] && this.undegraded) { [this.backoffMinMs, this.backoffMaxMs] = this.undegraded; this.undegraded = null; }
        else if (cc[1] && !this.undegraded) this.undegraded = [this.backoffMinMs, this.backoffMaxMs];
        if (cc[3]) this.backoffMinMs = cc[3];
        if (cc[4]) this.backoffMaxMs = cc[4];
        if (cc[7]) this.acceptNodeList(new Uint8Array(cc[7])).catch(() => {});
        return;
      }
      case Cmd.ERROR:
      case Cmd.GOAWAY: {
        const e = this._closeError(f);
        this.closed = this.closed || !e.reconnect;
        this.retryHint = e.retryAfterMs;
        this.goodbye = true;
        if (f.cmd === Cmd.GOAWAY) {
          const g = parseFields(f.body);
          if (g[3]) this.preferred = this.url.replace(/\/\/[^/]+/, "//" + dec.decode(g[3]));
          if (e.code === 3014) this._avoid(this.url, REDIRECT_AVOID_MS); // sent away: go elsewhere for a while
          if (g[5]) { // a node list to follow: at once when it is fresh
            const signed = new Uint8Array(g[5]);
            this.listReady = this.acceptNodeList(signed).catch(() => false);
            if (e.code === 3014) this.redirectNow = true; // follow the list at once, not after a backoff
          }
        }
        this.ws.close(1000);
        return;
      }
    }
  }

  _closeError(f) {
    const e = parseFields(f.body);
    const retry = f.cmd === Cmd.GOAWAY ? e[2] : e[3];
    return new LonglinkError(e[1] ?? 0, e[f.cmd === Cmd.GOAWAY ? 4 : 2] ? dec.decode(e[f.cmd === Cmd.GOAWAY ? 4 : 2]) : "", retry ?? 0);
  }

  // A browser can't see NAT state, so it simply heartbeats at the server's
  // minimum interval and treats a missing PONG as a dead link.
  _startHeartbeat(hb) {
    this._stopHeartbeat();
    const everyMs = Math.max(1, hb[1] ?? 30) * 1000;
    this.hbTimer = setInterval(() => {
      if (this.ws?.readyState !== WebSocket.OPEN) return;
      const sent = Date.now();
      this._send(frame(Cmd.HEARTBEAT, 0));
      setTimeout(() => { if ((this.lastRecv ?? 0) < sent) this.ws?.close(4000, "dead link"); }, this.pongTimeoutMs);
    }, everyMs);
  }
  _stopHeartbeat() { clearInterval(this.hbTimer); }

  _scheduleReconnect() {
    if (this.closed || !this.reconnect) return;
    this.attempt++;
    const lo = this.backoffMinMs ?? 500, hi = this.backoffMaxMs ?? 60000; // the server may set them (CONFIG)
    const ceil = Math.min(hi, lo * 2 ** Math.min(this.attempt, 7));
    const delay = this.redirectNow ? (this.retryHint ?? 0) : Math.max(this.retryHint ?? 0, lo / 2 + Math.random() * ceil);
    this.retryHint = 0;
    this.redirectNow = false;
    this.retryTimer = setTimeout(() => this.connect().catch(() => {}), delay);
  }

  _state(s) { this.onState?.(s); }
}
