# pgwarden starter policy for cardholder data (PCI DSS).
#
# Entrypoint: data.pgwarden.decision (DESIGN §4). Default deny: a statement runs only
# when a rule below permits its kind for one of the caller's groups and no deny rule
# fires. Configuration (groups, column classification, approvers, allow-lists) lives
# in data.json next to this file, under data.pgwarden (base documents: rules here must
# not reuse those names).
#
#   groups.readers  (ci, ci-readers)  read; card numbers come back masked (pan_last4)
#   groups.writers  (ci-writers)      read + INSERT/UPDATE/DELETE on writable_tables
#   groups.dba      (dba)             DDL
#   everyone known                    transaction control, harmless session settings
#
# Never allowed: CVV columns, SET ROLE / SET SESSION AUTHORIZATION, statements whose
# reads cannot be verified (SQL run from strings, unresolved columns), kind "other".
# COPY ... TO of card numbers waits for approval by dba-oncall. Planner statistics and
# pg_stat_activity (other sessions' statements) are for the dba group only.
#
# Every statement goes through this file, so it is written to be cheap under regopy
# (rego-cpp), where a decision costs roughly one unit per object member a lookup walks
# past, per comparison, per builtin call and per rule evaluated, and every rule in the
# file adds a little to every decision:
#   - the input is only named by static paths (input.statement, input.identity.groups,
#     input.approval.granted), so the gateway hands regopy those parts and nothing
#     else (the connection and session facts are never built);
#   - each input field is read once, by a rule, and the fields are first mentioned in
#     the order a plain read needs them: the gateway hands input and data objects to
#     regopy with the keys a policy mentions first, in that order;
#   - the common case is checked in one pass (plain_columns), and checks that concern
#     one kind of statement are guarded by the kind;
#   - `not x == y` rather than `x != y`, `s == set()` rather than `count(s) == 0`: the
#     same meaning without a builtin call (regopy also turns a comparison inside a
#     comprehension into a builtin call: none on the common path);
#   - a rule body binds a collection to a variable before iterating it (iterating a
#     rule's value directly makes regopy serialize it first).
package pgwarden

import rego.v1

# --- the statement ---------------------------------------------------------------------

default stmt := {}

stmt := input.statement

default kind := ""

kind := stmt.kind

default columns := []

columns := stmt.columns

default relations := []

relations := stmt.relations

default functions := []

functions := stmt.functions

# A set as a sorted array. (regopy's sort() of a *set* returns a value that prints as
# an array but cannot be indexed or compared with one: sort an array instead.)
sorted(s) := sort([x | some x in s])

# --- who is asking --------------------------------------------------------------------

member_of(names) if {
	groups := input.identity.groups
	some g in groups
	some name in names
	g == name
}

# Writers may read too.
default is_reader := false

is_reader if member_of(data.pgwarden.groups.readers)

else := is_writer

default is_writer := false

is_writer if member_of(data.pgwarden.groups.writers)

default is_dba := false

is_dba if member_of(data.pgwarden.groups.dba)

default is_known := false

is_known if is_reader

else := is_dba

reader_groups := sort(array.concat(data.pgwarden.groups.readers, data.pgwarden.groups.writers))

# --- what the statement touches ---------------------------------------------------------

# Most statements only touch plain columns: named in full (schema, table and name, none
# empty) and tagged neither by the catalog (the input's tags) nor by this bundle's own
# classification. One pass checks that; tags and names are looked at column by column
# (column_tags, the "no schema, table or name" rule) only when it fails.
default plain_columns := true

plain_columns := false if {
	cols := columns
	some c in cols
	not plain_column(c)
}

plain_column(c) if {
	schema := c.schema
	table := c.table
	name := c.name
	not schema == ""
	not table == ""
	not name == ""
	c.tags == []
	not classified[concat(".", [schema, table, name])]
}

classified := data.pgwarden.classification

# [key, tag] for every tag of every column: the catalog's tags plus this bundle's own
# classification. A column without schema/table/name gets no key (and is denied below).
column_tags := set() if {
	plain_columns
} else := {[key, tag] |
	some c in columns
	key := concat(".", [c.schema, c.table, c.name])
	some tag in array.concat(object.get(c, "tags", []), object.get(classified, key, []))
}

