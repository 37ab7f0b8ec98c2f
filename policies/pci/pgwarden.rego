# pgwarden starter policy for cardholder data (PCI DSS).
#
# Entrypoint: data.pgwarden.decision (DESIGN §4). Default deny: a statement runs only
# when a rule below permits its kind for one of the caller's groups and no deny rule
# fires. Configuration (groups, column classification, approvers, allow-lists) lives
# in data.json next to this file, under data.pgwarden.
#
#   groups.readers  (ci, ci-readers)  read; card numbers come back masked (pan_last4)
#   groups.writers  (ci-writers)      read + INSERT/UPDATE/DELETE on writable_tables
#   groups.dba      (dba)             DDL
#   everyone known                    transaction control, harmless session settings
#
# Never allowed: CVV columns, SET ROLE / SET SESSION AUTHORIZATION, statements whose
# reads cannot be verified (SQL run from strings, unresolved columns), kind "other".
# COPY ... TO of card numbers waits for approval by dba-oncall.
package pgwarden

import rego.v1

# Configuration from data.json, under data.pgwarden (base documents: rules here must
# not reuse those names).
cfg := {
	"groups": data.pgwarden.groups,
	"classification": data.pgwarden.classification,
	"masking": data.pgwarden.masking,
	"writable_tables": data.pgwarden.writable_tables,
	"session_settings": data.pgwarden.session_settings,
	"harmless_commands": data.pgwarden.harmless_commands,
	"denied_functions": data.pgwarden.denied_functions,
	"allowed_functions": data.pgwarden.allowed_functions,
	"statistics_relations": data.pgwarden.statistics_relations,
	"export_approval": data.pgwarden.approvals.pan_export,
}

stmt := object.get(input, "statement", {})

kind := object.get(stmt, "kind", "")

command := upper(trim_space(object.get(stmt, "command", "")))

# "DISCARD ALL" -> "DISCARD"
command_word := split(command, " ")[0]

# A set as a sorted array. (regopy's sort() of a *set* returns a value that prints as
# an array but cannot be indexed or compared with one: sort an array instead.)
sorted(s) := sort([x | some x in s])

# --- who is asking --------------------------------------------------------------------

caller_groups contains g if {
	some g in input.identity.groups
}

member_of(names) if {
	some g in names
	g in caller_groups
}

is_writer if member_of(cfg.groups.writers)

is_reader if member_of(cfg.groups.readers)

is_reader if is_writer

is_dba if member_of(cfg.groups.dba)

is_known if is_reader

is_known if is_dba

reader_groups := sort(array.concat(cfg.groups.readers, cfg.groups.writers))

# --- what the statement touches ---------------------------------------------------------

columns := object.get(stmt, "columns", [])

relations := object.get(stmt, "relations", [])

# [key, tag] for every tag of every column: the catalog's tags (in the input) plus
# this bundle's own classification. A column without schema/table/name gets no key
# (and is denied below).
column_tags contains [key, tag] if {
	some c in columns
	key := concat(".", [c.schema, c.table, c.name])
	some tag in array.concat(object.get(c, "tags", []), object.get(cfg.classification, key, []))
}

tagged(tag) := {p[0] | some p in column_tags; p[1] == tag}

pan_columns := tagged("pan")

cvv_columns := tagged("cvv")

relation_key(r) := concat(".", [object.get(r, "schema", ""), object.get(r, "name", "")])

written_tables contains relation_key(r) if {
	some r in relations
	some access in object.get(r, "access", [])
	access != "read"
}

write_kind if kind in {"write", "copy_in"}

# --- permission by statement kind -----------------------------------------------------

permitted if {
	kind in {"read", "copy_out"}
	is_reader
}

permitted if {
	write_kind
	is_writer
}

permitted if {
	kind == "ddl"
	is_dba
}

permitted if {
	kind in {"transaction", "session"}
	is_known
}

permitted if {
	kind == "utility"
	is_known
	command_word in cfg.harmless_commands
}

refusal := concat("", ["reading needs one of the groups ", concat(", ", reader_groups)]) if {
	kind in {"read", "copy_out"}
} else := concat("", ["writing needs one of the groups ", concat(", ", cfg.groups.writers)]) if {
	write_kind
} else := "schema changes (DDL) are reserved for the dba group" if {
	kind == "ddl"
} else := concat(" ", [command, "is not an allowed utility command"]) if {
	kind == "utility"
	is_known
} else := "this identity is in none of the groups the policy knows" if {
	kind in {"transaction", "session", "utility"}
} else := "the gateway could not classify this statement" if {
	kind == "other"
} else := concat("", ["unknown statement kind \"", kind, "\""])

# --- deny rules (each adds a reason) ----------------------------------------------------
#
# Reasons are built with concat(), not sprintf(): regopy's sprintf prints strings that
# come from builtins (concat, upper...) with their JSON quotes.

deny contains refusal if not permitted

deny contains msg if {
	count(cvv_columns) > 0
	msg := concat("", ["card verification codes may never be read or written (", concat(", ", sorted(cvv_columns)), ")"])
}

deny contains "cannot verify what this statement reads: it runs SQL built from strings" if {
	object.get(stmt, "sql_string_functions", false) == true
}

