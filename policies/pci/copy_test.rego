# COPY ... TO: exporting card numbers waits for approval by dba-oncall.
package pgwarden_test

import rego.v1

copy_cards_out := statement(
	"COPY (SELECT id, pan, expiry FROM cards) TO STDOUT WITH (FORMAT csv)",
	"COPY", "copy_out",
	[rel("cards", ["read"])],
	[
		col("cards", "id", [], ["output"]),
		col("cards", "pan", ["pan"], ["output"]),
		col("cards", "expiry", [], ["output"]),
	],
)

test_copy_out_of_card_numbers_is_held_for_approval if {
	d := decision_for(["ci"], copy_cards_out)
	well_formed(d)
	d.allow == false
	d.require_approval == true
	d.approvers == ["dba-oncall"]
	d.grant_ttl == 900
	d.reasons == ["exporting card numbers (public.cards.pan) needs approval from dba-oncall"]
	d.mask == {"public.cards.pan": "pan_last4"}
}

test_copy_out_of_card_numbers_runs_once_approved_still_masked if {
	d := decide(approved(input_for(["ci"], copy_cards_out)))
	d.allow == true
	d.require_approval == false
	d.approvers == []
	d.reasons == []
	d.mask == {"public.cards.pan": "pan_last4"}
}

test_copy_out_without_card_numbers_needs_no_approval if {
	s := statement(
		"COPY transactions (id, amount_cents, status) TO STDOUT",
		"COPY", "copy_out",
		[rel("transactions", ["read"])],
		[col("transactions", "id", [], ["output"]), col("transactions", "amount_cents", [], ["output"])],
	)
	d := decision_for(["ci"], s)
	d.allow == true
	d.require_approval == false
}

# Not allowed to read at all: a plain deny, never a hold someone could approve.
test_copy_out_by_an_unknown_group_is_denied_not_held if {
	d := decision_for(["marketing"], copy_cards_out)
	d.allow == false
	d.require_approval == false
	d.approvers == []
}

test_copy_out_of_cvv_is_denied_even_when_approved if {
	s := object.union(copy_cards_out, {"columns": array.concat(copy_cards_out.columns, [col("cards", "cvv", ["cvv"], ["output"])])})
	d := decide(approved(input_for(["ci"], s)))
	d.allow == false
	d.require_approval == false
	d.reasons == ["card verification codes may never be read or written (public.cards.cvv)"]
}
