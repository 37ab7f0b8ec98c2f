# Test policy for row limits: every statement is allowed; one that reads a table named
# in data.pgwarden.limits gets the smallest of those tables' limits as its row_limit, and
# the columns named in data.pgwarden.methods come back masked with their method.
package pgwarden

import rego.v1

applicable contains n if {
	some r in input.statement.relations
	n := data.pgwarden.limits[concat(".", [r.schema, r.name])]
}

row_limit := min(applicable) if count(applicable) > 0

default row_limit := null

mask[key] := method if {
	some c in input.statement.columns
	key := concat(".", [c.schema, c.table, c.name])
	method := data.pgwarden.methods[key]
}

decision := {
	"allow": true,
	"reasons": [],
	"mask": mask,
	"require_approval": false,
	"approvers": [],
	"row_limit": row_limit,
	"db_role": null,
}
