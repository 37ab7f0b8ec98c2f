"""Which client startup parameters may reach the upstream.

Startup parameters are GUC assignments made with the gateway's own upstream identity, so
a hostile `options=-c role=admin` or `session_authorization` would change who runs the
statements. Only settings that shape formatting and timeouts pass; anything else is
refused by name so the user learns why instead of seeing a silently different session.
"""

from __future__ import annotations

_FORWARDED = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone", "extra_float_digits",
    "intervalstyle", "search_path", "statement_timeout", "lock_timeout",
    "idle_in_transaction_session_timeout", "bytea_output", "standard_conforming_strings",
    "default_transaction_isolation", "default_transaction_read_only", "jit", "work_mem",
    "geqo", "lc_monetary", "lc_numeric", "lc_time",
})
_CONSUMED = frozenset({"user", "database"})


class StartupParamError(Exception):
    pass


def upstream_params(params: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params.items():
        key = name.lower()
        if key in _CONSUMED or key.startswith("_pq_."):
            continue
        if key not in _FORWARDED:
            shown = "".join(c if c.isprintable() else "?" for c in name[:63])
            raise StartupParamError(
                f'startup parameter "{shown}" is not allowed through the gateway'
            )
        if "\0" in value:
            raise StartupParamError("startup parameter values may not contain NUL")
        out[name] = value
    return out
