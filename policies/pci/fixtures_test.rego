# Shared fixtures for the starter policy's tests: realistic input documents
# (DESIGN §4) built the way the gateway builds them.
package pgwarden_test

import rego.v1

identity(groups) := {
	"subject": "repo:acme/payments:ref:refs/heads/main",
	"issuer": "https://token.actions.githubusercontent.com",
	"groups": groups,
	"claims": {"repository": "acme/payments", "workflow": "nightly-reconciliation"},
	"method": "jwt",
}

input_for(groups, statement) := {
	"identity": identity(groups),
	"connection": {
		"name": "cardholder",
		"database": "payments",
		"user": "ci-bot",
		"application_name": "psql",
		"client_addr": "10.20.0.7",
		"tls": true,
		"networks": ["ci-runners"],
	},
	"session": {"id": "5f0c6a1e-0d1b-4d8e-9c61-2b7f0b1c9a10", "started_at": "2025-01-15T09:30:00Z"},
	"statement": statement,
	"approval": {"granted": false, "id": null},
}

# The same input after a human approved the held statement.
approved(inp) := object.union(inp, {"approval": {"granted": true, "id": "apr-0042"}})

# The decision for an input document. Field by field: regopy 1.5 aborts compiling
# `with input as <whole document>`, and each `with` clause costs rego-cpp ~125 MB to
# compile, so only the fields the policy reads are replaced (add one here if the
# policy starts reading input.connection or input.session).
decide(inp) := d if {
	who := object.get(inp, "identity", {})
	stmt := object.get(inp, "statement", {})
	appr := object.get(inp, "approval", {})
	d := data.pgwarden.decision with input.identity as who with input.statement as stmt with input.approval as appr
}

# decide() for a caller in `groups` running `statement`.
decision_for(groups, statement) := decide(input_for(groups, statement))

col(table, name, tags, usage) := {
	"schema": "public",
	"table": table,
	"name": name,
	"tags": tags,
	"usage": usage,
}

rel(name, access) := {"schema": "public", "name": name, "access": access}

statement(sql, command, kind, relations, columns) := {
	"sql": sql,
	"fingerprint": crypto.sha256(sql),
	"command": command,
	"kind": kind,
	"relations": relations,
	"columns": columns,
	"functions": [],
	"has_where": contains(lower(sql), " where "),
	"limit": null,
	"index": 0,
	"count": 1,
	"protocol": "extended",
}

# Statements with no tables (transaction control, SET, SHOW...).
bare(sql, command, kind) := statement(sql, command, kind, [], [])

# SET / RESET as the analysis describes them: details.name is the setting changed.
setting_stmt(sql, command, name) := object.union(bare(sql, command, "session"), {"details": {"name": name}})

# SELECT id, pan, amount_cents FROM cards WHERE id = $1
select_card := statement(
	"SELECT id, pan, amount_cents FROM cards WHERE id = $1",
	"SELECT", "read",
	[rel("cards", ["read"])],
	[
		col("cards", "id", [], ["output", "filter"]),
		col("cards", "pan", ["pan"], ["output"]),
		col("cards", "amount_cents", [], ["output"]),
	],
)

# SELECT id, amount_cents, status FROM transactions WHERE created_at > now() - interval '1 day'
select_transactions := statement(
	"SELECT id, amount_cents, status FROM transactions WHERE created_at > now() - interval '1 day'",
	"SELECT", "read",
	[rel("transactions", ["read"])],
	[
		col("transactions", "id", [], ["output"]),
		col("transactions", "amount_cents", [], ["output"]),
		col("transactions", "status", [], ["output"]),
		col("transactions", "created_at", [], ["filter"]),
	],
)

# Every decision carries the whole DESIGN §4 document.
decision_keys := {"allow", "reasons", "mask", "require_approval", "approvers", "row_limit", "db_role"}

well_formed(d) if {
	every k in decision_keys {
		k in object.keys(d)
	}
	is_boolean(d.allow)
	is_array(d.reasons)
	is_object(d.mask)
}
