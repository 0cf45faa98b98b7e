#!/usr/bin/env python3
"""An encrypted longlink client written from docs/protocol.md ("Encryption")
and the Noise specification alone: Noise NK by hand on the `cryptography`
package's X25519, ChaCha20-Poly1305, AES-256-GCM and SHA-256, no Go code.

usage: pynoise.py vectors DOC          reproduce the doc's test vectors
       pynoise.py live HOST:PORT PIN TOKEN MESSAGE
Exit code 3: the cryptography package is missing.
"""
import hashlib
import hmac
import os
import re
import socket
import struct
import sys

try:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives import serialization
except ImportError:
    sys.exit(3)

HELLO, HELLO_OK = 0x20, 0x21
AUTH, AUTH_OK, HEARTBEAT, PONG, REQUEST, RESPONSE, ERROR = 1, 2, 3, 4, 5, 6, 8
SUITES = {1: b"Noise_NK_25519_ChaChaPoly_SHA256", 2: b"Noise_NK_25519_AESGCM_SHA256"}


def raw_pub(priv):
    return priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def nonce(suite, n):
    return b"\0" * 4 + (struct.pack("<Q", n) if suite == 1 else struct.pack(">Q", n))


def aead(suite, k):
    return ChaCha20Poly1305(k) if suite == 1 else AESGCM(k)


def hkdf(ck, ikm):
    t = hmac.new(ck, ikm, hashlib.sha256).digest()
    o1 = hmac.new(t, b"\x01", hashlib.sha256).digest()
    o2 = hmac.new(t, o1 + b"\x02", hashlib.sha256).digest()
    return o1, o2


class Initiator:
    """Noise NK, initiator side (Noise spec sections 5.1-5.3)."""

    def __init__(self, suite, prologue, rs, e_priv):
        name = SUITES[suite]
        self.suite = suite
        self.h = name.ljust(32, b"\0") if len(name) <= 32 else hashlib.sha256(name).digest()
        self.ck, self.k, self.n = self.h, None, 0
        self.mix_hash(prologue)
        self.mix_hash(rs)  # pre-message: <- s
        self.rs, self.e = rs, e_priv

    def mix_hash(self, data):
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, self.k = hkdf(self.ck, ikm)
        self.n = 0

    def dh(self, pub):
        return self.e.exchange(X25519PublicKey.from_public_bytes(pub))

    def message1(self, payload):  # -> e, es
        e_pub = raw_pub(self.e)
        self.mix_hash(e_pub)
        self.mix_key(self.dh(self.rs))
        c = aead(self.suite, self.k).encrypt(nonce(self.suite, self.n), payload, self.h)
        self.n += 1
        self.mix_hash(c)
        return e_pub + c

    def read_message2(self, msg):  # <- e, ee
        re_, c = msg[:32], msg[32:]
        self.mix_hash(re_)
        self.mix_key(self.dh(re_))
        p = aead(self.suite, self.k).decrypt(nonce(self.suite, self.n), c, self.h)
        self.mix_hash(c)
        k1, k2 = hkdf(self.ck, b"")
        return p, k1, k2


class Records:
    def __init__(self, suite, send, recv):
        self.suite, self.send_k, self.recv_k, self.sn, self.rn = suite, send, recv, 0, 0

    def seal(self, frame_bytes):
        n = len(frame_bytes) + 16
        ad = bytes([n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF])
        ct = aead(self.suite, self.send_k).encrypt(nonce(self.suite, self.sn), frame_bytes, ad)
        self.sn += 1
        return ad + ct

    def open(self, rec):
        ct = aead(self.suite, self.recv_k).decrypt(nonce(self.suite, self.rn), rec[3:], rec[:3])
        self.rn += 1
        return ct


def frame(cmd, seq, body=b"", flags=0):
    n = len(body)
    return struct.pack(">BBBH", 0xD7, 0x10 | flags, cmd, seq) + bytes([n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF]) + body


def split(b):
    n = b[5] << 16 | b[6] << 8 | b[7]
    return b[2], struct.unpack(">H", b[3:5])[0], b[8:8 + n], b[8 + n:]


def hello_body(suite, key_id, initiator_factory, auth):
    prefix = bytes([1, suite]) + struct.pack(">I", key_id)
    ini = initiator_factory(b"longlink/1 " + prefix)
    return ini, frame(HELLO, 0, prefix + ini.message1(auth), flags=1)


