"""Functions that run SQL handed to them as a string (or read whole relations/cursors by
name), which the analyzer cannot see into: calls to them set ``sql_string_functions`` so a
policy can refuse them.

Matched by bare name whatever the schema (extensions such as dblink install into any
schema).
"""

from __future__ import annotations

__all__ = ["SQL_STRING_FUNCTIONS", "is_sql_string_function"]

SQL_STRING_FUNCTIONS: frozenset[str] = frozenset({
    # xml export of a query / table / cursor / schema / database
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    # text search statistics over a query
    "ts_stat",
    # extensions that run SQL strings
    "pg_background_launch",
    "run_command_on_workers", "run_command_on_shards", "run_command_on_placements",
    "run_command_on_colocated_placements", "run_command_on_all_nodes",
})


def is_sql_string_function(name: str, nargs: int) -> bool:
    if name in SQL_STRING_FUNCTIONS or name.startswith("dblink"):
        return True
    # ts_rewrite(query tsquery, select text) runs `select`; the 3-argument form doesn't.
    return name == "ts_rewrite" and nargs == 2
