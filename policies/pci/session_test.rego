# DDL (dba only), session settings (never change role), transactions, utility commands.
package pgwarden_test

import rego.v1

create_index := statement(
	"CREATE INDEX CONCURRENTLY transactions_created_at_idx ON transactions (created_at)",
	"CREATE INDEX", "ddl",
	[rel("transactions", ["ddl"])],
	[],
)

test_dba_can_run_ddl if {
	d := decision_for(["dba"], create_index)
	well_formed(d)
	d.allow == true
}

test_ci_cannot_run_ddl if {
	d := decision_for(["ci"], create_index)
	d.allow == false
	d.reasons == ["schema changes (DDL) are reserved for the dba group"]
}

test_writer_cannot_drop_a_table if {
	s := statement("DROP TABLE transactions", "DROP TABLE", "ddl", [rel("transactions", ["ddl"])], [])
	d := decision_for(["ci-writers"], s)
	d.allow == false
	d.reasons == ["schema changes (DDL) are reserved for the dba group"]
}

test_set_role_is_denied if {
	d := decision_for(["ci"], setting_stmt("SET ROLE payments_owner", "SET", "role"))
	d.allow == false
	d.reasons == ["changing the session role or authorization is not allowed"]
}

test_set_role_is_denied_even_for_dba if {
	d := decision_for(["dba"], setting_stmt("set local role postgres", "SET", "role"))
	d.allow == false
	d.reasons == ["changing the session role or authorization is not allowed"]
}

test_set_session_authorization_is_denied if {
	d := decision_for(["ci"], setting_stmt("SET SESSION AUTHORIZATION postgres", "SET", "session_authorization"))
	d.allow == false
	d.reasons == ["changing the session role or authorization is not allowed"]
}

test_set_session_authorization_guc_form_is_denied if {
	d := decision_for(["ci"], setting_stmt("SET session_authorization = 'postgres'", "SET", "session_authorization"))
	d.allow == false
}

test_reset_role_is_denied if {
	d := decision_for(["ci"], setting_stmt("RESET ROLE", "RESET", "role"))
	d.allow == false
}

# The setting is what the SQL analysis names (details.name), not a reading of the text.
test_role_change_named_by_the_analysis_is_denied if {
	s := setting_stmt("SET \"role\" TO admin", "SET", "role")
	d := decision_for(["ci"], s)
	d.allow == false
	d.reasons == ["changing the session role or authorization is not allowed"]
}

test_set_search_path_is_allowed if {
	d := decision_for(["ci"], setting_stmt("SET search_path TO public, pg_catalog", "SET", "search_path"))
	d.allow == true
	d.reasons == []
}

test_set_time_zone_is_allowed if {
	d := decision_for(["ci-readers"], setting_stmt("SET TIME ZONE 'UTC'", "SET", "timezone"))
	d.allow == true
}

test_set_local_statement_timeout_is_allowed if {
	d := decision_for(["ci"], setting_stmt("SET LOCAL statement_timeout = '5s'", "SET", "statement_timeout"))
	d.allow == true
}

test_setting_outside_the_allow_list_is_denied if {
	d := decision_for(["ci"], setting_stmt("SET session_replication_role = replica", "SET", "session_replication_role"))
	d.allow == false
	d.reasons == ["changing the setting session_replication_role is not allowed"]
}

test_set_without_a_named_setting_is_denied if {
	d := decision_for(["ci"], bare("SET something", "SET", "session"))
	d.allow == false
	d.reasons == ["cannot tell which setting this statement changes"]
}

test_show_is_allowed if {
	d := decision_for(["ci"], bare("SHOW search_path", "SHOW", "session"))
	d.allow == true
}

test_session_statement_needs_a_known_group if {
	d := decision_for(["marketing"], setting_stmt("SET search_path TO public", "SET", "search_path"))
	d.allow == false
	d.reasons == ["this identity is in none of the groups the policy knows"]
}

test_transaction_control_is_allowed if {
	every sql in ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s1", "RELEASE SAVEPOINT s1"] {
		d := decision_for(["ci"], bare(sql, split(sql, " ")[0], "transaction"))
		d.allow == true
	}
}

test_transaction_control_needs_a_known_group if {
	d := decision_for(["marketing"], bare("BEGIN", "BEGIN", "transaction"))
	d.allow == false
}

test_discard_all_is_allowed if {
	d := decision_for(["ci"], bare("DISCARD ALL", "DISCARD ALL", "utility"))
	d.allow == true
}

test_vacuum_is_not_an_allowed_utility_command if {
	d := decision_for(["ci"], bare("VACUUM transactions", "VACUUM", "utility"))
	d.allow == false
	d.reasons == ["VACUUM is not an allowed utility command"]
}

test_set_config_may_not_change_other_settings if {
	every name in ["role", "log_statement", "?"] {
		s := object.union(
			bare("SELECT set_config('x', 'y', false)", "SELECT", "read"),
			{"functions": ["pg_catalog.set_config"], "details": {"set_config": [name]}},
		)
		d := decision_for(["ci"], s)
		d.allow == false
		d.reasons == [concat(" ", ["set_config may not change the setting", name])]
	}
}

test_set_config_without_known_targets_is_denied if {
	s := object.union(
		bare("SELECT set_config(name, 'off', false) FROM t", "SELECT", "read"),
		{"functions": ["pg_catalog.set_config"]},
	)
	d := decision_for(["ci"], s)
	d.allow == false
}

test_set_config_of_an_allowed_setting_is_allowed if {
	# asyncpg's type introspection: SELECT current_setting('jit'), set_config('jit', 'off', false)
	s := object.union(
		bare("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new", "SELECT", "read"),
		{"functions": ["pg_catalog.current_setting", "pg_catalog.set_config"], "details": {"set_config": ["jit"]}},
	)
	d := decision_for(["ci"], s)
	d.allow == true
}
