"""Command tags and statement kinds for the raw statement node types.

Tags follow PostgreSQL's ``CreateCommandTag`` (what CommandComplete would say, minus row
counts). Kinds are the DESIGN §4 classes: read, write, ddl, copy_out, copy_in, transaction,
session, utility, other. Statements that need their fields to be classified (SELECT INTO,
COPY, EXPLAIN, SET, ...) are handled by the analyzer; this module covers the rest.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "USAGES", "object_type_name", "static_command"]

KINDS = ("read", "write", "ddl", "copy_out", "copy_in", "transaction", "session", "utility",
         "other")

#: Canonical order of column usages in the input document.
USAGES = ("output", "filter", "sort", "group", "window", "returning", "set", "insert")

_OBJECT_NAMES = {
    "ACCESS_METHOD": "ACCESS METHOD",
    "AMOP": "OPERATOR FAMILY",
    "AMPROC": "OPERATOR FAMILY",
    "ATTRIBUTE": "TYPE",
    "COLUMN": "TABLE",
    "DEFACL": "DEFAULT PRIVILEGES",
    "DOMCONSTRAINT": "DOMAIN",
    "EVENT_TRIGGER": "EVENT TRIGGER",
    "FDW": "FOREIGN DATA WRAPPER",
    "FOREIGN_SERVER": "SERVER",
    "FOREIGN_TABLE": "FOREIGN TABLE",
    "LARGEOBJECT": "LARGE OBJECT",
    "MATVIEW": "MATERIALIZED VIEW",
    "OPCLASS": "OPERATOR CLASS",
    "OPFAMILY": "OPERATOR FAMILY",
    "PARAMETER_ACL": "PARAMETER",
    "PUBLICATION_NAMESPACE": "PUBLICATION",
    "PUBLICATION_REL": "PUBLICATION",
    "STATISTIC_EXT": "STATISTICS",
    "TABCONSTRAINT": "TABLE",
    "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "TSPARSER": "TEXT SEARCH PARSER",
    "TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "USER_MAPPING": "USER MAPPING",
}


def object_type_name(objtype: str | None) -> str:
    """``OBJECT_MATVIEW`` → ``MATERIALIZED VIEW``."""
    if not objtype:
        return "TABLE"
    name = objtype.removeprefix("OBJECT_")
    return _OBJECT_NAMES.get(name, name.replace("_", " "))


# node type → (tag, kind) for statements whose tag doesn't depend on their fields.
_STATIC: dict[str, tuple[str, str]] = {
    "AlterCollationStmt": ("ALTER COLLATION", "ddl"),
    "AlterDatabaseRefreshCollStmt": ("ALTER DATABASE", "ddl"),
    "AlterDatabaseSetStmt": ("ALTER DATABASE", "ddl"),
    "AlterDatabaseStmt": ("ALTER DATABASE", "ddl"),
    "AlterDefaultPrivilegesStmt": ("ALTER DEFAULT PRIVILEGES", "ddl"),
    "AlterDomainStmt": ("ALTER DOMAIN", "ddl"),
    "AlterEnumStmt": ("ALTER TYPE", "ddl"),
    "AlterEventTrigStmt": ("ALTER EVENT TRIGGER", "ddl"),
    "AlterExtensionContentsStmt": ("ALTER EXTENSION", "ddl"),
    "AlterExtensionStmt": ("ALTER EXTENSION", "ddl"),
    "AlterFdwStmt": ("ALTER FOREIGN DATA WRAPPER", "ddl"),
    "AlterForeignServerStmt": ("ALTER SERVER", "ddl"),
    "AlterOpFamilyStmt": ("ALTER OPERATOR FAMILY", "ddl"),
    "AlterOperatorStmt": ("ALTER OPERATOR", "ddl"),
    "AlterPolicyStmt": ("ALTER POLICY", "ddl"),
    "AlterPublicationStmt": ("ALTER PUBLICATION", "ddl"),
    "AlterRoleSetStmt": ("ALTER ROLE", "ddl"),
    "AlterRoleStmt": ("ALTER ROLE", "ddl"),
    "AlterSeqStmt": ("ALTER SEQUENCE", "ddl"),
    "AlterStatsStmt": ("ALTER STATISTICS", "ddl"),
    "AlterSubscriptionStmt": ("ALTER SUBSCRIPTION", "ddl"),
    "AlterSystemStmt": ("ALTER SYSTEM", "other"),
    "AlterTSConfigurationStmt": ("ALTER TEXT SEARCH CONFIGURATION", "ddl"),
    "AlterTSDictionaryStmt": ("ALTER TEXT SEARCH DICTIONARY", "ddl"),
    "AlterTableSpaceOptionsStmt": ("ALTER TABLESPACE", "ddl"),
    "AlterTypeStmt": ("ALTER TYPE", "ddl"),
    "AlterUserMappingStmt": ("ALTER USER MAPPING", "ddl"),
    "CheckPointStmt": ("CHECKPOINT", "utility"),
    "ClusterStmt": ("CLUSTER", "utility"),
    "CommentStmt": ("COMMENT", "ddl"),
    "CompositeTypeStmt": ("CREATE TYPE", "ddl"),
    "ConstraintsSetStmt": ("SET CONSTRAINTS", "transaction"),
    "CreateAmStmt": ("CREATE ACCESS METHOD", "ddl"),
    "CreateCastStmt": ("CREATE CAST", "ddl"),
    "CreateConversionStmt": ("CREATE CONVERSION", "ddl"),
    "CreateDomainStmt": ("CREATE DOMAIN", "ddl"),
    "CreateEnumStmt": ("CREATE TYPE", "ddl"),
    "CreateEventTrigStmt": ("CREATE EVENT TRIGGER", "ddl"),
    "CreateExtensionStmt": ("CREATE EXTENSION", "ddl"),
    "CreateFdwStmt": ("CREATE FOREIGN DATA WRAPPER", "ddl"),
    "CreateForeignServerStmt": ("CREATE SERVER", "ddl"),
    "CreateForeignTableStmt": ("CREATE FOREIGN TABLE", "ddl"),
    "CreateOpClassStmt": ("CREATE OPERATOR CLASS", "ddl"),
    "CreateOpFamilyStmt": ("CREATE OPERATOR FAMILY", "ddl"),
    "CreatePLangStmt": ("CREATE LANGUAGE", "ddl"),
    "CreatePolicyStmt": ("CREATE POLICY", "ddl"),
    "CreatePublicationStmt": ("CREATE PUBLICATION", "ddl"),
    "CreateRangeStmt": ("CREATE TYPE", "ddl"),
    "CreateRoleStmt": ("CREATE ROLE", "ddl"),
    "CreateSchemaStmt": ("CREATE SCHEMA", "ddl"),
    "CreateSeqStmt": ("CREATE SEQUENCE", "ddl"),
    "CreateStatsStmt": ("CREATE STATISTICS", "ddl"),
    "CreateStmt": ("CREATE TABLE", "ddl"),
    "CreateSubscriptionStmt": ("CREATE SUBSCRIPTION", "ddl"),
    "CreateTableSpaceStmt": ("CREATE TABLESPACE", "ddl"),
    "CreateTransformStmt": ("CREATE TRANSFORM", "ddl"),
    "CreateTrigStmt": ("CREATE TRIGGER", "ddl"),
    "CreateUserMappingStmt": ("CREATE USER MAPPING", "ddl"),
    "CreatedbStmt": ("CREATE DATABASE", "ddl"),
    "DropOwnedStmt": ("DROP OWNED", "ddl"),
    "DropRoleStmt": ("DROP ROLE", "ddl"),
    "DropSubscriptionStmt": ("DROP SUBSCRIPTION", "ddl"),
    "DropTableSpaceStmt": ("DROP TABLESPACE", "ddl"),
    "DropUserMappingStmt": ("DROP USER MAPPING", "ddl"),
    "DropdbStmt": ("DROP DATABASE", "ddl"),
    "ImportForeignSchemaStmt": ("IMPORT FOREIGN SCHEMA", "ddl"),
    "IndexStmt": ("CREATE INDEX", "ddl"),
    "ListenStmt": ("LISTEN", "session"),
    "LoadStmt": ("LOAD", "other"),
    "LockStmt": ("LOCK TABLE", "utility"),
    "NotifyStmt": ("NOTIFY", "utility"),
    "ReassignOwnedStmt": ("REASSIGN OWNED", "ddl"),
    "RefreshMatViewStmt": ("REFRESH MATERIALIZED VIEW", "ddl"),
    "ReindexStmt": ("REINDEX", "utility"),
    "ReplicaIdentityStmt": ("ALTER TABLE", "ddl"),
    "RuleStmt": ("CREATE RULE", "ddl"),
    "SecLabelStmt": ("SECURITY LABEL", "ddl"),
    "TruncateStmt": ("TRUNCATE TABLE", "write"),
    "UnlistenStmt": ("UNLISTEN", "session"),
    "VariableShowStmt": ("SHOW", "session"),
    "ViewStmt": ("CREATE VIEW", "ddl"),
    "DoStmt": ("DO", "other"),
    "CallStmt": ("CALL", "other"),
}

_TRANSACTION_TAGS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_DEFINE_TAGS = {
    "OBJECT_AGGREGATE": "CREATE AGGREGATE",
    "OBJECT_OPERATOR": "CREATE OPERATOR",
    "OBJECT_TYPE": "CREATE TYPE",
    "OBJECT_TSPARSER": "CREATE TEXT SEARCH PARSER",
    "OBJECT_TSDICTIONARY": "CREATE TEXT SEARCH DICTIONARY",
    "OBJECT_TSTEMPLATE": "CREATE TEXT SEARCH TEMPLATE",
    "OBJECT_TSCONFIGURATION": "CREATE TEXT SEARCH CONFIGURATION",
    "OBJECT_COLLATION": "CREATE COLLATION",
}

_DDL_PREFIXES = ("Create", "Alter", "Drop", "Define", "Rename", "Grant", "Comment", "SecLabel",
                 "Reassign", "Import", "Refresh")


def static_command(node_type: str, v: dict[str, Any]) -> tuple[str, str]:
    """(command tag, kind) for statements the analyzer has no special handling for."""
    hit = _STATIC.get(node_type)
    if hit is not None:
        return hit
    if node_type == "TransactionStmt":
        return _TRANSACTION_TAGS.get(v.get("kind", ""), "TRANSACTION"), "transaction"
    if node_type == "DropStmt":
        return "DROP " + object_type_name(v.get("removeType")), "ddl"
    if node_type in ("AlterTableStmt", "AlterTableMoveAllStmt"):
        return "ALTER " + object_type_name(v.get("objtype")), "ddl"
    if node_type in ("AlterObjectSchemaStmt", "AlterOwnerStmt", "AlterObjectDependsStmt"):
        return "ALTER " + object_type_name(v.get("objectType")), "ddl"
    if node_type == "RenameStmt":
        rtype = v.get("renameType")
        if rtype in ("OBJECT_COLUMN", "OBJECT_TABCONSTRAINT"):
            return "ALTER " + object_type_name(v.get("relationType")), "ddl"
        return "ALTER " + object_type_name(rtype), "ddl"
    if node_type == "AlterFunctionStmt":
        return "ALTER " + object_type_name(v.get("objtype") or "OBJECT_FUNCTION"), "ddl"
    if node_type == "CreateFunctionStmt":
        return ("CREATE PROCEDURE" if v.get("is_procedure") else "CREATE FUNCTION"), "ddl"
    if node_type == "DefineStmt":
        return _DEFINE_TAGS.get(v.get("kind", ""), "CREATE TYPE"), "ddl"
    if node_type == "GrantStmt":
        return ("GRANT" if v.get("is_grant") else "REVOKE"), "ddl"
    if node_type == "GrantRoleStmt":
        return ("GRANT ROLE" if v.get("is_grant") else "REVOKE ROLE"), "ddl"
    if node_type == "VacuumStmt":
        return ("VACUUM" if v.get("is_vacuumcmd") else "ANALYZE"), "utility"
    if node_type == "ClosePortalStmt":
        return ("CLOSE CURSOR" if v.get("portalname") else "CLOSE CURSOR ALL"), "session"
    if node_type == "DeallocateStmt":
        return ("DEALLOCATE ALL" if v.get("isall") or not v.get("name") else "DEALLOCATE"), \
            "session"
    if node_type == "DiscardStmt":
        target = v.get("target", "DISCARD_ALL").removeprefix("DISCARD_")
        return "DISCARD " + target, "session"
    if node_type.startswith(_DDL_PREFIXES):
        words = []
        word = ""
        for ch in node_type.removesuffix("Stmt"):
            if ch.isupper() and word:
                words.append(word)
                word = ""
            word += ch
        if word:
            words.append(word)
        return " ".join(words).upper(), "ddl"
    # Anything else is not understood: fail closed.
    return node_type.removesuffix("Stmt").upper(), "other"
