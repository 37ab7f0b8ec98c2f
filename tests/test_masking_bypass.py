"""A corpus of published bypass techniques against column masking, run through a real
gateway with the starter policy (policies/pci: group ``ci`` reads, ``public.cards.pan`` is
masked ``pan_last4``, cvv never readable, DDL only for dba) and four clients: psql (text),
psycopg text, psycopg binary and asyncpg (binary).

For every technique and client: either the statement is refused (``refused``: by the
gateway, SQLSTATE 42501; ``either``: any error is fine) or nothing the client receives —
rows, COPY data, notices, error fields, notifications, ParameterStatus values — holds any
sample PAN in any encoding checked here (`pan_needles`): the digits (also with separators
removed), reversed, hex and base64 of the ASCII digits (also the bytea ``\\x3431...`` form),
md5/sha256 of the PAN, and the numeric value (a decoded int/float/Decimal is rendered as
digits). The masked forms keep only the last four digits (``************1111``), or the
first three more where the content safety net's framing guard applies
(``411*********1111``), so "the first digits minus the last four" is the needle.
Afterwards the session must still work (``select 1``).

Filters (WHERE, ORDER BY, GROUP BY, LIKE, position) on a masked column are the policy's
call, not the gateway's (see gateway/masking/plan.py): the starter policy allows them, so
filter-inference techniques only assert that what comes back holds no PAN encoding; the
``note`` of each says what the filter reveals.

A failing case names the technique and the client. A failure because PAN content reached
a client is a leak to fix in the gateway: never mark it xfail/skip.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from conftest import PgBackend, upstreams_for

from gateway.devtools.harness import GatewayProcess

POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"
# gateway/devtools/sample_data.py: the five card-brand test numbers in public.cards.
PANS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
        "4000056655665556")
CLIENTS = ("psql", "psycopg-text", "psycopg-binary", "asyncpg")
REFUSED, MASKED, EITHER = "refused", "masked", "either"
MASKED_1111 = "************1111"  # pan_last4 of 4111111111111111

# Objects a DBA made before the attack, owned by the service role (the gateway's upstream
# login), in their own schema so other test modules never see them.
SETUP = """
DROP SCHEMA IF EXISTS mb CASCADE;
CREATE SCHEMA mb;
CREATE VIEW mb.v_pan AS SELECT id, holder, pan FROM public.cards;
CREATE VIEW mb.v_nested AS SELECT id, pan AS card FROM mb.v_pan;
CREATE VIEW mb.v_calc AS SELECT id, reverse(pan) AS r, upper(pan) AS u FROM public.cards;
CREATE MATERIALIZED VIEW mb.mv_pan AS SELECT id, pan FROM public.cards;
CREATE TABLE mb.cards (id int, holder text, pan text);
INSERT INTO mb.cards VALUES (1, 'decoy', 'not-a-card');
CREATE SEQUENCE mb.s;
CREATE FUNCTION mb.pan_of(int) RETURNS text LANGUAGE sql STABLE
    AS 'SELECT pan FROM public.cards WHERE id = $1';