def counting(start):
    return bytes((start + i) & 0xFF for i in range(32))


def vectors(doc):
    text = open(doc).read()
    block = text.split("checked by the same test -->", 1)[1].split("<!-- end of test vectors -->", 1)[0]
    checked = 0
    for part in block.strip("`\n").split("\n\n"):
        v = {}
        for line in part.strip("`\n").splitlines():
            m = re.match(r"(.+?)\s{2,}(\S+)$", line)
            if m:
                v[m.group(1).strip()] = m.group(2)
        suite = 1 if "ChaChaPoly" in v["protocol"] else 2
        s_priv = X25519PrivateKey.from_private_bytes(counting(0x00))
        assert raw_pub(s_priv).hex() == v["server static public key"], "static public key"
        e_priv = X25519PrivateKey.from_private_bytes(counting(0x20))
        auth = bytes.fromhex(v["AUTH frame (first-flight payload)"])
        ini, hello = hello_body(suite, 1, lambda pro: Initiator(suite, pro, raw_pub(s_priv), e_priv), auth)
        assert hello.hex() == v["HELLO frame on the wire"], "HELLO frame differs"
        _, _, body, _ = split(bytes.fromhex(v["HELLO_OK frame on the wire"]))
        payload, k1, k2 = ini.read_message2(body)
        assert payload.hex() == v["AUTH_OK frame (HELLO_OK payload)"], "HELLO_OK payload"
        if "client-to-server key" in v:
            assert k1.hex() == v["client-to-server key"] and k2.hex() == v["server-to-client key"], "Split() keys"
        r = Records(suite, k1, k2)
        assert r.seal(frame(HEARTBEAT, 1)).hex() == v["record 0 c->s: HEARTBEAT seq 1"], "record 0"
        assert r.open(bytes.fromhex(v["record 0 s->c: PONG seq 1"])) == frame(PONG, 1), "PONG record"
        assert r.seal(frame(HEARTBEAT, 2)).hex() == v["record 1 c->s: HEARTBEAT seq 2"], "record 1"
        checked += 1
        print("vectors ok:", v["protocol"])
    assert checked == 2, "found %d vector blocks" % checked


def live(addr, pin, token, message):
    key_id, pub = pin.split(":")
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    auth = frame(AUTH, 0, b"\x0a" + bytes([len(token)]) + token.encode())
    e_priv = X25519PrivateKey.generate()
    ini, hello = hello_body(1, int(key_id), lambda pro: Initiator(1, pro, bytes.fromhex(pub), e_priv), auth)
    sock.sendall(hello)
    buf = b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            buf += chunk

    need(8)
    need(8 + (buf[5] << 16 | buf[6] << 8 | buf[7]))
    cmd, _, body, buf = split(buf)
    if cmd != HELLO_OK:
        _, _, eb, _ = split(frame(cmd, 0, body))
        print("handshake refused: cmd", cmd, eb.hex())
        return
    payload, k1, k2 = ini.read_message2(body)
    rcmd, _, _, _ = split(payload)
    print("HELLO_OK carries", "AUTH_OK" if rcmd == AUTH_OK else rcmd)
    r = Records(1, k1, k2)

    def next_frame():
        need(3)
        need(3 + (buf[0] << 16 | buf[1] << 8 | buf[2]))
        n = 3 + (buf[0] << 16 | buf[1] << 8 | buf[2])
        rec = buf[:n]
        return split(r.open(rec)), n

    sock.sendall(r.seal(frame(HEARTBEAT, 7)))
    (cmd, seq, _, _), n = next_frame()
    buf = buf[n:]
    print("sealed pong seq=%d" % seq if cmd == PONG else "unexpected %d" % cmd)
    req = b"\x0a\x04echo" + b"\x12" + bytes([len(message)]) + message.encode()
    sock.sendall(r.seal(frame(REQUEST, 9, req)))
    (cmd, seq, body, _), n = next_frame()
    buf = buf[n:]
    print("sealed echo seq=%d: %s" % (seq, body[2:].decode() if body[:1] == b"\x1a" else body.hex()))


if __name__ == "__main__":
    if sys.argv[1] == "vectors":
        vectors(sys.argv[2])
    else:
        live(*sys.argv[2:6])
