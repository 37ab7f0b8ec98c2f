# Reads: ci / ci-readers (and ci-writers) may read; card numbers come back masked.
package pgwarden_test

import rego.v1

test_ci_reads_cards_with_pan_masked if {
	d := decision_for(["ci"], select_card)
	well_formed(d)
	d.allow == true
	d.reasons == []
	d.mask == {"public.cards.pan": "pan_last4"}
	d.require_approval == false
	d.row_limit == null
	d.db_role == null
}

test_ci_readers_group_reads_cards_masked if {
	d := decision_for(["ci-readers"], select_card)
	d.allow == true
	d.mask == {"public.cards.pan": "pan_last4"}
}

test_writers_can_read_too if {
	d := decision_for(["ci-writers"], select_card)
	d.allow == true
	d.mask == {"public.cards.pan": "pan_last4"}
}

# The catalog did not tag the column: the bundle's own classification still masks it.
test_pan_masked_from_bundle_classification_without_catalog_tag if {
	s := statement(
		"SELECT pan FROM public.cards",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[col("cards", "pan", [], ["output"])],
	)
	d := decision_for(["ci"], s)
	d.allow == true
	d.mask == {"public.cards.pan": "pan_last4"}
}

# DESIGN §4's example: the PAN used in the output and a filter is allowed, masked.
test_pan_in_output_and_filter_allowed_masked if {
	s := statement(
		"SELECT pan FROM cards WHERE pan LIKE $1",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[col("cards", "pan", ["pan"], ["output", "filter"])],
	)
	d := decision_for(["ci"], s)
	d.allow == true
	d.mask == {"public.cards.pan": "pan_last4"}
}

test_read_without_card_data_has_no_mask if {
	d := decision_for(["ci"], select_transactions)
	d.allow == true
	d.mask == {}
	d.reasons == []
}

test_driver_catalog_introspection_allowed if {
	s := statement(
		"SELECT typname, oid FROM pg_catalog.pg_type WHERE oid = $1",
		"SELECT", "read",
		[{"schema": "pg_catalog", "name": "pg_type", "access": ["read"]}],
		[
			{"schema": "pg_catalog", "table": "pg_type", "name": "typname", "tags": [], "usage": ["output"]},
			{"schema": "pg_catalog", "table": "pg_type", "name": "oid", "tags": [], "usage": ["output", "filter"]},
		],
	)
	d := decision_for(["ci"], s)
	d.allow == true
}

test_unknown_group_cannot_read if {
	d := decision_for(["marketing"], select_transactions)
	well_formed(d)
	d.allow == false
	d.require_approval == false
	d.reasons == ["reading needs one of the groups ci, ci-readers, ci-writers"]
}

test_identity_without_groups_cannot_read if {
	inp := object.union(input_for([], select_card), {"identity": {"subject": "anonymous", "groups": []}})
	d := decide(inp)
	d.allow == false
}

test_read_that_modifies_a_table_is_denied if {
	s := statement(
		"WITH gone AS (DELETE FROM transactions WHERE id = $1 RETURNING id) SELECT id FROM gone",
		"SELECT", "read",
		[rel("transactions", ["delete"])],
		[col("transactions", "id", [], ["output", "filter"])],
	)
	d := decision_for(["ci"], s)
	d.allow == false
	"a read statement may not modify tables" in d.reasons
}
