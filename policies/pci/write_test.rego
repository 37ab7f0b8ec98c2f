# Writes: only ci-writers, only public.transactions, UPDATE/DELETE need a WHERE.
package pgwarden_test

import rego.v1

insert_transaction := statement(
	"INSERT INTO transactions (card_id, amount_cents, status) VALUES ($1, $2, 'pending')",
	"INSERT", "write",
	[rel("transactions", ["insert"])],
	[
		col("transactions", "card_id", [], ["target"]),
		col("transactions", "amount_cents", [], ["target"]),
		col("transactions", "status", [], ["target"]),
	],
)

update_transaction := statement(
	"UPDATE transactions SET status = 'settled' WHERE id = $1",
	"UPDATE", "write",
	[rel("transactions", ["update"])],
	[
		col("transactions", "status", [], ["target"]),
		col("transactions", "id", [], ["filter"]),
	],
)

test_writer_inserts_into_transactions if {
	d := decision_for(["ci-writers"], insert_transaction)
	well_formed(d)
	d.allow == true
	d.reasons == []
}

test_writer_updates_transactions_with_where if {
	d := decision_for(["ci-writers"], update_transaction)
	d.allow == true
}

test_writer_update_without_where_is_denied if {
	s := object.union(update_transaction, {
		"sql": "UPDATE transactions SET status = 'settled'",
		"has_where": false,
	})
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["UPDATE without a WHERE clause would change every row"]
}

test_writer_delete_without_where_is_denied if {
	s := statement(
		"DELETE FROM transactions",
		"DELETE", "write",
		[rel("transactions", ["delete"])],
		[],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["DELETE without a WHERE clause would change every row"]
}

test_writer_delete_with_where_is_allowed if {
	s := statement(
		"DELETE FROM transactions WHERE status = 'void' AND created_at < $1",
		"DELETE", "write",
		[rel("transactions", ["delete"])],
		[col("transactions", "status", [], ["filter"]), col("transactions", "created_at", [], ["filter"])],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == true
}

test_writer_cannot_write_cards if {
	s := statement(
		"UPDATE cards SET expiry = '12/29' WHERE id = $1",
		"UPDATE", "write",
		[rel("cards", ["update"])],
		[col("cards", "expiry", [], ["target"]), col("cards", "id", [], ["filter"])],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["writes are only allowed to public.transactions, not public.cards"]
}

test_reader_cannot_write if {
	d := decision_for(["ci"], insert_transaction)
	d.allow == false
	d.reasons == ["writing needs one of the groups ci-writers"]
}

test_writer_cannot_copy_card_numbers_into_transactions if {
	s := statement(
		"INSERT INTO transactions (card_id, note) SELECT id, pan FROM cards WHERE id = $1",
		"INSERT", "write",
		[rel("transactions", ["insert"]), rel("cards", ["read"])],
		[
			col("cards", "id", [], ["output", "filter"]),
			col("cards", "pan", ["pan"], ["output"]),
			col("transactions", "note", [], ["target"]),
		],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["writes may not read or store card numbers"]
}

test_merge_is_not_an_allowed_write_command if {
	s := statement(
		"MERGE INTO transactions t USING staging s ON t.id = s.id WHEN MATCHED THEN UPDATE SET status = s.status",
		"MERGE", "write",
		[rel("transactions", ["update"]), rel("staging", ["read"])],
		[],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == false
	"MERGE is not an allowed write command" in d.reasons
}

test_write_whose_target_is_unknown_is_denied if {
	s := statement("INSERT INTO transactions DEFAULT VALUES", "INSERT", "write", [rel("transactions", ["read"])], [])
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["cannot verify which table this statement writes"]
}

test_writer_copies_into_transactions if {
	s := statement(
		"COPY transactions (card_id, amount_cents, status) FROM STDIN",
		"COPY", "copy_in",
		[rel("transactions", ["insert"])],
		[col("transactions", "card_id", [], ["target"])],
	)
	d := decision_for(["ci-writers"], s)
	d.allow == true
}
