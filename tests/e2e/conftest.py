"""End-to-end fixtures: a real PostgreSQL 15 cluster and sluice gateways, each
in a temp dir on free loopback ports, stopped by PID."""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
PGBIN = "/usr/lib/postgresql/15/bin"
APP_PASSWORD = "app-Secret-pw-7f3a9"  # the vaulted upstream credential
MD5_PASSWORD = "md5-Secret-pw-11"


def pytest_configure(config):
    # SIGTERM (scripts/test.sh's timeout) unwinds like ^C, so fixtures still
    # stop every server they started.
    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, interrupt)


# An agent that may only read.
SELECT_ONLY = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: allow, sql: [select] }
"""


def orders_conn(pg, extra="", password_env="TEST_APP_PW"):
    """The connection "orders" (as app, its vaulted password from
    password_env) and extra entries."""
    return """
connections:
  - name: orders
    type: postgres
    target: 127.0.0.1:%d
    database: orders
    user: app
    password_env: %s
%s""" % (pg.port, password_env, extra)


def wait_for(pred, timeout=5.0):
    """Polls pred until it holds or timeout passes; returns its last answer."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc=None, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d not ready" % port)


def limit_nofile(n):
    """preexec_fn giving the child a descriptor limit of n (soft and hard)."""
    if n is None:
        return None

    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def rss_kb(pid):
    """Resident memory of a process, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_cert(d, name):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", os.path.join(d, name + ".key"),
                    "-out", os.path.join(d, name + ".crt")], check=True,
                   capture_output=True)
    os.chmod(os.path.join(d, name + ".key"), 0o600)
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


def as_postgres():
    if os.getuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")

    def demote():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return demote


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-pg-")
        os.chmod(self.dir, 0o755)
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        subprocess.run([PGBIN + "/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, stdout=subprocess.DEVNULL,
                       preexec_fn=as_postgres())
        make_cert(self.data, "pg")
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            for f in ("pg.crt", "pg.key"):
                os.chown(os.path.join(self.data, f), pw.pw_uid, pw.pw_gid)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("listen_addresses='127.0.0.1'\nport=%d\nunix_socket_directories='%s'\n"
                    "password_encryption='scram-sha-256'\nfsync=off\nmax_connections=300\n"
                    "ssl=on\nssl_cert_file='pg.crt'\nssl_key_file='pg.key'\n"
                    % (self.port, self.dir))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host all postgres 127.0.0.1/32 trust\n"
                    "host all trustuser 127.0.0.1/32 trust\n"
                    "host all md5user 127.0.0.1/32 md5\n"
                    "host all pwuser 127.0.0.1/32 password\n"
                    "hostssl all tlsuser 127.0.0.1/32 scram-sha-256\n"
                    "hostnossl all tlsuser 127.0.0.1/32 reject\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        self.proc = subprocess.Popen([PGBIN + "/postgres", "-D", self.data],
                                     stdout=subprocess.DEVNULL, stderr=open(
                                         os.path.join(self.dir, "log"), "w"),
                                     preexec_fn=as_postgres())
        try:
            wait_port(self.port, self.proc)
            time.sleep(0.2)
            self.setup_roles_and_data()
        except BaseException:
            self.stop()  # never leave a server running behind a failed fixture
            raise

    def setup_roles_and_data(self):
        self.psql("postgres", "CREATE ROLE app LOGIN PASSWORD '%s'" % APP_PASSWORD)
        self.psql("postgres", "SET password_encryption='md5'; "
                  "CREATE ROLE md5user LOGIN PASSWORD '%s'" % MD5_PASSWORD)
        self.psql("postgres", "CREATE ROLE trustuser LOGIN")
        self.psql("postgres", "CREATE ROLE tlsuser LOGIN PASSWORD '%s'" % APP_PASSWORD)
        self.psql("postgres", "CREATE ROLE pwuser LOGIN PASSWORD '%s'" % APP_PASSWORD)
        self.psql("postgres", "CREATE DATABASE orders OWNER app")
        self.psql("orders", """
            CREATE TABLE customers (id int primary key, name text, email text, ssn text,
                                    card_number text, api_token text);
            INSERT INTO customers VALUES
              (1, 'Ada', 'ada@example.com', '123-45-6789', '4111 1111 1111 1111', 'tok_live_abc'),
              (2, 'Bob', 'bob@example.com', '234-56-7890', '5500-0000-0000-0004', 'tok_live_def');
            CREATE TABLE orders (id serial primary key, customer int, amount numeric);
            INSERT INTO orders (customer, amount) SELECT g % 2 + 1, g FROM generate_series(1, 100) g;
            ALTER TABLE customers OWNER TO app; ALTER TABLE orders OWNER TO app;
            GRANT ALL ON SCHEMA public TO app, md5user, trustuser;
            GRANT ALL ON ALL TABLES IN SCHEMA public TO md5user, trustuser, tlsuser, pwuser;
        """)

    def psql(self, db, sql):
        return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                               "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                              check=True, capture_output=True, text=True).stdout

    def scalar(self, db, sql):
        """One value from a query run directly against PostgreSQL, as text."""
        return subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                               "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                              check=True, capture_output=True, text=True).stdout.strip()

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    c = Cluster()
    yield c
    c.stop()


DEFAULT_POLICIES = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [drop, truncate, alter_system, copy_program], message: "destructive statements are not allowed" }
      - { action: block, functions: [pg_read_file, pg_terminate_backend], message: "dangerous function" }
      - { action: allow, sql: [select, insert, update, delete, set, transaction, copy_from, copy_to, utility] }
  - name: dba
    match: { groups: [dba] }
    default: allow
"""