pan_columns := {p[0] | some p in column_tags; p[1] == "pan"}

cvv_columns := {p[0] | some p in column_tags; p[1] == "cvv"}

# "schema.name" (the defaults only matter for input that lacks one of them).
relation_key(r) := key if {
	key := concat(".", [r.schema, r.name])
} else := concat(".", [object.get(r, "schema", ""), object.get(r, "name", "")])

# Relations only the dba group may read. Planner statistics hold raw column values
# (histogram bounds, most common values). pg_stat_activity holds the last statement of
# every session of the gateway's upstream login: other identities' SQL, with the literal
# values the audit trail redacts.
hidden_relation(key) := "planner statistics hold raw column values" if {
	key in data.pgwarden.statistics_relations
	not is_dba
}

hidden_relation(key) := "other sessions' statements, literal values included, are not for this identity" if {
	key in data.pgwarden.activity_relations
	not is_dba
}

written_tables := {relation_key(r) |
	some r in relations
	some access in r.access
	not_a_read(access)
}

not_a_read(access) if not access == "read"

default read_kind := false

read_kind if kind == "read"

else := true if kind == "copy_out"

default write_kind := false

write_kind if kind == "write"

else := true if kind == "copy_in"

# --- permission by statement kind -----------------------------------------------------

default permitted := false

permitted := is_reader if {
	read_kind
} else := is_writer if {
	write_kind
} else := is_dba if {
	kind == "ddl"
} else := is_known if {
	kind in {"transaction", "session"}
} else := true if {
	kind == "utility"
	is_known
	command_word in data.pgwarden.harmless_commands
}

