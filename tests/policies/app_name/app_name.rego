# Test policy that reads the session's application_name: every statement is allowed,
# except under an application named in data.pgwarden.blocked_apps, which may only change
# session settings (such as its name).
package pgwarden

import rego.v1

blocked if {
	input.connection.application_name in data.pgwarden.blocked_apps
	input.statement.kind != "session"
}

default allowed := true

allowed := false if blocked

reasons contains concat(" ", ["application", input.connection.application_name, "may not query"]) if blocked

decision := {
	"allow": allowed,
	"reasons": [r | some r in reasons],
	"mask": {},
	"require_approval": false,
	"approvers": [],
	"row_limit": null,
	"db_role": null,
}
