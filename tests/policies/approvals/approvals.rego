# Test policy for just-in-time approval: statements touching public.vault are held for
# the dba-oncall group until approved; everything else is allowed.
package pgwarden

import rego.v1

touches_vault if {
	some r in input.statement.relations
	r.name == "vault"
}

default held := false

held if {
	touches_vault
	not input.approval.granted
}

default allow := false

allow if not held

reasons := ["reading the vault needs a human's approval"] if held else := []

# Two approvers must agree to release a statement with a LIMIT (a test of min_approvals).
default approvals_needed := 1

approvals_needed := 2 if input.statement.limit != null

decision := {
	"allow": allow,
	"reasons": reasons,
	"mask": {},
	"require_approval": held,
	"approvers": ["dba-oncall"],
	"row_limit": null,
	"db_role": null,
	"grant_ttl": data.pgwarden.grant_ttl,
	"min_approvals": approvals_needed,
}
