"""Policy: Rego sources, the regopy engine, decisions, tests (DESIGN §4).

Public API::

    PolicySource.load(path)                  # directory / .rego / .tar.gz -> modules+data,
                                             # .hash (content sha256), .revision
    PolicyEngine(source, entrypoint=None)    # compiled once; .decide(input, cache_key=None)
    Decision                                 # validated; .outcome, .to_json()
    policy_gaps(source)                      # OPA-vs-regopy differences, file:line
    run_tests(paths, run) / format_results(results, fmt)
    cmd_policy_test(paths, fmt, run) / cmd_policy_eval(bundle, input, entrypoint)

``gateway.policy.commands`` and ``gateway.policy.testing`` are not imported here (the
CLI imports them when needed). Importing this package loads regopy's shared library.
Known regopy 1.5.2 limitations and how this package copes: see ``runtime`` and ``gaps``.
"""

from gateway.policy.decision import MASK_METHODS, UNDEFINED, Decision, validate_decision
from gateway.policy.engine import (
    VOLATILE_FIELDS,
    CacheInfo,
    DecisionCache,
    PolicyEngine,
    input_digest,
)
from gateway.policy.errors import PolicyCompileError, PolicyError, PolicyLoadError
from gateway.policy.gaps import (
    NONDETERMINISTIC_BUILTINS,
    OPA_ONLY_BUILTINS,
    PolicyWarning,
    policy_gaps,
)
from gateway.policy.runtime import EvalError
from gateway.policy.source import PolicySource

__all__ = [
    "MASK_METHODS",
    "NONDETERMINISTIC_BUILTINS",
    "OPA_ONLY_BUILTINS",
    "UNDEFINED",
    "VOLATILE_FIELDS",
    "CacheInfo",
    "Decision",
    "DecisionCache",
    "EvalError",
    "PolicyCompileError",
    "PolicyEngine",
    "PolicyError",
    "PolicyLoadError",
    "PolicySource",
    "PolicyWarning",
    "input_digest",
    "policy_gaps",
    "validate_decision",
]
