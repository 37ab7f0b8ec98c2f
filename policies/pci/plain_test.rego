# The one-pass checks for the common case (plain_columns) decide nothing on their own:
# a statement they do not cover gets every column looked at, as before.
package pgwarden_test

import rego.v1

# pgbench -S: SELECT abalance FROM pgbench_accounts WHERE aid = $1
select_account := statement(
	"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
	"SELECT", "read",
	[rel("pgbench_accounts", ["read"])],
	[col("pgbench_accounts", "aid", [], ["filter"]), col("pgbench_accounts", "abalance", [], ["output"])],
)

test_plain_read_is_allowed_without_mask if {
	d := decision_for(["ci"], select_account)
	well_formed(d)
	d.allow == true
	d.reasons == []
	d.mask == {}
	d.require_approval == false
	d.approvers == []
}

test_plain_read_still_needs_a_reader if {
	d := decision_for(["marketing"], select_account)
	d.allow == false
	d.reasons == ["reading needs one of the groups ci, ci-readers, ci-writers"]
}

# One card number among plain columns: only that column is masked.
test_plain_columns_beside_a_card_number if {
	s := statement(
		"SELECT c.id, c.pan, a.abalance FROM cards c JOIN pgbench_accounts a ON a.aid = c.id",
		"SELECT", "read",
		[rel("cards", ["read"]), rel("pgbench_accounts", ["read"])],
		[
			col("cards", "id", [], ["output", "filter"]),
			col("pgbench_accounts", "abalance", [], ["output"]),
			col("pgbench_accounts", "aid", [], ["filter"]),
			col("cards", "pan", [], ["output"]),
		],
	)
	d := decision_for(["ci"], s)
	d.allow == true
	d.mask == {"public.cards.pan": "pan_last4"}
}

# A column the catalog tagged with something this bundle has no mask for is not plain,
# but nothing denies or masks it.
test_column_with_an_unknown_tag_is_allowed_unmasked if {
	s := statement(
		"SELECT email FROM customers",
		"SELECT", "read",
		[rel("customers", ["read"])],
		[col("customers", "email", ["email"], ["output"])],
	)
	d := decision_for(["ci"], s)
	d.allow == true
	d.mask == {}
}

# A column without tags at all (an older analysis) is judged by the classification alone.
test_column_without_a_tags_field if {
	plain := statement(
		"SELECT abalance FROM pgbench_accounts",
		"SELECT", "read",
		[rel("pgbench_accounts", ["read"])],
		[{"schema": "public", "table": "pgbench_accounts", "name": "abalance", "usage": ["output"]}],
	)
	decision_for(["ci"], plain).allow == true
	cvv := statement(
		"SELECT cvv FROM cards",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[{"schema": "public", "table": "cards", "name": "cvv", "usage": ["output"]}],
	)
	decision_for(["ci"], cvv).reasons == ["card verification codes may never be read or written (public.cards.cvv)"]
}

# A column with an empty name is denied, and its tags still count.
test_empty_name_and_tags_are_both_reported if {
	s := statement(
		"SELECT ... FROM cards",
		"SELECT", "read",
		[rel("cards", ["read"])],
		[col("cards", "", ["cvv"], ["output"]), col("pgbench_accounts", "aid", [], ["filter"])],
	)
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == [
		"cannot verify what this statement reads: a column has no schema, table or name",
		"card verification codes may never be read or written (public.cards.)",
	]
}

# A column missing its table among plain ones: denied, nothing masked.
test_column_without_a_table_among_plain_ones if {
	s := object.union(select_account, {"columns": array.concat(
		select_account.columns,
		[{"schema": "public", "name": "abalance", "tags": [], "usage": ["output"]}],
	)})
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["cannot verify what this statement reads: a column has no schema, table or name"]
	d.mask == {}
}

# Writing plain columns: the write rules apply unchanged.
test_write_of_plain_columns_to_another_table_is_denied if {
	s := statement(
		"UPDATE pgbench_accounts SET abalance = 0 WHERE aid = $1",
		"UPDATE", "write",
		[rel("pgbench_accounts", ["update"])],
		[col("pgbench_accounts", "abalance", [], ["target"]), col("pgbench_accounts", "aid", [], ["filter"])],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["writes are only allowed to public.transactions, not public.pgbench_accounts"]
}

# An allowed decision (the written-out one) and a held one name the same fields.
test_allowed_and_held_decisions_are_both_complete if {
	allowed := decision_for(["ci"], select_account)
	held := decision_for(["ci"], copy_cards_out)
	every k in decision_keys {
		k in object.keys(allowed)
		k in object.keys(held)
	}
	held.grant_ttl == 900
}