ANALYZE public.cards;
"""
TEARDOWN = """
DROP SCHEMA IF EXISTS mb CASCADE;
SELECT count(lo_unlink(oid)) FROM pg_largeobject_metadata;
"""

STATS = ("from pg_stats where schemaname = 'public' and tablename = 'cards' "
         "and attname = 'pan'")
# One digit per (position, value) pair that matches: the PAN of card 1, by filters only.
DIGITS = ("from cards, generate_series(1, 16) g, generate_series(0, 9) d "
          "where id = 1 and substr(pan, g, 1) = d::text")


@dataclass(frozen=True)
class Technique:
    id: str
    steps: tuple[str, ...]  # run in order on one session; every step is checked
    expect: str  # REFUSED (42501 by the gateway) | MASKED (runs, no error) | EITHER
    note: str = ""
    fresh: bool = False  # changes session state: use a connection of its own
    proto: bool = False  # protocol-level prepared statement (Parse/Bind/Execute)
    params: tuple[Any, ...] = ()  # for proto: $1.. values
    one_query: bool = False  # a step holds several statements sent as one Query
    shows: str | None = None  # text that must come back (the lineage mask at work)
    psql: tuple[str, ...] | None = None  # psql script lines, when psql does it its own way


def t(id: str, sql: str | tuple[str, ...], expect: str, **kw: Any) -> Technique:
    return Technique(id, (sql,) if isinstance(sql, str) else sql, expect, **kw)


TECHNIQUES: tuple[Technique, ...] = (
    # -- plain references, however renamed or nested: masked in place --------------------------
    t("plain", "select id, pan from cards order by id", MASKED, shows=MASKED_1111),
    t("alias", "select pan as card_number from cards order by id", MASKED, shows=MASKED_1111),
    t("quoted_qualified", 'select "public"."cards"."pan" from "public"."cards" order by 1',
      MASKED, shows=MASKED_1111),
    t("unicode_identifier", 'select U&"p\\0061n" from cards order by 1', MASKED,
      shows=MASKED_1111),
    t("comments_as_spaces", "select/**/pan/**/from/**/cards order by 1", MASKED,
      shows=MASKED_1111),
    t("table_alias_column_list", "select z from cards as c(a, b, z) order by a", MASKED,
      shows=MASKED_1111),
    t("nested_subqueries", "select x from (select y as x, i from (select pan as y, id as i "
      "from cards) s1) s2 order by i", MASKED, shows=MASKED_1111),
    t("subquery_column_list", "select x from (select pan, id from cards) s(x, y) order by y",
      MASKED, shows=MASKED_1111),
    t("subquery_star", "select s.* from (select id, pan from cards) s order by id", MASKED,
      shows=MASKED_1111),
    t("cte", "with t as (select id, pan from cards) select pan from t order by id", MASKED,
      shows=MASKED_1111),
    t("cte_column_list", "with t(a, b) as (select pan, id from cards) select a from t "
      "order by b", MASKED, shows=MASKED_1111),
    t("cte_recursive", "with recursive r(n, p) as (select 1, pan from cards where id = 1 "
      "union all select n + 1, p from r where n < 3) select p from r", MASKED,
      shows=MASKED_1111),
    t("view", "select pan from mb.v_pan order by id", MASKED, shows=MASKED_1111),
    t("view_star", "select * from mb.v_pan order by id", MASKED, shows=MASKED_1111),
    t("view_of_view_renamed", "select card from mb.v_nested order by id", MASKED,
      shows=MASKED_1111),
    t("union", "select pan from cards union select pan from cards order by 1", MASKED,
      shows=MASKED_1111),
    t("intersect", "select pan from cards intersect select pan from cards", MASKED,
      shows=MASKED_1111),
    t("except", "select pan from cards except select pan from cards where id = 2", MASKED,
      shows=MASKED_1111),
    t("lateral", "select l.p from cards c cross join lateral (select c.pan as p) l "
      "order by c.id", MASKED, shows=MASKED_1111),
    t("join_alias_column_list", "select j.c3 from (cards natural join (select 1 as id) q) "
      "as j(c1, c2, c3)", EITHER),
    t("distinct_on", "select distinct on (pan) pan, id from cards order by pan", MASKED,
      note="the order of the masked values reveals the PANs' sort order (policy matter)"),
    t("distinct", "select distinct pan from cards", MASKED),
    t("order_by_pan", "select id, pan from cards order by pan desc", MASKED,
      note="row order reveals the sort order of the PANs (policy matter)"),
    t("group_by_pan", "select pan, count(*) from cards group by pan order by pan", MASKED),
    t("group_by_rollup", "select pan, count(*) from cards group by rollup (pan)", EITHER),
    t("locking_read", "select pan from cards where id = 1 for share", EITHER),
    t("tablesample", "select pan from cards tablesample system (100)", MASKED),
    t("scalar_subquery_correlated", "select (select c.pan) from cards c", EITHER),
    t("scalar_subquery", "select (select pan from cards where id = 1)", REFUSED),
    t("field_of_whole_row", "select (c).pan from cards c", EITHER),
    t("lateral_values", "select v.p from cards, lateral (values (pan)) v(p)", EITHER),
    t("coalesce", "select coalesce(pan, 'none') from cards", EITHER),
    t("nullif", "select nullif(pan, '') from cards", EITHER),
    t("greatest", "select greatest(pan, '0') from cards", EITHER),
    t("case_passthrough", "select case when true then pan end from cards", EITHER),
    t("case_computed", "select case when pan like '4%' then 'visa' else 'other' end "
      "from cards", EITHER, note="reveals the brand (first digit) if allowed"),
    t("collate", 'select pan collate "C" from cards', EITHER),
    t("array_subscript_passthrough", "select (array[pan])[1] from cards", EITHER),
    # -- casts ---------------------------------------------------------------------------------
    t("cast_bigint", "select pan::bigint from cards", REFUSED),
    t("cast_numeric", "select pan::numeric from cards", REFUSED),
    t("cast_float8", "select pan::float8 from cards", REFUSED),
    t("cast_bytea", "select pan::bytea from cards", REFUSED),
    t("cast_text", "select pan::text from cards", EITHER),
    t("cast_as_varchar", "select cast(pan as varchar) from cards", EITHER),
    t("cast_varchar_n", "select pan::varchar(20) from cards", EITHER),
    t("cast_char_n", "select cast(pan as char(19)) from cards", REFUSED),
    # -- string functions and operators --------------------------------------------------------
    t("substr", "select substr(pan, 1, 12) from cards", REFUSED),
    t("left", "select left(pan, 12) from cards", REFUSED),
    t("right", "select right(pan, 15) from cards", REFUSED),
    t("reverse", "select reverse(pan) from cards", REFUSED),
    t("translate", "select translate(pan, '0123456789', 'abcdefghij') from cards", REFUSED),
    t("overlay", "select overlay(pan placing 'X' from 16 for 1) from cards", REFUSED),
    t("concat", "select concat('x', pan) from cards", REFUSED),
    t("concat_ws", "select concat_ws('-', pan, 'x') from cards", REFUSED),
    t("concat_operator", "select pan || '' from cards", REFUSED),
    t("format", "select format('%s', pan) from cards", REFUSED),
    t("lpad", "select lpad(pan, 20, '0') from cards", REFUSED),
    t("regexp_replace", "select regexp_replace(pan, '(\\d{4})', '\\1 ', 'g') from cards",
      REFUSED),
    t("split_part", "select split_part(pan, '0', 1) from cards", REFUSED),
    t("upper", "select upper(pan) from cards", REFUSED),
    t("replace", "select replace(pan, '1', 'one') from cards", REFUSED),
    t("repeat", "select repeat(pan, 2) from cards", REFUSED),
    t("quote_literal", "select quote_literal(pan) from cards", REFUSED),
    t("trim", "select trim(pan) from cards", REFUSED),
    t("strpos_output", "select id, strpos(pan, '1111') from cards", REFUSED),
    t("length", "select length(pan) from cards", REFUSED),
    # -- encodings and digests -----------------------------------------------------------------
    t("encode_base64", "select encode(convert_to(pan, 'UTF8'), 'base64') from cards", REFUSED),
    t("encode_hex", "select encode(pan::bytea, 'hex') from cards", REFUSED),
    t("convert_to", "select convert_to(pan, 'UTF8') from cards", REFUSED),
    t("md5", "select md5(pan) from cards", REFUSED),
    t("sha256", "select sha256(convert_to(pan, 'UTF8')) from cards", REFUSED),
    t("sha512", "select sha512(pan::bytea) from cards", REFUSED),
    t("to_hex_numeric", "select to_hex(pan::bigint) from cards", REFUSED),
    # -- aggregates ----------------------------------------------------------------------------
    t("string_agg", "select string_agg(pan, ',') from cards", REFUSED),
    t("string_agg_delimiter", "select string_agg(id::text, pan) from cards", REFUSED),
    t("array_agg", "select array_agg(pan) from cards", REFUSED),
    t("min", "select min(pan) from cards", REFUSED),
    t("max", "select max(pan) from cards", REFUSED),
    t("json_agg", "select json_agg(pan) from cards", REFUSED),
    t("jsonb_agg", "select jsonb_agg(pan) from cards", REFUSED),
    t("jsonb_object_agg_key", "select jsonb_object_agg(pan, id) from cards", REFUSED),
    t("xmlagg", "select xmlagg(xmlelement(name p, pan)) from cards", REFUSED),
    t("mode_within_group", "select mode() within group (order by pan) from cards", REFUSED),
    t("mode_within_group_reversed",
      "select reverse(mode() within group (order by pan)) from cards", REFUSED),
    t("percentile_disc", "select percentile_disc(0.5) within group (order by pan) from cards",
      REFUSED),
    t("count_distinct", "select count(distinct pan) from cards", EITHER),
    # -- JSON / XML (the embedded server lacks libxml: these must be refused before it runs) ----
    t("row_to_json", "select row_to_json(c) from cards c", REFUSED),
    t("row_to_json_no_cvv", "select row_to_json(s) from (select id, pan from cards) s",
      REFUSED),
    t("to_json", "select to_json(pan) from cards", REFUSED),
    t("json_build_object", "select json_build_object('p', pan) from cards", REFUSED),
    t("jsonb_build_array", "select jsonb_build_array(pan) from cards", REFUSED),
    t("xmlelement", "select xmlelement(name p, pan) from cards", REFUSED),
    t("xmlforest", "select xmlforest(pan) from cards", REFUSED),
    t("query_to_xml", "select query_to_xml('select pan from cards', true, false, '')",
      REFUSED),
    t("query_to_xml_reversed",
      "select reverse(query_to_xml('select pan from cards', true, false, '')::text)", REFUSED),
    t("table_to_xml", "select reverse(table_to_xml('public.cards', true, false, '')::text)",
      REFUSED),
    t("schema_to_xml", "select reverse(schema_to_xml('public', true, false, '')::text)",
      REFUSED),
    t("database_to_xml", "select reverse(database_to_xml(true, false, '')::text)", REFUSED),
    t("cursor_to_xml", ("begin", "declare mbx cursor for select pan from cards",
                        "select reverse(cursor_to_xml('mbx', 10, true, false, '')::text)",
                        "rollback"), REFUSED),
    t("ts_stat", "select reverse(word) from ts_stat('select to_tsvector(''simple'', pan) "
      "from cards')", REFUSED),
    t("to_tsvector", "select to_tsvector('simple', pan) from cards", REFUSED),
    # -- whole-row references ------------------------------------------------------------------
    t("whole_row_alias", "select c from cards c", REFUSED),
    t("whole_row_table_name", "select cards from cards", REFUSED),
    t("whole_row_star_expansion", "select (c).* from cards c", REFUSED),
    t("whole_row_subquery", "select s from (select id, pan from cards) s", REFUSED),
    t("whole_row_to_text", "select s::text from (select pan from cards) s", REFUSED),
    t("whole_row_view", "select v from mb.v_pan v", REFUSED),
    t("row_constructor", "select row(pan) from cards", REFUSED),
    t("table_command", "table cards", REFUSED, note="cvv is never readable"),
    t("select_star", "select * from cards", REFUSED, note="cvv is never readable"),
    t("select_table_star", "select cards.* from cards", REFUSED),
    # -- arrays --------------------------------------------------------------------------------
    t("array_constructor", "select array[pan] from cards", REFUSED),
    t("array_to_string", "select array_to_string(array[pan], ',') from cards", REFUSED),
    t("array_subquery", "select array(select pan from cards)", REFUSED),
    t("string_to_array", "select string_to_array(pan, null) from cards", REFUSED),
    t("array_slice", "select (string_to_array(pan, null))[1:12] from cards", REFUSED),
    t("array_slice_constructor", "select (array[pan])[1:1] from cards", REFUSED),
    t("regexp_match_indirection", r"select (regexp_match(pan, '^(\d{12})'))[1] from cards",
      REFUSED),
    t("regexp_matches_select", "select regexp_matches(pan, '\\d{4}', 'g') from cards", REFUSED),
    # -- window functions ----------------------------------------------------------------------
    t("first_value", "select first_value(pan) over (order by id) from cards", EITHER),
    t("lag", "select lag(pan) over (order by id) from cards", EITHER),
    t("first_value_reversed", "select reverse(first_value(pan) over (order by id)) from cards",
      REFUSED),
    # -- functions in FROM ---------------------------------------------------------------------
    t("unnest_in_from", "select u from cards, unnest(array[pan]) u", EITHER),
    t("unnest_in_from_reversed", "select reverse(u) from cards, unnest(array[pan]) u",
      REFUSED),
    t("jsonb_each_text", "select j.key, reverse(j.value) from cards c, "
      "jsonb_each_text(jsonb_build_object('p', c.pan)) j", REFUSED),
    t("json_populate_record", "select r.pan from cards c, json_populate_record("
      "null::mb.cards, json_build_object('pan', c.pan)) r", EITHER),
    t("json_populate_record_reversed", "select reverse(r.pan) from cards c, "
      "json_populate_record(null::mb.cards, json_build_object('pan', c.pan)) r", REFUSED),
    t("regexp_matches_from", "select reverse(m[1]) from cards c, "
      "regexp_matches(c.pan, '(\\d+)') m", REFUSED),
    t("generate_series_substr", "select string_agg(substr(pan, g, 1), '') from cards, "
      "generate_series(1, 16) g", REFUSED),
    t("lo_from_bytea_output", "select lo_from_bytea(0, pan::bytea) from cards", REFUSED),
    # -- renames that swap names: the lineage must follow positions ----------------------------
    t("swap_cte_column_names", "with t(pan, id) as (select id::text, pan from cards) "
      "select reverse(id) from t", REFUSED),
    t("swap_subquery_column_names", "select reverse(holder) from (select pan, holder "
      "from cards) s(holder, pan)", REFUSED),
    t("swap_table_alias_names", "select reverse(x.holder) from cards as x(id, pan, holder)",
      REFUSED),
    t("swap_join_alias_names", "select reverse(j.c3) from (cards natural join "
      "(select 1 as id) q) as j(c1, c2, c3)", REFUSED),
    t("swap_lateral_names", "select reverse(l.a) from cards c cross join lateral "
      "(select c.holder, c.pan) l(b, a)", REFUSED),
    t("union_second_branch", "select reverse(holder) from (select holder from cards "
      "union all select pan from cards) s", REFUSED),
    t("correlated_subquery_reversed", "select reverse((select c2.pan from cards c2 "
      "where c2.id = c.id)) from cards c", REFUSED),
    t("limit_subquery_reversed", "select reverse(p) from (select pan as p from cards "
      "order by 1 limit 1) s", REFUSED),
    t("view_computed_column", "select r from mb.v_calc", REFUSED),
    t("view_computed_star", "select * from mb.v_calc", REFUSED),
    t("view_reversed", "select reverse(pan) from mb.v_pan", REFUSED),
    t("view_of_view_reversed", "select reverse(card) from mb.v_nested", REFUSED),
    # -- lexer/parser tricks -------------------------------------------------------------------
    t("comment_before_paren", "select reverse/**/(pan) from cards", REFUSED),
    t("dollar_quoted_neighbour", "select $$x$$ as a, reverse(pan) from cards", REFUSED),
    t("nested_comment", "/* a /* nested */ comment */ select reverse(pan) from cards",
      REFUSED),
    t("escape_string_neighbour", "select e'\\x41' as a, reverse(pan) from cards", REFUSED),
    t("line_comment", "select 1 -- ; select pan\n, reverse(pan) from cards", REFUSED),
    # -- cursors, PREPARE / EXECUTE, protocol-level prepared statements ------------------------
    t("cursor_fetch_move", ("begin",
                            "declare mbk scroll cursor for select id, pan from cards order by id",
                            "fetch 2 from mbk", "move 1 in mbk", "fetch all from mbk",
                            "fetch prior from mbk", "fetch absolute 1 from mbk", "commit"),
      MASKED, shows=MASKED_1111),
    t("cursor_with_hold", ("declare mbh cursor with hold for select pan from cards order by id",
                           "fetch all from mbh", "close mbh"), MASKED, shows=MASKED_1111),
    t("cursor_computed", ("begin", "declare mbc cursor for select reverse(pan) from cards",
                          "fetch all from mbc", "rollback"), REFUSED),
    t("prepare_execute", ("prepare mbp(int) as select pan from cards where id = $1",
                          "execute mbp(1)", "deallocate mbp"), MASKED, shows=MASKED_1111),
    t("prepare_computed", ("prepare mbq as select reverse(pan) from cards", "execute mbq",
                           "deallocate mbq"), REFUSED),
    t("execute_subquery_parameter", ("prepare mbr(text) as select reverse($1)",
                                     "execute mbr((select pan from cards where id = 1))",
                                     "deallocate mbr"), EITHER, fresh=True),
    t("prepare_execute_one_query", "prepare mbm as select pan from cards where id = 1; "
      "execute mbm; deallocate mbm", EITHER, one_query=True, fresh=True),
    t("multi_statement_one_refused", "select pan from cards where id = 1; "
      "select reverse(pan) from cards", EITHER, one_query=True),
    t("protocol_prepared", "select pan from cards where id = $1", MASKED, proto=True,
      params=(1,), shows=MASKED_1111),
    t("protocol_prepared_computed", "select reverse(pan) from cards where id = $1", REFUSED,
      proto=True, params=(1,)),
    t("protocol_prepared_pg_stats", f"select reverse(histogram_bounds::text) {STATS}", EITHER,
      proto=True),
    # -- COPY ----------------------------------------------------------------------------------
    t("copy_query_text", "copy (select id, pan from cards) to stdout", REFUSED,
      note="COPY of card numbers waits for approval (nobody approves: expires, refused)"),
    t("copy_table", "copy cards to stdout", REFUSED),
    t("copy_columns_csv", "copy cards (id, pan) to stdout (format csv)", REFUSED),
    t("copy_columns_binary", "copy cards (id, pan) to stdout (format binary)", REFUSED),
    t("copy_upper", "copy (select upper(pan) from cards) to stdout", REFUSED),
    t("copy_filter_only", "copy (select id from cards where pan like '4%') to stdout", REFUSED),
    t("copy_psql_meta", "copy (select id, pan from cards) to stdout", REFUSED,
      psql=("\\copy (select id, pan from cards) to stdout",)),
    t("copy_to_file", "copy (select pan from cards) to '/tmp/mb_stash'", REFUSED),
    t("copy_pg_stats", f"copy (select histogram_bounds::text {STATS}) to stdout", EITHER),
    t("copy_pg_stats_csv", f"copy (select histogram_bounds::text {STATS}) to stdout "
      "(format csv)", EITHER),
    t("copy_pg_stats_binary", f"copy (select histogram_bounds::text {STATS}) to stdout "
      "(format binary)", EITHER),
    t("copy_pg_stats_concatenated", "copy (select array_to_string("
      f"histogram_bounds::text::text[], '') {STATS}) to stdout", EITHER),
    # -- writes, RETURNING, data-modifying CTEs, CREATE TABLE AS / SELECT INTO -----------------
    t("returning", "update cards set holder = holder where id = 1 returning pan", REFUSED),
    t("returning_computed", "update cards set holder = holder where id = 1 "
      "returning reverse(pan)", REFUSED),
    t("insert_select_returning", "insert into transactions (card_id, amount) "
      "select id, 1 from cards where pan like '4%' returning *", REFUSED),
    t("data_modifying_cte", "with u as (update cards set holder = holder where id = 1 "
      "returning pan) select reverse(pan) from u", REFUSED),
    t("create_table_as", "create table mb_stash as select pan from cards", REFUSED),
    t("select_into", "select pan into temp mb_stash from cards", REFUSED),
    t("create_temp_view", "create temp view mb_v as select pan from cards", REFUSED),
    t("unique_violation_detail", "insert into cards (id, holder, pan) "
      "select id, holder, pan from cards", REFUSED),
    # -- error messages: values reach the client inside error text ----------------------------
    t("error_int_cast", "select 1 from cards where pan::int = 1", EITHER),
    t("error_suffix", "select 1 from cards where (pan || 'x')::int = 1", EITHER),
    t("error_prefix_digit", "select 1 from cards where ('1' || pan)::int = 1", EITHER,
      note="a digit glued before the PAN makes a longer number"),
    t("error_doubled", "select 1 from cards where (pan || pan)::int = 1", EITHER,
      note="32 digits: longer than any PAN"),
    t("error_odd_grouping", "select 1 from cards where (substr(pan, 1, 8) || ' ' || "
      "substr(pan, 9))::int = 1", EITHER),
    t("error_reversed", "select 1 from cards where reverse(pan)::int = 1", EITHER),
    t("error_hex", "select 1 from cards where encode(convert_to(pan, 'UTF8'), 'hex')::int = 1",
      EITHER),
    t("error_base64", "select 1 from cards where "
      "encode(convert_to(pan, 'UTF8'), 'base64')::int = 1", EITHER),
    t("error_md5", "select 1 from cards where md5(pan)::int = 1", EITHER),
    t("error_json", "select 1 from cards where (reverse(pan) || '}')::json is null", EITHER),
    t("error_bytea_escape", "select 1 from cards where pan::bytea::text::int = 1", EITHER,
      note="the bytea text form \\x3431..."),
    t("error_regclass", "select 1 from cards where pan::regclass is null", EITHER),
    t("error_date", "select 1 from cards where pan::date is null", EITHER),
    t("error_division_by_zero", "select 1 from cards where pan::bigint / 0 = 1", EITHER),
    # -- notices, notifications, ParameterStatus -----------------------------------------------
    t("do_raise_notice", "do $$ begin raise notice '%', (select reverse(pan) from cards "
      "limit 1); end $$", REFUSED),
    t("client_min_messages_debug", ("set client_min_messages = debug5",
                                    "select 1 from cards where pan::int = 1",
                                    "select pan from cards where id = 1",
                                    "reset client_min_messages"), EITHER, fresh=True),
    t("notify_in_filter", ("listen mbleak", "select count(*) from cards where "
                           "pg_notify('mbleak', reverse(pan)) is null",
                           "select 1", "unlisten mbleak"), EITHER, fresh=True),
    t("notify_plain_in_filter", ("listen mbleak", "select count(*) from cards where "
                                 "pg_notify('mbleak', pan) is null", "select 1",
                                 "unlisten mbleak"), EITHER, fresh=True),
    t("notify_literal", ("listen mbleak", "notify mbleak, '4111111111111111'", "select 1",
                         "unlisten mbleak"), EITHER, fresh=True),
    t("pg_notify_output", "select pg_notify('mbleak', pan) from cards", REFUSED),
    t("set_application_name", ("set application_name = '4111111111111111'",
                               "show application_name", "reset application_name"),
      EITHER, fresh=True, note="a literal: the safety net must scrub ParameterStatus"),
    t("set_config_application_name",
      "select set_config('application_name', pan, false) from cards", REFUSED),
    t("set_config_in_filter", "select 1 from cards where "
      "set_config('application_name', reverse(pan), false) is not null", REFUSED),
    # -- storage side channels: stash the value from a filter, read it back -------------------
    t("large_object_stash", ("select count(*) from cards where id = 1 and "
                             "lo_from_bytea(0, convert_to(pan, 'UTF8')) > 0",
                             "select lo_get(oid) from pg_largeobject_metadata",
                             "select count(lo_unlink(oid)) from pg_largeobject_metadata"),
      EITHER),
    t("sequence_stash", ("select count(*) from cards where id = 1 and "
                         "setval('mb.s', pan::bigint) > 0",
                         "select last_value from mb.s",
                         "select reverse(last_value::text) from mb.s"), EITHER),
    # -- statistics and catalogs ---------------------------------------------------------------
    t("pg_stats_histogram", f"select histogram_bounds {STATS}", EITHER),
    t("pg_stats_text", f"select histogram_bounds::text {STATS}", EITHER),
    t("pg_stats_star", "select * from pg_stats where tablename = 'cards'", EITHER),
    t("pg_stats_reversed", f"select reverse(histogram_bounds::text) {STATS}", EITHER),
    t("pg_stats_base64", "select encode(convert_to(histogram_bounds::text, 'UTF8'), 'base64') "
      f"{STATS}", EITHER),
    t("pg_stats_concatenated", f"select array_to_string(histogram_bounds::text::text[], '') "
      f"{STATS}", EITHER),
    t("pg_stats_field_length_49", "select rpad((histogram_bounds::text::text[])[2], 49, 'x') "
      f"{STATS}", EITHER, note="a field of 49 bytes: its length's low byte is the digit 1"),
    t("information_schema", "select column_name, data_type from information_schema.columns "
      "where table_name = 'cards' order by ordinal_position", MASKED),
    t("pg_views_definitions", "select definition from pg_views where schemaname = 'mb'",
      EITHER),
    t("materialized_view", "select pan from mb.mv_pan order by id", EITHER),
    t("materialized_view_reversed", "select reverse(pan) from mb.mv_pan", EITHER),
    t("sql_function", "select mb.pan_of(1)", EITHER),
    t("sql_function_reversed", "select reverse(mb.pan_of(1))", EITHER),
    t("read_heap_file", "select encode(pg_read_binary_file(pg_relation_filepath("
      "'public.cards')), 'hex')", REFUSED, note="reading the table's file bypasses SQL"),
    t("explain_verbose", "explain (verbose, costs off) select reverse(pan) from cards", EITHER),
    # -- filters (inference is the policy's call: what comes back must still be masked) ------
    t("like_oracle", "select id, pan from cards where pan like '4111%'", MASKED,
      shows=MASKED_1111, note="reveals which cards start with 4111 (policy matter)"),
    t("equality_oracle", "select id from cards where pan = '4111111111111111'", MASKED,
      note="confirms a guessed PAN (policy matter)"),
    t("position_oracle", "select id from cards where position('1111' in pan) = 13", REFUSED,
      note="position() computes with pan: refused (it would reveal where a digit string sits)"),
    t("aggregate_filter_oracle", "select count(*) filter (where pan like '4%') from cards",
      EITHER, note="counts cards per prefix (policy matter)"),
    t("digit_oracle", f"select g, d {DIGITS} order by g", REFUSED,
      note="substr() computes with pan: refused (every (position, digit) pair of a PAN)"),
    t("digit_oracle_reassembled", f"select string_agg(d::text, '' order by g desc) {DIGITS}",
      EITHER, note="filter-only lineage, the PAN reassembled (reversed) in the output"),
    t("digit_oracle_reassembled_hex",
      f"select encode(convert_to(string_agg(d::text, '' order by g), 'UTF8'), 'hex') {DIGITS}",
      EITHER),
    # -- search_path and shape-cache desynchronisation ----------------------------------------
    t("search_path_set_local", ("begin", "set local search_path = mb, public", "commit",
                                "select reverse(pan) from cards where id = 1",
                                "reset search_path"), EITHER, fresh=True,
      note="the server drops SET LOCAL at commit: the gateway must too"),
    t("search_path_rolled_back", ("begin", "set search_path = mb, public", "rollback",
                                  "select reverse(pan) from cards where id = 1",
                                  "reset search_path"), EITHER, fresh=True),
    t("search_path_failed_transaction", ("begin", "set search_path = mb, public",
                                         "select 1/0", "commit",
                                         "select reverse(pan) from cards where id = 1",
                                         "reset search_path"), EITHER, fresh=True),
    t("search_path_savepoint", ("begin", "savepoint a", "set search_path = mb, public",
                                "rollback to savepoint a",
                                "select reverse(pan) from cards where id = 1", "rollback"),
      EITHER, fresh=True),
    t("shape_cache_constant", ("select length(table_to_xml('mb.cards', true, false, '')::text)",
                               "select reverse(table_to_xml('public.cards', true, false, '')"
                               "::text)"), EITHER, fresh=True),
)

assert len({x.id for x in TECHNIQUES}) == len(TECHNIQUES)


# -- what counts as PAN content ------------------------------------------------------------------


def pan_needles(pan: str) -> list[tuple[str, str]]:
    """(encoding, needle) pairs; a needle in the output means PAN content got through."""
    head = pan[:-4]  # the masked forms keep the last four (and at most the first three)
    needles = [("digits", head), ("reversed", head[::-1]), ("hex", head.encode().hex())]
    # base64 of the ASCII digits at each of the three alignments a prefix can give them
    needles += [(f"base64@{k}", base64.b64encode(pan[k:k + 9].encode()).decode())
                for k in range(3)]
    needles += [("md5", hashlib.md5(pan.encode()).hexdigest()),  # noqa: S324
                ("sha256", hashlib.sha256(pan.encode()).hexdigest())]
    return needles


NEEDLES = [(p, enc, n) for p in PANS for enc, n in pan_needles(p)]
_CASELESS = {"hex", "md5", "sha256"}
# digits with spaces, dashes, dots, commas... between them (any grouping): 4111 1111 1111
_SEPARATED = re.compile(r"(?<=\d)[ \t\-_.,:/]{1,2}(?=\d)")
SAFETY_NET_SHAPE = re.compile(r"\d{3}\*{6,}\d{4}")


def leaks(texts: list[str]) -> list[str]:
    text = "\n".join(texts)
    lowered = text.lower()
    joined = _SEPARATED.sub("", text)
    found = []
    for pan, enc, needle in NEEDLES:
        if enc in _CASELESS:
            i = lowered.find(needle)
        else:
            i = text.find(needle)
            if i < 0 and enc in ("digits", "reversed") and needle in joined:
                j = joined.find(needle)
                around = joined[max(0, j - 40):j + 60]
                found.append(f"{pan} as {enc} (separators removed): ...{around!r}")
                continue
        if i >= 0:
            found.append(f"{pan} as {enc}: ...{text[max(0, i - 40):i + 60]!r}")
    return found


def render(value: Any) -> str:
    """A received value as text, whatever the client decoded it to."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        return b.decode("latin-1") + " " + b.hex()
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return f"{value!r} {int(value)}"  # 4111111111111111.0 -> also 4111111111111111
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    if isinstance(value, dict):
        return " | ".join(f"{render(k)}={render(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, asyncpg.Record)):
        return " | ".join(render(v) for v in value)
    return str(value)


# -- running a technique with each client --------------------------------------------------------


@dataclass
class Outcome:
    seen: list[str] = field(default_factory=list)
    errors: list[tuple[str | None, str]] = field(default_factory=list)
    alive: bool = False

    @property
    def states(self) -> list[str | None]:
        return [s for s, _ in self.errors]


def is_copy_out(sql: str) -> bool:
    return bool(re.match(r"\s*copy\b.*\bto\s+stdout\b", sql, re.I | re.S))


PARAMETER_NAMES = ("application_name", "client_encoding", "DateStyle", "IntervalStyle",
                   "TimeZone", "search_path", "server_version", "session_authorization",
                   "is_superuser", "standard_conforming_strings", "integer_datetimes",
                   "default_transaction_read_only", "in_hot_standby", "server_encoding",
                   "scram_iterations")


class Psycopg:
    def __init__(self, gw: GatewayProcess, binary: bool) -> None:
        self.gw, self.binary = gw, binary
        self.conn: psycopg.Connection | None = None
        self.sink: list[str] = []

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.gw.dsn("payments"), password=self.gw.token(),
                               autocommit=True)
        conn.add_notice_handler(lambda d: self.sink.append("notice: " + diag_text(d)))
        conn.add_notify_handler(
            lambda n: self.sink.append(f"notify: {n.channel} {n.payload} {n.pid}"))
        return conn

    def run(self, tech: Technique) -> Outcome:
        if tech.fresh:
            with self.connect() as conn:
                return self._run(conn, tech)
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self.connect()
        return self._run(self.conn, tech)

    def _run(self, conn: psycopg.Connection, tech: Technique) -> Outcome:
        out = Outcome()
        self.sink.clear()
        for step in tech.steps:
            try:
                with conn.cursor(binary=self.binary) as cur:
                    if is_copy_out(step):
                        with cur.copy(step) as copy:
                            out.seen.append(render(b"".join(bytes(b) for b in copy)))
                    else:
                        sql = re.sub(r"\$\d+", "%s", step) if tech.params else step
                        cur.execute(sql, tech.params or None, prepare=tech.proto or None)
                        while True:
                            if cur.description is not None:
                                out.seen.append(render(cur.fetchall()))
                            out.seen.append(cur.statusmessage or "")
                            if not cur.nextset():
                                break
            except psycopg.Error as e:
                out.errors.append((e.sqlstate, str(e)))
                out.seen.append(str(e) + " " + diag_text(e.diag))
            except Exception as e:  # a client-side decoding error is an error too
                out.errors.append((None, repr(e)))
                out.seen.append(repr(e))
            out.seen += [f"{n}={conn.info.parameter_status(n)}" for n in PARAMETER_NAMES
                         if not conn.closed]
        if conn.closed or conn.broken:
            out.seen += self.sink
            return out
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("rollback")
            out.alive = conn.execute("select 1").fetchone() == (1,)
        except psycopg.Error as e:
            out.errors.append((e.sqlstate, f"after the technique: {e}"))
        out.seen += self.sink
        out.seen += [f"{n}={conn.info.parameter_status(n)}" for n in PARAMETER_NAMES]
        return out