deny contains "cannot verify what this statement reads: some columns or tables are unresolved" if {
	unresolved := object.get(stmt, "unresolved", [])
	unresolved != null
	unresolved != false
	count_or_true(unresolved)
}

count_or_true(x) if x == true

count_or_true(x) if {
	not is_boolean(x)
	count(x) > 0
}

deny contains "cannot verify what this statement reads: a column has no schema, table or name" if {
	some c in columns
	some part in ["schema", "table", "name"]
	object.get(c, part, "") == ""
}

deny contains concat(" ", ["function", f, "is not allowed"]) if {
	some f in object.get(stmt, "functions", [])
	denied_function(f)
}

denied_function(f) if f in cfg.denied_functions

# set_config() is SET written as a function: it may change what SET may, by the names the
# SQL analysis found (details.set_config; "?" when a name is not a constant). asyncpg calls
# set_config('jit', 'off', false) before it looks up a type it does not know yet.
deny contains concat(" ", ["set_config may not change the setting", name]) if {
	"pg_catalog.set_config" in object.get(stmt, "functions", [])
	some name in object.get(object.get(stmt, "details", {}), "set_config", ["?"])
	not name in cfg.session_settings
}

# A function outside pg_catalog runs code the gateway cannot see into: it can read card
# data and return it in any encoding. Only the functions the bundle lists may run.
deny contains concat("", ["function ", f, " is not on the allow-list (data.pgwarden.allowed_functions)"]) if {
	some f in object.get(stmt, "functions", [])
	not startswith(f, "pg_catalog.")
	not f in cfg.allowed_functions
}

# Planner statistics hold raw column values (histogram bounds, most common values).
deny contains concat("", ["planner statistics hold raw column values: ", relation_key(r), " is not readable"]) if {
	some r in relations
	relation_key(r) in cfg.statistics_relations
	not is_dba
}

denied_function(f) if concat(".", ["pg_catalog", f]) in cfg.denied_functions

# Writes: only writers, only to writable tables, UPDATE/DELETE need a WHERE clause.
deny contains concat("", ["writes are only allowed to ", concat(", ", cfg.writable_tables), ", not ", t]) if {
	write_kind
	some t in written_tables
	not t in cfg.writable_tables
}

deny contains "cannot verify which table this statement writes" if {
	write_kind
	count(written_tables) == 0
}

deny contains concat(" ", [command, "is not an allowed write command"]) if {
	kind == "write"
	not command in {"INSERT", "UPDATE", "DELETE"}
}

deny contains concat(" ", [command, "without a WHERE clause would change every row"]) if {
	kind == "write"
	command in {"UPDATE", "DELETE"}
	object.get(stmt, "has_where", false) != true
}

deny contains "writes may not read or store card numbers" if {
	write_kind
	count(pan_columns) > 0
}

deny contains "a read statement may not modify tables" if {
	kind in {"read", "copy_out"}
	count(written_tables) > 0
}

# Session statements: never change who you are; other settings from an allow-list.
# The setting is the one the SQL analysis names (statement.details.name): the policy never
# re-reads SQL text, so it cannot be fooled by quoting or comments.
setting := lower(stmt.details.name) if {
	command_word in {"SET", "RESET"}
	is_string(stmt.details.name)
}

role_change if setting in {"role", "session_authorization"}

deny contains "changing the session role or authorization is not allowed" if role_change

deny contains msg if {
	kind == "session"
	command_word in {"SET", "RESET"}
	not role_change
	msg := setting_refusal
}

setting_refusal := "cannot tell which setting this statement changes" if {
	not setting
} else := concat(" ", ["changing the setting", setting, "is not allowed"]) if {
	not setting in cfg.session_settings
}

deny contains concat(" ", [command, "is not an allowed session command"]) if {
	kind == "session"
	not command_word in {"SET", "RESET"}
	not command_word in cfg.harmless_commands
}

# --- approval for exporting card numbers -----------------------------------------------

approval_granted if input.approval.granted == true

needs_approval if {
	kind == "copy_out"
	count(pan_columns) > 0
	not approval_granted
}

# --- the decision ---------------------------------------------------------------------

# Masks by tag (data.pgwarden.masking); the first tag in name order that has a method.
mask[key] := method if {
	some p in column_tags
	key := p[0]
	methods := [m | some t in sorted({q[1] | some q in column_tags; q[0] == key}); m := cfg.masking[t]]
	count(methods) > 0
	method := methods[0]
}

default allow := false

allow if {
	permitted
	count(deny) == 0
	not needs_approval
}

default require_approval := false

require_approval if {
	permitted
	count(deny) == 0
	needs_approval
}

hold_reason := concat("", [
	"exporting card numbers (",
	concat(", ", sorted(pan_columns)),
	") needs approval from ",
	concat(", ", cfg.export_approval.approvers),
])

reasons := [] if {
	allow
} else := [hold_reason] if {
	require_approval
} else := sorted(deny) if {
	count(deny) > 0
} else := ["no rule allows this statement"]

approvers := cfg.export_approval.approvers if require_approval

else := []

grant_ttl := cfg.export_approval.grant_ttl_seconds if require_approval

else := null

decision := {
	"allow": allow,
	"reasons": reasons,
	"mask": mask,
	"require_approval": require_approval,
	"approvers": approvers,
	"row_limit": null,
	"db_role": null,
	"grant_ttl": grant_ttl,
}
