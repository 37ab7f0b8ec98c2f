# Test policy for inline masking: every statement is allowed, and the columns named in
# data.pgwarden.methods come back masked with their method.
package pgwarden

import rego.v1

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
	"row_limit": null,
	"db_role": null,
}
