"""A tiny raw PostgreSQL v3 client for protocol-level tests and abuse cases."""
import socket
import struct


def startup(user, database, extra=None):
    params = {"user": user, "database": database}
    params.update(extra or {})
    body = struct.pack("!I", 196608)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(t, payload=b""):
    return t + struct.pack("!I", len(payload) + 4) + payload


def cstr(s):
    return s.encode() + b"\0"


def query(sql):
    return msg(b"Q", cstr(sql))


def parse(name, sql):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def bind(portal, stmt, params=()):
    p = cstr(portal) + cstr(stmt) + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for v in params:
        if v is None:
            p += struct.pack("!i", -1)
        else:
            b = v.encode()
            p += struct.pack("!i", len(b)) + b
    p += struct.pack("!H", 0)
    return msg(b"B", p)


def execute(portal="", maxrows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", maxrows))


def describe_portal(name=""):
    return msg(b"D", b"P" + cstr(name))


SYNC = msg(b"S")
TERMINATE = msg(b"X")


class Conn:
    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_msg(self):
        while len(self.buf) < 5:
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d
        t = self.buf[:1]
        (n,) = struct.unpack("!I", self.buf[1:5])
        while len(self.buf) < n + 1:
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d
        body = self.buf[5:n + 1]
        self.buf = self.buf[n + 1:]
        return t, body

    def login(self, user, token, database=None, extra=None):
        self.send(startup(user, database or user, extra))
        t, body = self.read_msg()
        if t == b"E":
            return [(t, body)]
        assert t == b"R" and struct.unpack("!I", body[:4])[0] == 3, (t, body)
        self.send(msg(b"p", cstr(token)))
        return self.until_ready()

    def until_ready(self):
        out = []
        while True:
            m = self.read_msg()
            if m is None:
                return out
            out.append(m)
            if m[0] in (b"Z",):
                return out
            if m[0] == b"E" and fields(m[1]).get("S") == "FATAL":
                return out

    def closed(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def fields(body):
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def errors(msgs):
    return [fields(b) for t, b in msgs if t == b"E"]