def diag_text(d: psycopg.errors.Diagnostic) -> str:
    names = ("severity", "sqlstate", "message_primary", "message_detail", "message_hint",
             "context", "internal_query", "schema_name", "table_name", "column_name",
             "datatype_name", "constraint_name", "statement_position", "source_function")
    return " | ".join(f"{n}={getattr(d, n)}" for n in names if getattr(d, n, None))


class Asyncpg:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection | None = None
        self.sink: list[str] = []

    async def connect(self) -> asyncpg.Connection:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = await asyncpg.connect(host=self.gw.host, port=self.gw.port, user="ci-bot",
                                     database="payments", password=self.gw.token(), ssl=ctx,
                                     statement_cache_size=0)
        conn.add_log_listener(lambda _c, m: self.sink.append(f"notice: {m.as_dict()}"))

        def on_notify(_c: object, pid: int, channel: str, payload: str) -> None:
            self.sink.append(f"notify: {channel} {payload} {pid}")

        conn._listeners["mbleak"] = {asyncpg.connection._Callback.from_callable(on_notify)}
        return conn

    def run(self, tech: Technique) -> Outcome:
        return self.loop.run_until_complete(self._run_async(tech))

    async def _run_async(self, tech: Technique) -> Outcome:
        if tech.fresh:
            conn = await self.connect()
            try:
                return await self._run(conn, tech)
            finally:
                await conn.close()
        if self.conn is None or self.conn.is_closed():
            self.conn = await self.connect()
        return await self._run(self.conn, tech)

    async def _run(self, conn: asyncpg.Connection, tech: Technique) -> Outcome:
        out = Outcome()
        self.sink.clear()
        for step in tech.steps:
            try:
                if is_copy_out(step):
                    buf = io.BytesIO()
                    await conn._copy_out(step, buf, None)  # the COPY verbatim
                    out.seen.append(render(buf.getvalue()))
                elif tech.one_query:
                    out.seen.append(await conn.execute(step))
                elif tech.proto:
                    stmt = await conn.prepare(step)
                    out.seen.append(render(await stmt.fetch(*tech.params)))
                else:
                    out.seen.append(render(await conn.fetch(step)))
            except asyncpg.PostgresError as e:
                out.errors.append((e.sqlstate, str(e)))
                out.seen.append(str(e) + " " + render(e.as_dict()))
            except Exception as e:  # a client-side decoding error is an error too
                if conn.is_closed():
                    out.errors.append((None, f"connection lost: {e!r}"))
                    break
                out.errors.append((None, repr(e)))
                out.seen.append(repr(e))
            await asyncio.sleep(0)
            out.seen.append(repr(conn.get_settings()))
        if conn.is_closed():
            out.seen += self.sink
            return out
        try:
            if conn.is_in_transaction():
                await conn.execute("rollback")
            out.alive = await conn.fetchval("select 1") == 1
            await asyncio.sleep(0.01)  # let notification callbacks run
        except asyncpg.PostgresError as e:
            out.errors.append((e.sqlstate, f"after the technique: {e}"))
        out.seen += self.sink
        out.seen.append(repr(conn.get_settings()))
        return out

    def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