refusal := concat("", ["reading needs one of the groups ", concat(", ", reader_groups)]) if {
	read_kind
} else := concat("", ["writing needs one of the groups ", concat(", ", data.pgwarden.groups.writers)]) if {
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

deny contains concat("", ["card verification codes may never be read or written (", concat(", ", sorted(cvv_columns)), ")"]) if {
	not plain_columns
	not cvv_columns == set()
}

deny contains "cannot verify what this statement reads: it runs SQL built from strings" if {
	stmt.sql_string_functions == true
}

deny contains "cannot verify what this statement reads: some columns or tables are unresolved" if {
	unresolved := stmt.unresolved
	not unresolved == []
	not unresolved == null
	not unresolved == false
	count_or_true(unresolved)
}

count_or_true(x) if x == true

count_or_true(x) if {
	not is_boolean(x)
	count(x) > 0
}

deny contains "cannot verify what this statement reads: a column has no schema, table or name" if {
	not plain_columns
	cols := columns
	some c in cols
	not complete_column(c)
}

complete_column(c) if {
	schema := c.schema
	table := c.table
	name := c.name
	not schema == ""
	not table == ""
	not name == ""
}

deny contains concat(" ", ["function", f, "is not allowed"]) if {
	fns := functions
	some f in fns
	denied_function(f)
}

denied_function(f) if f in data.pgwarden.denied_functions

denied_function(f) if concat(".", ["pg_catalog", f]) in data.pgwarden.denied_functions

# set_config() is SET written as a function: it may change what SET may, by the names the
# SQL analysis found (details.set_config; "?" when a name is not a constant). asyncpg calls
# set_config('jit', 'off', false) before it looks up a type it does not know yet.
deny contains concat(" ", ["set_config may not change the setting", name]) if {
	fns := functions
	some f in fns
	some name in set_config_targets(f)
	not name in data.pgwarden.session_settings
}

set_config_targets(f) := object.get(object.get(stmt, "details", {}), "set_config", ["?"]) if {
	f == "pg_catalog.set_config"
}

# A function outside pg_catalog runs code the gateway cannot see into: it can read card
# data and return it in any encoding. Only the functions the bundle lists may run.
deny contains concat("", ["function ", f, " is not on the allow-list (data.pgwarden.allowed_functions)"]) if {
	fns := functions
	some f in fns
	not startswith(f, "pg_catalog.")
	not f in data.pgwarden.allowed_functions
}

deny contains concat("", [why, ": ", key, " is not readable"]) if {
	rels := relations
	some r in rels
	key := relation_key(r)
	why := hidden_relation(key)
}

deny contains "a read statement may not modify tables" if {
	read_kind
	rels := relations
	some r in rels
	accesses := r.access
	some access in accesses
	not access == "read"
}

# Session statements: never change who you are; other settings from an allow-list.
# The setting is the one the SQL analysis names (statement.details.name): the policy never
# re-reads SQL text, so it cannot be fooled by quoting or comments.
setting := lower(name) if {
	name := stmt.details.name
	is_string(name)
	command_word in {"SET", "RESET"}
}

command := upper(trim_space(object.get(stmt, "command", "")))

# "DISCARD ALL" -> "DISCARD"
command_word := split(command, " ")[0]

default role_change := false

role_change if setting in {"role", "session_authorization"}

deny contains "changing the session role or authorization is not allowed" if role_change

deny contains msg if {
	not read_kind
	kind == "session"
	some msg in session_denials
}

session_denials contains msg if {
	command_word in {"SET", "RESET"}
	not role_change
	msg := setting_refusal
}

setting_refusal := "cannot tell which setting this statement changes" if {
	not setting
} else := concat(" ", ["changing the setting", setting, "is not allowed"]) if {
	not setting in data.pgwarden.session_settings
}

session_denials contains concat(" ", [command, "is not an allowed session command"]) if {
	not command_word in {"SET", "RESET"}
	not command_word in data.pgwarden.harmless_commands
}

# Writes: only writers, only to writable tables, UPDATE/DELETE need a WHERE clause.
deny contains msg if {
	not read_kind
	write_kind
	some msg in write_denials
}

write_denials contains concat("", ["writes are only allowed to ", concat(", ", data.pgwarden.writable_tables), ", not ", t]) if {
	some t in written_tables
	not t in data.pgwarden.writable_tables
}

write_denials contains "cannot verify which table this statement writes" if {
	written_tables == set()
}

write_denials contains concat(" ", [command, "is not an allowed write command"]) if {
	kind == "write"
	not command in {"INSERT", "UPDATE", "DELETE"}
}

write_denials contains concat(" ", [command, "without a WHERE clause would change every row"]) if {
	kind == "write"
	command in {"UPDATE", "DELETE"}
	not object.get(stmt, "has_where", false) == true
}

write_denials contains "writes may not read or store card numbers" if {
	not pan_columns == set()
}

# --- approval for exporting card numbers -----------------------------------------------

default needs_approval := false

needs_approval if {
	kind == "copy_out"
	not pan_columns == set()
	not input.approval.granted == true
}

# --- the decision ---------------------------------------------------------------------

# Masks by tag (data.pgwarden.masking); the first tag in name order that has a method.
mask[key] := method if {
	not plain_columns
	some [key, _] in column_tags
	method := [m | some t in sorted(tags_of(key)); m := data.pgwarden.masking[t]][0]
}

tags_of(key) := {t | some [k, t] in column_tags; k == key}

default allow := false

allow if {
	permitted
	deny == set()
	not needs_approval
}

default require_approval := false

require_approval if {
	needs_approval
	permitted
	deny == set()
}

hold_reason := concat("", [
	"exporting card numbers (",
	concat(", ", sorted(pan_columns)),
	") needs approval from ",
	concat(", ", data.pgwarden.approvals.pan_export.approvers),
])

reasons := [] if {
	allow
} else := [hold_reason] if {
	require_approval
} else := sorted(deny) if {
	not deny == set()
} else := ["no rule allows this statement"]

approvers := data.pgwarden.approvals.pan_export.approvers if require_approval

else := []

grant_ttl := data.pgwarden.approvals.pan_export.grant_ttl_seconds if require_approval

else := null

# An allowed statement has no reasons and nothing to approve (see the rules above), so
# its decision is written out as DESIGN §4 shows it (grant_ttl only matters for a hold)
# rather than assembled from those rules.
decision := {
	"allow": true,
	"reasons": [],
	"mask": mask,
	"require_approval": false,
	"approvers": [],
	"row_limit": null,
	"db_role": null,
} if {
	allow
} else := {
	"allow": allow,
	"reasons": reasons,
	"mask": mask,
	"require_approval": require_approval,
	"approvers": approvers,
	"row_limit": null,
	"db_role": null,
	"grant_ttl": grant_ttl,
}
