# Test policy for least privilege: statements reading public.reports run as the upstream
# role report_reader (the only role allowed to read it); everything else as the gateway.
package pgwarden

import rego.v1

default role := null

role := "report_reader" if {
	some r in input.statement.relations
	r.name == "reports"
}

decision := {
	"allow": true,
	"reasons": [],
	"mask": {},
	"require_approval": false,
	"approvers": [],
	"row_limit": null,
	"db_role": role,
}
