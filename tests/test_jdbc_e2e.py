"""pgJDBC, the driver of Java tools and services, through a real gateway: its extended
protocol use (unnamed statements, named server-side ones past prepareThreshold with
binary results, fetch-size portals, batches before one Sync), query timeouts by
CancelRequest, its catalog queries, the {call} escape, refusals and masks, and the audit
trail it leaves.

Needs java, javac and the driver (Debian: libpostgresql-jdbc-java, which `.ci/run`
installs; or PGWARDEN_JDBC_JAR); without them the module is skipped, and says why."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PgBackend, upstreams_for
from test_db_role import ROLE_SETUP

from gateway.audit import generate_keypair
from gateway.devtools.certs import write_self_signed
from gateway.devtools.harness import GatewayProcess

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "clients" / "JdbcClient.java"
POLICY = HERE / "policies" / "masking"  # allows all; cards.pan comes back as its last 4
JAR = Path(os.environ.get("PGWARDEN_JDBC_JAR", "/usr/share/java/postgresql.jar"))
PANS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
        "4000056655665556")
HOLDERS = ("Alice Martin", "Bob Chen", "Carol Diaz", "Dan Okafor", "Eve Novak")
LAST4 = tuple("************" + p[-4:] for p in PANS)  # pan_last4: always 12 stars

_missing = [what for what, there in (("java", shutil.which("java")),
                                     ("javac", shutil.which("javac")),
                                     (f"the JDBC driver ({JAR})", JAR.is_file())) if not there]
pytestmark = pytest.mark.skipif(bool(_missing), reason="JDBC tests need " + ", ".join(_missing))


@dataclass
class Jdbc:
    gw: GatewayProcess
    classes: Path
    audit: Path
    audit_key: Path

    def command(self, scenario: str, *, host: str | None = None, root: Path | None = None,
                token: str | None = None, connection: str = "payments", options: str = ""
                ) -> list[str]:
        """The client's command line for `scenario` (`root`: the gateway's certificate is
        checked against it, verify-full; `token`: this password instead of a fresh one;
        `options`: the URL's query string, the driver's settings)."""
        url = f"jdbc:postgresql://{host or self.gw.host}:{self.gw.port}/{connection}" + (
            f"?{options}" if options else "")
        return ["java", "-cp", f"{JAR}{os.pathsep}{self.classes}", "JdbcClient", url,
                self.gw.token() if token is None else token, scenario,
                *([str(root)] if root else [])]

    def launch(self, scenario: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(scenario, **kw), capture_output=True, text=True,
                              timeout=120)

    def run(self, scenario: str, **kw: Any) -> list[list[str]]:
        """The lines the client printed for `scenario`, split at tabs."""
        done = self.launch(scenario, **kw)
        assert done.returncode == 0, done.stdout + done.stderr
        return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def jdbc(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jdbc]:
    # (before the gateway reads the catalog)
    pg.server.psql("CREATE TABLE IF NOT EXISTS mask_numeric (id int PRIMARY KEY, "
                   "first6 numeric); INSERT INTO mask_numeric VALUES (1, 4111111111111111) "
                   "ON CONFLICT DO NOTHING", dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("jdbc")
    built = subprocess.run(["javac", "-cp", str(JAR), "-d", str(d / "classes"), str(CLIENT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    generate_keypair(d / "audit.pem", d / "audit.pub")
    (d / "hash.key").write_bytes(b"jdbc-e2e-hash-key-0123456789abcd")
    extra = (f"audit:\n  dir: {json.dumps(str(d / 'audit'))}\n"
             f"  signing_key: {{file: {json.dumps(str(d / 'audit.pem'))}}}\n"
             f"masking:\n  hash_key: {{file: {json.dumps(str(d / 'hash.key'))}}}\n")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=extra) as gw:
        yield Jdbc(gw, d / "classes", d / "audit", d / "audit.pub")


@pytest.fixture(scope="module")
def holding(jdbc: Jdbc, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Jdbc, int]]:
    """A gateway whose policy holds reads of public.vault for dba-oncall's approval, with
    its admin API for the approver: (the client on it, the admin port)."""
    pg.server.psql("CREATE TABLE IF NOT EXISTS vault (id int, secret text);"
                   "INSERT INTO vault SELECT 1, 'launch codes' WHERE NOT EXISTS "
                   "(SELECT FROM vault)", dbname="payments", user=pg.service.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("jdbc-held")
    extra = f"admin:\n  grpc: 127.0.0.1:{port}\napprovals:\n  timeout: 30s\n"
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=HERE / "policies" / "approvals",
                        extra_yaml=extra) as gw:
        yield Jdbc(gw, jdbc.classes, d / "audit", d / "audit.pub"), port


def test_a_held_statement_waits_for_its_approver(holding: tuple[Jdbc, int]) -> None:
    """The driver waits on its answer while a human decides; the gateway's notice with
    the request id is a warning on the statement; approved, the rows come; denied, the
    approver's reason comes as the error; the session goes on either way."""
    client, port = holding
    token = client.gw.directory / "approver.jwt"
    token.write_text(client.gw.token(subject="alice", groups=("dba-oncall",)))

    def approvals(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "approvals", *args, "--admin",
                               f"127.0.0.1:{port}", "--token", str(token)],
                              capture_output=True, text=True, timeout=30)

    # (two callers: an approval grants its caller the statement again for a while)
    for caller, verb, reason in (("java-job", "approve", "INC-7 reconciliation"),
                                 ("java-etl", "deny", "not during the freeze")):
        java = subprocess.Popen(
            client.command("held", token=client.gw.token(subject=caller, groups=("ci",))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (pending := json.loads(approvals("list", "--json").stdout or "[]")):
                assert java.poll() is None and time.monotonic() < deadline, java.communicate()
                time.sleep(0.1)
            rid = pending[0]["id"]
            assert approvals(verb, rid, "--reason", reason).returncode == 0
            out, err = java.communicate(timeout=60)
        finally:
            java.kill()
        lines = [line.split("\t") for line in out.splitlines()]
        assert java.returncode == 0, err
        if verb == "approve":
            assert lines[0][0] == "warning" and rid in lines[0][1]
            assert lines[1:] == [["row", "launch codes"], ["after", "6"]]
        else:
            assert lines[0][:2] == ["error", "42501"] and reason in lines[0][2], lines
            assert lines[1:] == [["after", "6"]]


def test_a_db_role_covers_named_statements_and_portals_only(
        jdbc: Jdbc, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Under a policy giving reads of public.reports the role report_reader: each run of
    the driver's prepared statement, unnamed and then named, and each piece of a
    fetch-size portal runs as the role; the statements between them do not."""
    pg.server.psql(ROLE_SETUP, dbname="payments")  # as the superuser
    d = tmp_path_factory.mktemp("jdbc-role")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=HERE / "policies" / "dbrole",
                        ) as gw:
        out = Jdbc(gw, jdbc.classes, d / "audit", d / "audit.pub").run("role")
    assert out == [*[line for _ in range(7) for line in (
        ["run", "report_reader", "10"], ["between", "pgwarden_svc"])],
        *[["piece", "report_reader", str(g)] for g in range(1, 6)],
        ["after", "pgwarden_svc"]]


def test_a_row_limit_over_plain_prepared_and_fetched_reads(
        jdbc: Jdbc, pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Under a policy limiting public.limited to 3 rows: a plain read, a prepared one run
    past prepareThreshold and a fetch-size portal each get 3 of the table's 50 rows, and
    the gateway's warning arrives as the statement's SQLWarning."""
    pg.server.psql("CREATE TABLE IF NOT EXISTS limited (id int PRIMARY KEY, note text);"
                   "INSERT INTO limited SELECT g, 'n' || g FROM generate_series(1, 50) g "
                   "ON CONFLICT DO NOTHING", dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("jdbc-limited")
    with GatewayProcess(d / "gw", upstreams_for(pg),
                        policy_dir=HERE / "policies" / "row_limit") as gw:
        out = Jdbc(gw, jdbc.classes, d / "audit", d / "audit.pub").run("limited")
    assert out == [
        ["plain", "3", "the result was cut at 3 rows: the policy's row_limit; the gateway "
                       "withheld the rest"],
        *[["prepared", str(i), "3"] for i in range(1, 7)],
        ["fetched", "3"], ["after", "50"]]


def test_a_statement_comes_back_masked(jdbc: Jdbc) -> None:
    assert jdbc.run("masked") == [["row", str(i + 1), HOLDERS[i], LAST4[i]] for i in range(5)]


def test_is_valid_answers_true_through_the_audited_gateway(jdbc: Jdbc) -> None:
    """Pools (HikariCP, c3p0) call isValid() before they lend a connection: an empty query,
    which runs nothing. It was refused with 58030 as if the audit trail were down."""
    assert jdbc.run("valid") == [["valid", "true"], ["valid", "true"], ["after", "1"]]


def test_verify_full_checks_the_gateways_certificate(jdbc: Jdbc, tmp_path: Path) -> None:
    """As the README shows: sslmode=verify-full with the gateway's CA as sslrootcert; a
    root that did not sign the gateway's certificate fails the handshake."""
    assert jdbc.run("masked", host="localhost", root=jdbc.gw.cert_path)[0] == [
        "row", "1", HOLDERS[0], LAST4[0]]
    write_self_signed(tmp_path / "other.pem", tmp_path / "other.key")
    (refused,) = jdbc.run("masked", host="localhost", root=tmp_path / "other.pem")
    assert refused[:2] == ["error", "08006"] and "SSL error" in refused[2], refused


def test_a_refused_login_is_a_clear_error(jdbc: Jdbc) -> None:
    """What a Java job's log shows for a bad token, an expired one, an unknown
    connection: the gateway's FATAL, with its SQLSTATE."""
    assert jdbc.run("masked", token="not-a-jwt") == [
        ["error", "28P01", 'FATAL: JWT authentication failed for user "ci-bot": '
                           "token is malformed"]]
    assert jdbc.run("masked", token=jdbc.gw.token(ttl=-120)) == [
        ["error", "28P01", 'FATAL: JWT authentication failed for user "ci-bot": token expired']]
    assert jdbc.run("masked", connection="nope") == [
        ["error", "28000", 'FATAL: connection "nope" is not configured on this gateway']]


def test_a_server_prepared_statement_stays_masked(jdbc: Jdbc) -> None:
    """Executions 5 on are a named server statement with binary results: the mask plan
    follows the statement's name, in both formats."""
    rows = jdbc.run("prepared")
    assert [r[:3] for r in rows] == [["row", str(i % 5 + 1), LAST4[i % 5]] for i in range(8)]
    server = [r[3] == "true" for r in rows]  # (where it switches is the driver's affair)
    assert not server[0] and server[-1] and server == sorted(server)


def test_a_masked_numeric_column_is_text_also_in_binary_transfer(jdbc: Jdbc) -> None:
    """A masked column of another type than text is declared text (its masked value is
    not a number), also once the driver asks for binary results past prepareThreshold."""
    assert jdbc.run("typed") == [["numeric", "1", "411111******1111", "text"]] * 7


def test_a_fetch_size_reads_a_portal_in_pieces(jdbc: Jdbc) -> None:
    assert jdbc.run("fetch") == [["row", str(i + 1), LAST4[i]] for i in range(5)]


def test_a_batch_in_a_transaction_rolls_back(jdbc: Jdbc) -> None:
    out = dict((k, v) for k, v in jdbc.run("batch"))
    assert out["counts"] == "[1, 1, 1]"
    assert int(out["inside"]) == int(out["after_rollback"]) + 3


def test_a_refusal_leaves_the_session_usable(jdbc: Jdbc) -> None:
    out = jdbc.run("refused")
    assert [r[:2] for r in out] == [["error", "42501"], ["after", "42"], ["error", "42501"],
                                   ["error", "25P02"], ["after_rollback", "43"]]
    assert "masked column public.cards.pan" in out[0][2]
    assert "4111" not in "".join(map("".join, out))


@pytest.mark.parametrize("options", ["autosave=always",
                                     "autosave=always&preferQueryMode=simple"])
def test_autosave_rolls_a_refusal_back_and_the_transaction_goes_on(jdbc: Jdbc,
                                                                   options: str) -> None:
    """With autosave the driver puts a savepoint before each statement of a transaction
    (in the same batch, or the same query string in simple mode): a refusal rolls back
    to it, and the transaction goes on."""
    out = jdbc.run("autosave", options=options)
    assert [r[:2] for r in out] == [["before", "5"], ["error", "42501"], ["after", LAST4[0]]]


def test_a_query_timeout_cancels_through_the_gateway(jdbc: Jdbc) -> None:
    out = jdbc.run("cancel")
    assert out[0][:2] == ["error", "57014"], out
    assert float(out[1][1]) < 10
    assert out[2] == ["after", "7"]


def test_the_drivers_catalog_queries(jdbc: Jdbc) -> None:
    out = jdbc.run("metadata")
    assert [r for r in out if r[0] == "column"] == [
        ["column", "id", "serial"], ["column", "holder", "text"], ["column", "pan", "text"],
        ["column", "cvv", "text"], ["column", "expiry", "text"]]
    assert [r for r in out if r[0] == "key"] == [["key", "id"]]


def test_the_call_escape(jdbc: Jdbc) -> None:
    assert jdbc.run("callable") == [["value", "ABC"]]


def test_copy_manager_out_masked_and_in(jdbc: Jdbc) -> None:
    out = jdbc.run("copy")
    assert out[0] == ["copied_out", "5"]
    assert out[1:6] == [["line", f"{i + 1},{LAST4[i]}"] for i in range(5)]
    assert out[6:] == [["copied_in", "2"]]


def test_generated_keys_come_back_masked(jdbc: Jdbc) -> None:
    assert jdbc.run("keys") == [["inserted", "1"], ["key", "Zed Park", "************4242"]]


def test_a_notification_payload_is_masked(jdbc: Jdbc) -> None:
    assert jdbc.run("notify") == [["notification", "jobs", "card 555*********4444 done"]]


def test_the_audit_trail_of_a_jdbc_session(jdbc: Jdbc) -> None:
    """A PAN the client sent as a parameter and one a result carried (the safety net's)
    are in no record; the decisions name the driver and its protocol; the chain holds."""
    # (the safety net leaves a run's first three digits, its framing guard: safety_net.py)
    assert jdbc.run("parameters") == [["row", "Alice Martin", LAST4[0]],
                                      ["text", "card 555*********4444 on file"]]
    jdbc.gw.stop()  # the shutdown checkpoint seals the trail
    text = "".join(f.read_text() for f in sorted(jdbc.audit.glob("*.jsonl")))
    for pan in PANS:
        assert pan not in text and pan[:-4] not in text
    records = [json.loads(line) for line in text.splitlines()]
    decisions = [r for r in records if r["type"] == "decision"
                 and r["sql"] == "select holder, pan from cards where pan = $1"]
    assert decisions and all(
        r["where"]["application_name"] == "PostgreSQL JDBC Driver"
        and r["statement"]["protocol"] == "extended" and r["outcome"] == "masked"
        for r in decisions)
    done = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", str(jdbc.audit),
                           "--key", str(jdbc.audit_key)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
