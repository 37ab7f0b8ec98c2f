"""A child table (a partition, or a table that INHERITS) holds rows of its parent: a read
of the parent returns them, and a read of the child returns the same columns under the
child's name. A policy written for the parent's columns holds for the child's: the
gateway gives a child's column its ancestors' column as lineage too, so the policy sees
them (and its classification's tags), and masks and refusals follow."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import psycopg
import pytest
from conftest import PgBackend, upstreams_for
from test_policy_enforcement import POLICY, connect
from test_prepared_names import MASKING

from gateway.devtools.harness import GatewayProcess

SETUP = """
DROP TABLE IF EXISTS it_cards_archive;
CREATE TABLE it_cards_archive () INHERITS (cards);
INSERT INTO it_cards_archive (id, holder, pan, cvv, expiry)
    VALUES (1001, 'Archived Holder', '4111111111111111', '987', '01/20');
DROP TABLE IF EXISTS it_people;
CREATE TABLE it_people (id int, region text, holder text) PARTITION BY LIST (region);
CREATE TABLE it_people_eu PARTITION OF it_people FOR VALUES IN ('eu')
    PARTITION BY RANGE (id);
CREATE TABLE it_people_eu_1 PARTITION OF it_people_eu FOR VALUES FROM (0) TO (100);
INSERT INTO it_people VALUES (1, 'eu', 'Parted Holder');
"""
TEARDOWN = "DROP TABLE IF EXISTS it_cards_archive; DROP TABLE IF EXISTS it_people"


@pytest.fixture(scope="module")
def tables(pg: PgBackend) -> Iterator[None]:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    yield
    pg.server.psql(TEARDOWN, dbname="payments", user=pg.service.name)


@pytest.fixture(scope="module")
def pci(pg: PgBackend, tables: None, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("inherit-pci"), upstreams_for(pg),
                        policy_dir=POLICY) as gw:
        yield gw


@pytest.fixture(scope="module")
def masking(pg: PgBackend, tables: None, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayProcess]:
    """Masks by column name (the parents' only): public.cards.holder, public.it_people.holder."""
    d = tmp_path_factory.mktemp("inherit-masking")
    policy = d / "policy"
    policy.mkdir()
    shutil.copy(MASKING / "masking.rego", policy)
    (policy / "data.json").write_text(json.dumps({"pgwarden": {
        "methods": {"public.cards.holder": "redact", "public.it_people.holder": "redact"}}}))
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=policy) as gw:
        yield gw


def test_a_child_s_cvv_is_never_readable(pci: GatewayProcess) -> None:
    """policies/pci classifies public.cards.cvv, never readable: nor the child's."""
    with connect(pci, autocommit=True) as c:
        for sql in ("select cvv from it_cards_archive", "select * from it_cards_archive",
                    "select cvv from only cards"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="verification"):
                c.execute(sql)
        rows = c.execute("select id, holder from it_cards_archive").fetchall()
        assert rows == [(1001, "Archived Holder")]  # (the rest of it reads as before)


@pytest.mark.parametrize("relation", ["it_cards_archive", "it_people_eu", "it_people_eu_1",
                                      "cards", "it_people"])
def test_a_child_s_column_is_masked_as_its_parent_s(masking: GatewayProcess,
                                                    relation: str) -> None:
    with psycopg.connect(masking.dsn("payments"), password=masking.token(),
                         autocommit=True) as c:
        rows = c.execute(f"select holder from {relation}").fetchall()  # noqa: S608
        assert rows and all(r == ("[REDACTED]",) for r in rows), rows
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="computed"):
            c.execute(f"select upper(holder) from {relation}")  # noqa: S608
