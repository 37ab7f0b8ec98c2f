"""A statement prepared over the protocol is decided at its Parse, against the catalog of
that moment. PostgreSQL re-plans a prepared statement when a relation it names changes,
resolving its names again: after a rename puts a masked table under the name the
statement read, its Bind ran over the masked table's rows, unmasked. A Bind of a
statement that reads a relation a schema change of the session touched since its Parse
is refused now. Raw protocol; a policy that allows every statement and masks
probeh_secret.holder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgBackend, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKING = Path(__file__).resolve().parent / "policies" / "masking"
SECRET = b"PROBEH-SECRET-HOLDER"
SETUP = """
DROP TABLE IF EXISTS probeh_secret, probeh_plain, probeh_plain_old;
CREATE TABLE probeh_secret (id int, holder text);
INSERT INTO probeh_secret VALUES (1, 'PROBEH-SECRET-HOLDER');
CREATE TABLE probeh_plain (id int, holder text);
INSERT INTO probeh_plain VALUES (1, 'plain');
"""
SYNC = fe.Sync().encode()


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("probeh-replan")
    policy = d / "policy"
    policy.mkdir()
    shutil.copy(MASKING / "masking.rego", policy)  # allows all, masks what data names
    (policy / "data.json").write_text(json.dumps({"pgwarden": {
        "classification": {"public.probeh_secret.holder": ["pii"]},
        "methods": {"public.probeh_secret.holder": "redact"}}}))
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=policy) as g:
        yield g


def q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def run(gw: GatewayProcess, *batches: list[bytes]) -> bytes:
    """Each batch sent once the one before is answered; the bodies of rows and errors."""
    out = b""
    with RawClient(gw) as client:
        client.login(gw.token())
        for batch in batches:
            client.send(b"".join(batch))
            for _ in range(sum(1 for m in batch if m[:1] in (b"S", b"Q"))):
                msgs = client.read_until(b"Z")
                out += b"".join(m.body for m in msgs if m.type in (b"D", b"E"))
                if not msgs or msgs[-1].type != b"Z":
                    return out
    return out


@pytest.mark.parametrize("again", [False, True], ids=["decided", "kept"])
def test_a_prepared_statement_replanned_onto_a_renamed_masked_table_is_masked(
        gw: GatewayProcess, again: bool) -> None:
    """`kept`: the same text parsed before, so that the second Parse is the kept allow."""
    first = [[fe.Parse("s0", "select holder from probeh_plain", ()).encode(), SYNC]] \
        if again else []
    got = run(gw, *first, [q("begin")],
              [fe.Parse("s1", "select holder from probeh_plain", ()).encode(), SYNC],
              [q("alter table probeh_plain rename to probeh_plain_old")],
              [q("alter table probeh_secret rename to probeh_plain")],
              [fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode(), SYNC],
              [q("rollback")])  # (the tables keep their names)
    assert SECRET not in got and b"42501" in got, got


def test_a_schema_change_elsewhere_leaves_a_prepared_statement_alone(
        gw: GatewayProcess) -> None:
    got = run(gw, [q("begin")],
              [fe.Parse("s2", "select holder from probeh_plain", ()).encode(), SYNC],
              [q("create temp table probeh_other (id int)")],
              [fe.Bind("", "s2", (), (), ()).encode(), fe.Execute("", 0).encode(), SYNC],
              [q("rollback")])
    assert b"plain" in got and b"42501" not in got, got
