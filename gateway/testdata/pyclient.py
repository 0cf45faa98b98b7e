#!/usr/bin/env python3
"""A longlink client written from docs/protocol.md alone (no SDK, no protobuf
library): connect, AUTH, HEARTBEAT, call `echo`, print what came back.

usage: pyclient.py HOST:PORT TOKEN MESSAGE
"""
import socket
import struct
import sys

MAGIC, VERSION = 0xD7, 1
AUTH, AUTH_OK, HEARTBEAT, PONG, REQUEST, RESPONSE, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def frame(cmd, seq, body=b""):
    n = len(body)
    return struct.pack(">BBBH", MAGIC, VERSION << 4, cmd, seq) + bytes([n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF]) + body


def parse_fields(body):
    """Decode a protobuf message into {field_number: value} (last wins)."""
    fields, i = {}, 0
    while i < len(body):
        key, i = read_varint(body, i)
        num, typ = key >> 3, key & 7
        if typ == 0:
            val, i = read_varint(body, i)
        elif typ == 2:
            ln, i = read_varint(body, i)
            val, i = body[i:i + ln], i + ln
        else:
            raise ValueError("unexpected wire type %d" % typ)
        fields[num] = val
    return fields


def read_varint(b, i):
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_frame(self):
        while True:
            if len(self.buf) >= 8:
                magic, vf, cmd, seq = struct.unpack(">BBBH", self.buf[:5])
                length = self.buf[5] << 16 | self.buf[6] << 8 | self.buf[7]
                if magic != MAGIC or vf >> 4 != VERSION:
                    raise ValueError("bad frame header %r" % self.buf[:8])
                if len(self.buf) >= 8 + length:
                    body = self.buf[8:8 + length]
                    self.buf = self.buf[8 + length:]
                    return cmd, seq, body
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk


def main():
    addr, token, message = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    c = Conn(addr)
    c.send(frame(AUTH, 0, field_bytes(1, token.encode()) + field_bytes(2, b"python")))
    cmd, _, body = c.read_frame()
    if cmd == ERROR:
        f = parse_fields(body)
        print("auth refused: code %d %s" % (f.get(1, 0), f.get(2, b"").decode()))
        return 1
    assert cmd == AUTH_OK, "expected AUTH_OK, got 0x%02x" % cmd
    ok = parse_fields(body)
    print("authenticated uid=%d" % ok.get(1, 0))

    c.send(frame(HEARTBEAT, 7))
    cmd, seq, body = c.read_frame()
    assert cmd == PONG and seq == 7 and body == b"", (cmd, seq, body)
    print("pong seq=%d" % seq)

    c.send(frame(REQUEST, 258, field_bytes(1, b"echo") + field_bytes(2, message)))
    cmd, seq, body = c.read_frame()
    assert cmd == RESPONSE and seq == 258, (cmd, seq)
    resp = parse_fields(body)
    if resp.get(1, 0) != 0:
        print("call failed: code %d" % resp[1])
        return 1
    print("echo: %s" % resp.get(3, b"").decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
