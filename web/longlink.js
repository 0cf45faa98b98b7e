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
// parse returns {fieldNumber: value}: BigInt-safe Numbers for varints
// (as Number when exact), Uint8Array for length-delimited fields.
export function parseFields(buf) {
  const f = {};
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
      f[num] = v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    } else if (typ === 2) {
      const n = Number(rv());
      f[num] = buf.subarray(i, i + n);
      i += n;
    } else if (typ === 1) i += 8;
    else if (typ === 5) i += 4;
    else throw new Error("unsupported wire type " + typ);
  }
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

export class LonglinkClient {
  constructor(url, { token, device = "web", onPush, onState, reconnect = true, pongTimeoutMs = 10000, serverKey } = {}) {
    Object.assign(this, { url, token, device, onPush, onState, reconnect, pongTimeoutMs });
    this.pin = serverKey ? parsePin(serverKey) : null;
    this.pending = new Map();
    this.seq = 0;
    this.attempt = 0;
    this.closed = false;
  }

  // connect opens the socket and authenticates; resolves with the AUTH_OK fields.
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let authed = false, hs = null, rx = Promise.resolve();
      this.sec = null;
      this.tx = Promise.resolve();
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
        if (this.pin && !this.sec) { // HELLO_OK, or a plaintext ERROR before the keys
          const [f] = frames(data);
          if (f?.cmd !== Cmd.HELLO_OK) {
            if (f?.cmd === Cmd.ERROR) reject(this._closeError(f));
            ws.close(1000);
            return;
          }
          const r = await hs.finish(f.body).catch((e) => { this.closed = true; throw e; });
          this.sec = new Records(r.send, r.recv);
          this._send(frame(Cmd.HEARTBEAT, 0)); // the first record: the server admits the session now
          data = r.payload;
        } else if (this.sec) {
          data = await this.sec.open(data);
        }
        for (const f of frames(data)) {
          if (!authed) {
            if (f.cmd === Cmd.AUTH_OK) {
              authed = true;
              this.attempt = 0;
              const ok = parseFields(f.body);
              const hb = ok[4] ? parseFields(ok[4]) : {};
              this.auth = { uid: ok[1], device: ok[2] ? dec.decode(ok[2]) : "", node: ok[5] ? dec.decode(ok[5]) : "", heartbeat: hb };
              this._startHeartbeat(hb);
              this._state("connected");
              resolve(this.auth);
              continue;
            }
            const e = this._closeError(f);
            this.closed = this.closed || !e.reconnect;
            reject(e);
            continue;
          }
          this._frame(f);
        }
      };
      ws.onclose = () => {
        this._stopHeartbeat();
        for (const [, p] of this.pending) p.reject(new LonglinkError(0, "connection lost"));
        this.pending.clear();
        if (!authed) reject(new LonglinkError(0, "connection closed before AUTH_OK"));
        this._state("disconnected");
        this._scheduleReconnect();
      };
    });
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
        if (cc[3]) this.backoffMinMs = cc[3];
        if (cc[4]) this.backoffMaxMs = cc[4];
        return;
      }
      case Cmd.ERROR:
      case Cmd.GOAWAY: {
        const e = this._closeError(f);
        this.closed = this.closed || !e.reconnect;
        this.retryHint = e.retryAfterMs;
        this.redirect = f.cmd === Cmd.GOAWAY ? this._redirect(f) : undefined;
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

  _redirect(f) {
    const g = parseFields(f.body);
    return g[3] ? dec.decode(g[3]) : undefined;
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
    const delay = Math.max(this.retryHint ?? 0, lo / 2 + Math.random() * ceil);
    this.retryHint = 0;
    if (this.redirect) this.url = this.url.replace(/\/\/[^/]+/, "//" + this.redirect);
    this.retryTimer = setTimeout(() => this.connect().catch(() => {}), delay);
  }

  _state(s) { this.onState?.(s); }
}
