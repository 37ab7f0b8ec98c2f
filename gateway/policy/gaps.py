"""What OPA accepts but regopy (rego-cpp) does not do the same way — found statically.

``policy_gaps`` backs ``pgwarden policy check``: a policy written and tested with OPA can
compile under regopy and still behave differently, because regopy

* lacks some builtins (``http.send``, every ``net.*``, ``graphql.*``,
  ``json.match_schema``/``json.verify_schema``, ``rego.metadata.*``,
  ``rego.parse_module``, ``strings.render_template``, ``providers.aws.sign_req``,
  ``trace``) — a call is an evaluation error (the gateway denies) or, with strict
  builtin errors off, silently undefined;
* does not support inline regex flags such as ``(?i)`` (the regex fails to parse);
* ignores the ``%q`` verb in ``sprintf`` (the output keeps a literal ``%q``), and prints
  strings computed by builtins into ``%s``/``%v`` with their JSON quotes;
* accepts variables that are never bound (OPA: "var x is unsafe") and evaluates them
  as undefined;
* computes some builtins differently (``object.union`` is not recursive; ``sort`` of a
  set returns a value that cannot be indexed or compared with an array);
* aborts the process compiling ``with input as ...`` (the whole input; refused before
  compiling), and evaluates ``with x as <rule name>`` as undefined;
* writes ``print()`` output to the process's stdout;
* accepts OPA v0 forms OPA 1.x rejects (a rule body without ``if``).

It also reports (as ``info``) the non-deterministic builtins that switch the decision
cache off: see :data:`NONDETERMINISTIC_BUILTINS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from gateway.policy.scan import ModuleInfo, scan_module, unbound_variables, variable_unifications
from gateway.policy.source import PolicySource

__all__ = [
    "DIVERGENT_BUILTINS",
    "NONDETERMINISTIC_BUILTINS",
    "OPA_ONLY_BUILTINS",
    "PolicyWarning",
    "nondeterministic_calls",
    "policy_gaps",
]

# Builtins (exact names, or prefixes ending in ".") OPA has and regopy 1.5 lacks.
OPA_ONLY_BUILTINS: tuple[str, ...] = (
    "http.send",
    "net.",
    "graphql.",
    "json.match_schema",
    "json.verify_schema",
    "rego.metadata.",
    "rego.parse_module",
    "strings.render_template",
    "providers.aws.sign_req",
    "trace",
)

# Builtins whose result depends on something other than input + policy + data (clock,
# randomness, network, the runtime environment). A policy calling any of them is not
# deterministic: decisions are not cached.
NONDETERMINISTIC_BUILTINS: tuple[str, ...] = (
    "time.now_ns",  # the clock
    "rand.",  # rand.intn
    "uuid.rfc4122",  # random UUIDs
    "http.send",  # the network
    "net.lookup_ip_addr",  # DNS
    "opa.runtime",  # environment, config
    "io.jwt.decode_verify",  # checks exp/nbf against the clock
    "crypto.x509.parse_and_verify_certificates",  # validity period vs the clock
    "crypto.x509.parse_and_verify_certificates_with_options",
)

# Builtins regopy has but that compute something different from OPA.
DIVERGENT_BUILTINS: dict[str, str] = {
    "object.union": "regopy's object.union does not merge nested objects (OPA does)",
    "object.union_n": "regopy's object.union_n does not merge nested objects (OPA does)",
}

_REGEX_FLAGS = re.compile(r"\(\?-?[imsU]+(?:-[imsU]+)?[):]")
_SPRINTF_Q = re.compile(r"(?<!%)(?:%%)*%[-+# 0]*\d*(?:\.\d+)?q")
_SPRINTF_S = re.compile(r"(?<!%)(?:%%)*%[-+# 0]*\d*(?:\.\d+)?[sv]")


@dataclass(frozen=True)
class PolicyWarning:
    """One finding: ``file:line:col: code: message``."""

    file: str
    line: int
    col: int
    code: str  # unsupported-builtin | unknown-function | regex-flags | sprintf-verb |
    #            sprintf-string | unsafe-var | divergent-builtin | with-input |
    #            with-rule-value | sort-set | print | v0-syntax | nondeterministic |
    #            unification
    message: str
    severity: str = "warning"  # "warning" | "info"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.code}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p) if p.endswith(".") else name == p for p in patterns)


@lru_cache(maxsize=4096)
def _is_regopy_builtin(name: str) -> bool:
    return _builtin_checker().is_builtin(name)


@lru_cache(maxsize=1)
def _builtin_checker():  # type: ignore[no-untyped-def]
    from gateway.policy.runtime import new_interpreter

    return new_interpreter()


def _modules(sources: PolicySource | Mapping[str, str]) -> list[tuple[str, ModuleInfo]]:
    if isinstance(sources, PolicySource):
        return list(sources.infos())
    return [(name, scan_module(text)) for name, text in sources.items()]


def _texts(sources: PolicySource | Mapping[str, str]) -> Mapping[str, str]:
    return sources.modules if isinstance(sources, PolicySource) else sources


def nondeterministic_calls(sources: PolicySource | Mapping[str, str]) -> list[PolicyWarning]:
    """Every call to a :data:`NONDETERMINISTIC_BUILTINS` entry, with its location."""
    found: list[PolicyWarning] = []
    for name, info in _modules(sources):
        for call in info.calls:
            if _matches(call.name, NONDETERMINISTIC_BUILTINS):
                found.append(
                    PolicyWarning(
                        name,
                        call.line,
                        call.col,
                        "nondeterministic",
                        f"{call.name}() is not deterministic: decisions will not be cached",
                        "info",
                    )
                )
    return found


def policy_gaps(
    sources: PolicySource | Mapping[str, str], *, rego_version: int = 1
) -> list[PolicyWarning]:
    """Find what would behave differently under regopy than under OPA 1.x.

    ``sources`` is a PolicySource or ``{file name: Rego text}``. Sorted by file, line.
    ``rego_version=0`` (a v0 bundle) skips the v0-syntax check.
    """
    if isinstance(sources, PolicySource) and sources.manifest.get("rego_version") == 0:
        rego_version = 0
    modules = _modules(sources)
    # Rule and function names by package (a package can span several files).
    packages: dict[str, set[str]] = {}
    set_rules: dict[str, set[str]] = {}
    for _name, info in modules:
        packages.setdefault(info.package or "", set()).update(r.name for r in info.rules)
        set_rules.setdefault(info.package or "", set()).update(
            r.name for r in info.rules if r.multi_value
        )

    out: list[PolicyWarning] = []
    for name, info in modules:
        local = packages.get(info.package or "", set())
        for call in info.calls:
            cname = call.name
            head = cname.split(".", 1)[0]
            if cname == "sort" and (
                call.arg0 == "{" or call.arg0 in set_rules.get(info.package or "", set())
            ):
                out.append(
                    PolicyWarning(
                        name, call.line, call.col, "sort-set",
                        "regopy's sort() of a set returns a value that cannot be indexed "
                        "or compared with an array; sort an array: sort([x | some x in s])",
                    )
                )  # fmt: skip
            elif cname == "set" and call.arg0 == ")":
                continue  # set(): the empty-set literal, not a call
            elif cname == "print":
                out.append(
                    PolicyWarning(
                        name, call.line, call.col, "print",
                        "print() writes to the gateway's stdout under regopy; "
                        "remove it from production policies",
                    )
                )  # fmt: skip
            elif _matches(cname, OPA_ONLY_BUILTINS):
                out.append(
                    PolicyWarning(
                        name, call.line, call.col, "unsupported-builtin",
                        f"{cname}() is an OPA builtin that regopy lacks: "
                        "calling it is an evaluation error (the statement is denied)",
                    )
                )  # fmt: skip
            elif cname in DIVERGENT_BUILTINS:
                out.append(
                    PolicyWarning(
                        name, call.line, call.col, "divergent-builtin",
                        DIVERGENT_BUILTINS[cname], "info",
                    )
                )  # fmt: skip
            elif head in ("data", "input") or head in info.imports:
                continue
            elif "." not in cname and cname in local:
                continue
            elif not _is_regopy_builtin(cname):
                out.append(
                    PolicyWarning(
                        name, call.line, call.col, "unknown-function",
                        f"{cname}() is neither a regopy builtin nor a function of package "
                        f"{info.package}: evaluation will fail",
                    )
                )  # fmt: skip
        for lit in info.strings:
            m = _REGEX_FLAGS.search(lit.value)
            if m:
                out.append(
                    PolicyWarning(
                        name, lit.line, lit.col, "regex-flags",
                        f"inline regex flags {m.group(0)[:-1]}) are not supported by "
                        "regopy (the pattern fails to parse); lower() the subject instead",
                    )
                )  # fmt: skip
        for lit, has_call in info.sprintf_uses:
            if _SPRINTF_Q.search(lit.value):
                out.append(
                    PolicyWarning(
                        name, lit.line, lit.col, "sprintf-verb",
                        "sprintf %q is not supported by regopy (it is printed literally); "
                        "use concat()",
                    )
                )  # fmt: skip
            elif has_call and _SPRINTF_S.search(lit.value) and lit.value not in ("%s", "%v"):
                out.append(
                    PolicyWarning(
                        name, lit.line, lit.col, "sprintf-string",
                        "regopy's sprintf prints strings computed by builtins (concat, "
                        "upper...) with their JSON quotes, so the result is unreadable and "
                        "the statement is denied; build the string with concat()",
                    )
                )  # fmt: skip
        text = _texts(sources)[name]
        known = set(info.imports) | packages.get(info.package or "", set())
        for tok in unbound_variables(text, known):
            out.append(
                PolicyWarning(
                    name, tok.line, tok.col, "unsafe-var",
                    f"{tok.text} is never assigned: OPA rejects this (var {tok.text} is "
                    "unsafe); regopy evaluates it as undefined, which can silently drop a "
                    "rule or a mask",
                )
            )  # fmt: skip
        for tok in variable_unifications(text):
            out.append(
                PolicyWarning(
                    name, tok.line, tok.col, "unification",
                    f"`{tok.text} = ...` is a unification: when {tok.text} is already bound (a "
                    "rule or an assigned variable) regopy evaluates it as true whatever the "
                    "value, where OPA compares; use == to compare and := to assign",
                )
            )  # fmt: skip
        local_rules = packages.get(info.package or "", set())
        for clause in info.withs:
            if clause.target == "input":
                out.append(
                    PolicyWarning(
                        name, clause.line, clause.col, "with-input",
                        "`with input as ...` (the whole input) aborts regopy while "
                        "compiling; replace each field: `with input.statement as ...`",
                    )
                )  # fmt: skip
            elif clause.value is not None and clause.value in local_rules:
                out.append(
                    PolicyWarning(
                        name, clause.line, clause.col, "with-rule-value",
                        f"regopy evaluates `with {clause.target} as {clause.value}` as "
                        f"undefined when {clause.value} is a rule; bind it to a local "
                        "variable first",
                    )
                )  # fmt: skip
        if rego_version >= 1:
            for rule in info.rules:
                if rule.v0_body:
                    out.append(
                        PolicyWarning(
                            name, rule.line, rule.col, "v0-syntax",
                            f"rule {rule.ref}: a body without `if` is Rego v0; "
                            "OPA 1.x rejects it (regopy accepts it)",
                        )
                    )  # fmt: skip
    out.extend(w for w in nondeterministic_calls(sources) if not w.file.endswith("_test.rego"))
    out.sort(key=lambda w: (w.file, w.line, w.col, w.code))
    return out
