# Fail closed: CVV, unverifiable reads, unclassifiable statements.
package pgwarden_test

import rego.v1

test_reading_cvv_is_denied if {
	s := statement(
		"SELECT pan, cvv FROM cards WHERE id = $1",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[col("cards", "pan", ["pan"], ["output"]), col("cards", "cvv", ["cvv"], ["output"]), col("cards", "id", [], ["filter"])],
	)
	d := decision_for(["ci"], s)
	well_formed(d)
	d.allow == false
	d.reasons == ["card verification codes may never be read or written (public.cards.cvv)"]
}

# Tagged by the bundle's classification only, and used only in a filter: still denied.
test_filtering_on_cvv_is_denied if {
	s := statement(
		"SELECT count(*) FROM cards WHERE cvv = $1",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[col("cards", "cvv", [], ["filter"])],
	)
	d := decision_for(["ci"], s)
	d.allow == false
}

test_sql_built_from_strings_is_denied if {
	s := object.union(
		bare("SELECT query_to_xml('select pan from cards', true, true, '')", "SELECT", "read"),
		{"functions": ["pg_catalog.query_to_xml"], "sql_string_functions": true},
	)
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["cannot verify what this statement reads: it runs SQL built from strings"]
}

test_unresolved_columns_are_denied if {
	s := object.union(select_transactions, {"unresolved": ["gone.amount"]})
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["cannot verify what this statement reads: some columns or tables are unresolved"]
}

test_empty_unresolved_list_is_fine if {
	s := object.union(select_transactions, {"unresolved": []})
	d := decision_for(["ci"], s)
	d.allow == true
}

test_column_without_a_table_is_denied if {
	s := object.union(select_transactions, {"columns": [{"schema": "public", "name": "amount_cents", "tags": [], "usage": ["output"]}]})
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["cannot verify what this statement reads: a column has no schema, table or name"]
}

test_statement_of_kind_other_is_denied if {
	d := decision_for(["dba"], bare("LOAD 'auto_explain'", "LOAD", "other"))
	d.allow == false
	d.reasons == ["the gateway could not classify this statement"]
}

test_unknown_statement_kind_is_denied if {
	d := decision_for(["ci"], bare("SELECT 1", "SELECT", "telepathy"))
	d.allow == false
	d.reasons == ["unknown statement kind \"telepathy\""]
}

test_missing_statement_is_denied if {
	d := decide({"identity": identity(["ci"])})
	well_formed(d)
	d.allow == false
}

test_reasons_are_all_given_and_sorted if {
	s := object.union(
		statement(
			"SELECT cvv FROM cards",
			"SELECT", "read",
			[rel("cards", ["read"])],
			[col("cards", "cvv", ["cvv"], ["output"])],
		),
		{"sql_string_functions": true},
	)
	d := decision_for(["marketing"], s)
	d.reasons == [
		"cannot verify what this statement reads: it runs SQL built from strings",
		"card verification codes may never be read or written (public.cards.cvv)",
		"reading needs one of the groups ci, ci-readers, ci-writers",
	]
}

# A function outside pg_catalog can return card data in any encoding: allow-list only.
test_functions_outside_pg_catalog_need_the_allow_list if {
	s := object.union(bare("SELECT reverse(mb.pan_of(1))", "SELECT", "read"), {"functions": ["pg_catalog.reverse", "mb.pan_of"]})
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["function mb.pan_of is not on the allow-list (data.pgwarden.allowed_functions)"]
}

test_allow_listed_function_runs if {
	s := object.union(bare("SELECT mb.pan_of(1)", "SELECT", "read"), {"functions": ["mb.pan_of"]})
	d := decision_for(["ci"], s) with data.pgwarden.allowed_functions as ["mb.pan_of"]
	d.allow == true
}

test_planner_statistics_are_not_readable if {
	s := statement(
		"SELECT histogram_bounds FROM pg_stats WHERE tablename = 'cards'",
		"SELECT", "read",
		[{"schema": "pg_catalog", "name": "pg_stats", "access": ["read"]}],
		[],
	)
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["planner statistics hold raw column values: pg_catalog.pg_stats is not readable"]
	decision_for(["ci", "dba"], s).allow == true
}

test_other_sessions_statements_are_not_readable if {
	s := statement(
		"SELECT query FROM pg_stat_activity",
		"SELECT", "read",
		[{"schema": "pg_catalog", "name": "pg_stat_activity", "access": ["read"]}],
		[],
	)
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["other sessions' statements, literal values included, are not for this identity: pg_catalog.pg_stat_activity is not readable"]
	decision_for(["ci", "dba"], s).allow == true
	f := object.union(bare("SELECT pg_stat_get_backend_activity(1)", "SELECT", "read"),
		{"functions": ["pg_catalog.pg_stat_get_backend_activity"]})
	decision_for(["ci"], f).allow == false
}