class Gateway:
    def __init__(self, pg, policies=DEFAULT_POLICIES, extra="", connections=None, mode="strict",
                 env=None, tls=False, login_timeout="15s", workers=2, gateway_extra="",
                 nofile=None):
        self.dir = tempfile.mkdtemp(prefix="sluice-gw-")
        self.workers = workers
        self.gateway_extra = gateway_extra
        listen_extra = ""
        if tls:
            crt, key = make_cert(self.dir, "gw")
            listen_extra = ", tls_cert: %s, tls_key: %s" % (crt, key)
        self.data = os.path.join(self.dir, "var")
        self.config = os.path.join(self.dir, "sluice.yaml")
        if connections is None:
            connections = orders_conn(pg, """  - name: orders_md5
    type: postgres
    target: 127.0.0.1:%d
    database: orders
    user: md5user
    password_env: TEST_MD5_PW
  - name: orders_trust
    type: postgres
    target: 127.0.0.1:%d
    database: orders
    user: trustuser
  - name: orders_tls
    type: postgres
    target: localhost:%d
    database: orders
    user: tlsuser
    password_env: TEST_APP_PW
    tls: require
""" % (pg.port, pg.port, pg.port))
        self.run_args = (login_timeout, listen_extra, mode, connections, policies, extra)
        e = dict(os.environ, TEST_APP_PW=APP_PASSWORD, TEST_MD5_PW=MD5_PASSWORD)
        if env:
            e.update(env)
        # A port picked as free can be taken by a client's ephemeral port
        # before sluice binds it: retry with fresh ports in that case.
        for attempt in range(4):
            self.port = free_port()
            self.admin_port = free_port()
            while self.admin_port == self.port:
                self.admin_port = free_port()
            self.write_config()
            if attempt == 0:
                try:
                    self.run("token", "init")
                except Exception:
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise
            self.log = open(os.path.join(self.dir, "sluice.log"), "w+")
            self.proc = subprocess.Popen([SLUICE, "serve", "--config", self.config], env=e,
                                         stdout=self.log, stderr=subprocess.STDOUT,
                                         preexec_fn=limit_nofile(nofile))
            try:
                wait_port(self.port, self.proc)
                # listening comes before the workers start and the
                # "sluice serving" line (slower under ASan): wait for it
                wait_for(lambda: "sluice serving" in self.logtext(), timeout=15)
                return
            except RuntimeError:
                if self.proc.poll() is None:  # alive but not listening: never leave it behind
                    self.proc.kill()
                    self.proc.wait()
                text = self.logtext()
                self.log.close()
                if "cannot listen" not in text or attempt == 3:
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise RuntimeError("sluice did not start:\n" + text[-2000:])

    def write_config(self):
        login_timeout, listen_extra, mode, connections, policies, extra = self.run_args
        with open(self.config, "w") as f:
            f.write("""gateway:
  data_dir: %s
  workers: %d
  log_level: info
  shutdown_timeout: 5s
  login_timeout: %s
%s  postgres: { listen: "127.0.0.1:%d"%s }
  admin: { listen: "127.0.0.1:%d" }
audit:
  store: sqlite:%s/audit.db
  mode: %s
  checkpoint_every: 50
%s
%s
%s
""" % (self.data, self.workers, login_timeout, self.gateway_extra, self.port, listen_extra,
       self.admin_port, self.data, mode,
       connections, policies, extra))

    def run(self, *args, check=True):
        r = subprocess.run([SLUICE, "--config", self.config] + list(args), capture_output=True,
                           text=True)
        if check and r.returncode != 0:
            raise RuntimeError("sluice %s failed (%d): %s" % (args, r.returncode, r.stderr))
        return r

    def mint(self, sub="agent-1", groups="ai-agents", ttl="1h", aud=None, iss=None):
        args = ["token", "mint", "--sub", sub, "--groups", groups, "--ttl", ttl]
        if aud:
            args += ["--aud", aud]
        if iss:
            args += ["--iss", iss]
        return self.run(*args).stdout.strip()

    def dsn(self, conn="orders", token=None, **kw):
        d = dict(host="127.0.0.1", port=self.port, user=conn, dbname=conn,
                 password=token or self.mint(), sslmode="disable")
        d.update(kw)
        return d

    def connect(self, conn="orders", token=None, **kw):
        import psycopg2
        return psycopg2.connect(**self.dsn(conn, token, **kw))

    def export(self, session=None):
        # Records nobody waits for reach the store within the writer's
        # 50 ms tick; give it a few.
        if self.proc.poll() is None:
            time.sleep(0.25)
        args = ["audit", "export", "--format", "jsonl"]
        if session:
            args += ["--session", session]
        out = self.run(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def verify(self):
        return self.run("audit", "verify", check=False)

    audit_export = export
    audit_verify = verify

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def cleanup(self):
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def gateway_factory(pg):
    made = []

    def make(**kw):
        g = Gateway(pg, **kw)
        made.append(g)
        return g
    yield make
    for g in made:
        rc = g.stop()
        log = g.logtext()
        g.cleanup()
        assert rc == 0, "sluice exited with %s:\n%s" % (rc, log[-3000:])
        assert "ERROR: AddressSanitizer" not in log and "runtime error" not in log, log[-3000:]


@pytest.fixture
def gw(gateway_factory):
    return gateway_factory()