ALIVE = "select 'alive' || 'ok' as mb_alive;"


def psql_script(tech: Technique) -> str:
    if tech.psql is not None:
        lines = list(tech.psql)
    elif tech.proto:
        values = " ".join(str(v) for v in tech.params)
        lines = [f"{tech.steps[0]} \\parse mb_stmt", f"\\bind_named mb_stmt {values} \\g",
                 "\\close_prepared mb_stmt"]
    else:
        lines = []
        for step in tech.steps:
            s = step.replace("; ", " \\; ") if tech.one_query else step
            lines.append(s if s.startswith("\\") or s.rstrip().endswith(";") else s + ";")
    return "\n".join([*lines, ALIVE, ""])


def run_psql(gw: GatewayProcess, pg: PgBackend, tech: Technique) -> Outcome:
    """One psql process per technique. The wheel's psql is built without SSL, so it uses
    the gateway's loopback plaintext listener; psql shows no ParameterStatus values (the
    other clients check those)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=gw.token(), PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    args = [str(pg.server.bin_dir / "psql"), "-X", "-A", "-h", gw.host, "-p", str(gw.port),
            "-U", "ci-bot", "-d", "payments", "-v", "VERBOSITY=verbose", "-f", "-"]
    proc = subprocess.run(args, input=psql_script(tech).encode(), env=env,
                          capture_output=True, timeout=60, check=False)
    # COPY ... (format binary) writes raw bytes to stdout: keep every byte visible
    stdout = proc.stdout.decode("utf-8", "backslashreplace")
    stderr = proc.stderr.decode("utf-8", "backslashreplace")
    out = Outcome(seen=[stdout, stderr, proc.stdout.hex()])
    out.errors = [(m.group(2), m.group(0)) for m in
                  re.finditer(r"(ERROR|FATAL):\s+([0-9A-Z]{5}):.*", stderr)]
    out.alive = "mb_alive\naliveok" in stdout
    if proc.returncode != 0:
        out.errors.append((None, f"psql exited with {proc.returncode}"))
    return out


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(SETUP, dbname=pg.dbname, user=pg.service.name)
    # The starter policy holds COPY of card numbers for approval; nobody approves here,
    # so a short timeout turns each hold into a refusal.
    gw = GatewayProcess(tmp_path_factory.mktemp("bypass"), upstreams_for(pg),
                        policy_dir=POLICY, extra_yaml="approvals:\n  timeout: 0.3s\n")
    try:
        with gw:
            yield gw
    finally:
        pg.server.psql(TEARDOWN, dbname=pg.dbname, user=pg.service.name)


class Clients:
    def __init__(self, gw: GatewayProcess, pg: PgBackend) -> None:
        self.gw, self.pg = gw, pg
        self.text = Psycopg(gw, binary=False)
        self.binary = Psycopg(gw, binary=True)
        self.asyncpg = Asyncpg(gw)

    def run(self, client: str, tech: Technique) -> Outcome:
        if client == "psql":
            return run_psql(self.gw, self.pg, tech)
        if client == "psycopg-text":
            return self.text.run(tech)
        if client == "psycopg-binary":
            return self.binary.run(tech)
        return self.asyncpg.run(tech)

    def close(self) -> None:
        for c in (self.text, self.binary):
            if c.conn is not None:
                c.conn.close()
        self.asyncpg.close()


@pytest.fixture(scope="module")
def clients(gw: GatewayProcess, pg: PgBackend) -> Iterator[Clients]:
    c = Clients(gw, pg)
    yield c
    c.close()


REPORT = os.environ.get("PGWARDEN_BYPASS_REPORT")  # optional JSON-lines summary of each run


def _report(tech: Technique, client: str, out: Outcome, found: list[str]) -> None:
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({
                "technique": tech.id, "client": client, "expect": tech.expect,
                "states": out.states, "leaks": found, "alive": out.alive,
                "safety_net": bool(SAFETY_NET_SHAPE.search("\n".join(out.seen))),
                "errors": [m[:300] for _, m in out.errors]}) + "\n")


# -- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tech", "client"),
                         [(x, c) for x in TECHNIQUES for c in CLIENTS],
                         ids=[f"{x.id}-{c}" for x in TECHNIQUES for c in CLIENTS])
def test_masking_bypass(tech: Technique, client: str, clients: Clients) -> None:
    out = clients.run(client, tech)
    found = leaks(out.seen)
    _report(tech, client, out, found)
    sql = " / ".join(tech.steps)
    assert not found, (f"LEAK: technique {tech.id!r} via {client}: PAN content reached the "
                       f"client.\nSQL: {sql}\n" + "\n".join(found))
    if tech.expect == REFUSED:
        assert "42501" in out.states, (f"{tech.id} via {client}: expected the gateway to "
                                       f"refuse (42501), got {out.errors or 'no error'}\n"
                                       f"SQL: {sql}")
    elif tech.expect == MASKED:
        assert not out.errors, f"{tech.id} via {client}: unexpected errors {out.errors}\nSQL: {sql}"
        if tech.shows is not None:
            assert tech.shows in "\n".join(out.seen), (
                f"{tech.id} via {client}: expected {tech.shows!r} (the lineage mask) in "
                f"{out.seen[:3]}")
    assert out.alive, f"{tech.id} via {client}: the session did not answer select 1 afterwards"


def test_corpus_size() -> None:
    assert len(TECHNIQUES) >= 50


@pytest.mark.parametrize("client", ["psycopg", "asyncpg"])
def test_startup_application_name_is_scrubbed(client: str, gw: GatewayProcess) -> None:
    """A PAN given as a startup parameter comes back in ParameterStatus: scrubbed too."""
    if client == "psycopg":
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True,
                             application_name=PANS[0]) as c:
            seen = [f"{n}={c.info.parameter_status(n)}" for n in PARAMETER_NAMES]
            seen.append(render(c.execute("show application_name").fetchall()))
    else:
        async def main() -> list[str]:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            c = await asyncpg.connect(host=gw.host, port=gw.port, user="ci-bot",
                                      database="payments", password=gw.token(), ssl=ctx,
                                      server_settings={"application_name": PANS[0]})
            try:
                return [repr(c.get_settings()),
                        render(await c.fetch("show application_name"))]
            finally:
                await c.close()
        try:
            seen = asyncio.run(main())
        except (asyncpg.PostgresError, OSError) as e:
            seen = [str(e)]
    assert not leaks(seen), leaks(seen)
