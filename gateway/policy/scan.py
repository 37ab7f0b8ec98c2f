"""A small Rego lexer and top-level scanner.

regopy (rego-cpp) compiles modules but exposes no AST for them, and it is more lenient
than OPA (unsafe variables, unknown functions and several v0 forms compile). pgwarden
needs a little structure of its own: the package of every module, its rule heads (test
discovery, entrypoint checks), every dotted call (builtin gaps, non-determinism) and the
string literals (regex flags, sprintf verbs). This scanner gets those with line/column
positions. It is deliberately not a parser: it tracks bracket depth and logical lines,
which is enough for Rego's top-level grammar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = [
    "Call",
    "ModuleInfo",
    "RuleHead",
    "StringLit",
    "Token",
    "WithClause",
    "scan_module",
    "tokenize",
    "unbound_variables",
    "variable_unifications",
]

# Words that can start a top-level line or appear in a head but never name a rule.
KEYWORDS = frozenset(
    {
        "package", "import", "default", "else", "if", "contains", "in", "some", "every",
        "not", "with", "as", "true", "false", "null",
    }
)  # fmt: skip

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}
_TWO_CHAR_OPS = {":=", "==", "!=", "<=", ">="}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident" | "string" | "number" | "op" | "newline"
    text: str  # identifiers/ops: as written; strings: the decoded value
    line: int  # 1-based
    col: int  # 1-based
    raw: bool = False  # a `raw string`


@dataclass(frozen=True, slots=True)
class RuleHead:
    name: str  # first segment of the head reference (`deny` for `deny contains msg`)
    ref: str  # the whole dotted head reference (`a.b` for `a.b := 1`)
    line: int
    col: int
    is_function: bool
    is_default: bool
    has_if: bool
    v0_body: bool  # a body `{` with no `if` in the head: OPA 1.x rejects it
    multi_value: bool = False  # `name contains x`: a partial set


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # dotted, e.g. "net.cidr_contains"
    line: int
    col: int
    arg0: str = ""  # the first token of the first argument ("{", "[", a name...)


@dataclass(frozen=True, slots=True)
class StringLit:
    value: str
    line: int
    col: int
    raw: bool


@dataclass(frozen=True, slots=True)
class WithClause:
    target: str  # "input", "input.statement", "data.x"...
    value: str | None  # the `as` operand when it is a bare name, else None
    line: int
    col: int


@dataclass
class ModuleInfo:
    package: str | None = None
    package_line: int = 0
    imports: dict[str, str] = field(default_factory=dict)  # alias -> imported path
    rules: list[RuleHead] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    strings: list[StringLit] = field(default_factory=list)
    # Every name that follows a `.` plus every string literal: what the module can read
    # out of a document by name (used to decide which input fields a policy depends on).
    field_names: set[str] = field(default_factory=set)
    # sprintf("<format>", [args]): the format, and whether an argument is a call.
    sprintf_uses: list[tuple[StringLit, bool]] = field(default_factory=list)
    withs: list[WithClause] = field(default_factory=list)

    @property
    def rule_names(self) -> set[str]:
        return {r.name for r in self.rules}


def tokenize(text: str) -> list[Token]:
    """Split Rego source into tokens; comments are dropped, newlines kept."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    line, line_start = 1, 0
    append = tokens.append
    while i < n:
        ch = text[i]
        col = i - line_start + 1
        if ch == "\n":
            append(Token("newline", "\n", line, col))
            i += 1
            line += 1
            line_start = i
        elif ch in " \t\r\f\v":
            i += 1
        elif ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"' and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            literal = text[i : min(j + 1, n)]
            try:
                value = json.loads(literal)
            except ValueError:
                value = literal[1:-1] if literal.endswith('"') else literal[1:]
            append(Token("string", value, line, col))
            i = j + 1
        elif ch == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            value = text[i + 1 : j]
            append(Token("string", value, line, col, raw=True))
            newlines = value.count("\n")
            if newlines:
                line += newlines
                line_start = i + 1 + value.rfind("\n") + 1
            i = j + 1
        elif ch.isdigit():
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "._"):
                j += 1
            append(Token("number", text[i:j], line, col))
            i = j
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            append(Token("ident", text[i:j], line, col))
            i = j
        else:
            two = text[i : i + 2]
            if two in _TWO_CHAR_OPS:
                append(Token("op", two, line, col))
                i += 2
            else:
                append(Token("op", ch, line, col))
                i += 1
    return tokens


def _dotted(tokens: list[Token], k: int) -> tuple[str, int]:
    """Read `ident(.ident)*` starting at index k; return the name and the next index."""
    parts = [tokens[k].text]
    k += 1
    while (
        k + 1 < len(tokens)
        and tokens[k].kind == "op"
        and tokens[k].text == "."
        and tokens[k + 1].kind == "ident"
    ):
        parts.append(tokens[k + 1].text)
        k += 2
    return ".".join(parts), k


def _args_have_call(tokens: list[Token], k: int) -> bool:
    """From just after a sprintf format literal to the call's closing ``)``: any call?"""
    depth = 0
    while k < len(tokens):
        tok = tokens[k]
        if tok.kind == "op":
            if tok.text in _OPENERS:
                depth += 1
            elif tok.text in _CLOSERS:
                if depth == 0:
                    return False
                depth -= 1
        elif (
            tok.kind == "ident"
            and k + 1 < len(tokens)
            and tokens[k + 1].kind == "op"
            and tokens[k + 1].text == "("
        ):
            return True
        k += 1
    return False


def _valueish(tok: Token | None) -> bool:
    """Whether a `{` after this token starts a rule body rather than an object/set value."""
    if tok is None:
        return False
    if tok.kind in ("string", "number"):
        return True
    if tok.kind == "ident":
        return tok.text not in KEYWORDS or tok.text in ("true", "false", "null")
    return tok.kind == "op" and tok.text in (")", "]", "}")


def scan_module(text: str) -> ModuleInfo:
    """Scan one module: package, imports, rule heads, calls, strings."""
    info = ModuleInfo()
    tokens = tokenize(text)
    depth = 0
    at_line_start = True
    head: dict | None = None  # the rule head being read at depth 0
    prev: Token | None = None
    k = 0
    ntok = len(tokens)

    def finish_head() -> None:
        nonlocal head
        if head is not None:
            head.pop("_open", None)
            info.rules.append(RuleHead(**head))
            head = None

    while k < ntok:
        tok = tokens[k]
        if tok.kind == "newline":
            if depth == 0:
                at_line_start = True
                if head is not None:
                    head["_open"] = False
            k += 1
            continue

        if tok.kind == "string":
            lit = StringLit(tok.text, tok.line, tok.col, tok.raw)
            info.strings.append(lit)
            info.field_names.add(tok.text)
            # sprintf("<format>", ...): remember the format literal.
            if (
                k >= 2
                and tokens[k - 1].kind == "op"
                and tokens[k - 1].text == "("
                and tokens[k - 2].kind == "ident"
                and tokens[k - 2].text == "sprintf"
            ):
                info.sprintf_uses.append((lit, _args_have_call(tokens, k + 1)))

        if depth == 0 and at_line_start and tok.kind == "ident":
            at_line_start = False
            word = tok.text
            if word == "package":
                finish_head()
                if k + 1 < ntok and tokens[k + 1].kind == "ident":
                    name, k2 = _dotted(tokens, k + 1)
                    info.package = name
                    info.package_line = tok.line
                    prev = tokens[k2 - 1]
                    k = k2
                    continue
            elif word == "import":
                finish_head()
                if k + 1 < ntok and tokens[k + 1].kind == "ident":
                    path, k2 = _dotted(tokens, k + 1)
                    alias = path.rsplit(".", 1)[-1]
                    if (
                        k2 + 1 < ntok
                        and tokens[k2].kind == "ident"
                        and tokens[k2].text == "as"
                        and tokens[k2 + 1].kind == "ident"
                    ):
                        alias = tokens[k2 + 1].text
                        k2 += 2
                    if path.split(".", 1)[0] in ("data", "input"):
                        info.imports[alias] = path
                    prev = tokens[k2 - 1]
                    k = k2
                    continue
            elif word == "else":
                pass  # handled below, like an `else` after `}` on the same line
            else:
                finish_head()
                is_default = word == "default"
                start = k + 1 if is_default else k
                if start < ntok and tokens[start].kind == "ident":
                    ref, k2 = _dotted(tokens, start)
                    is_function = k2 < ntok and tokens[k2].kind == "op" and tokens[k2].text == "("
                    head = {
                        "name": ref.split(".", 1)[0],
                        "ref": ref,
                        "line": tokens[start].line,
                        "col": tokens[start].col,
                        "is_function": is_function,
                        "is_default": is_default,
                        "has_if": False,
                        "v0_body": False,
                        "multi_value": False,
                        "_open": True,
                    }
                    for part in ref.split(".")[1:]:
                        info.field_names.add(part)
                    prev = tokens[k2 - 1]
                    k = k2
                    continue
        elif depth == 0 and at_line_start:
            at_line_start = False

        if tok.kind == "ident" and tok.text == "else" and depth == 0 and head is not None:
            head["has_if"] = False
            head["_open"] = True
            prev = tok
            k += 1
            continue

        if tok.kind == "ident":
            # A reference: collect calls and field names.
            name, k2 = _dotted(tokens, k)
            is_call = k2 < ntok and tokens[k2].kind == "op" and tokens[k2].text == "("
            preceded_by_dot = prev is not None and prev.kind == "op" and prev.text == "."
            if is_call and not preceded_by_dot:
                arg0 = tokens[k2 + 1].text if k2 + 1 < ntok else ""
                info.calls.append(Call(name, tok.line, tok.col, arg0))
            for part in name.split(".")[1:]:
                info.field_names.add(part)
            if preceded_by_dot:
                info.field_names.add(tok.text)
            if head is not None and head["_open"] and depth == 0:
                for t in tokens[k:k2]:
                    if t.kind == "ident" and t.text == "if":
                        head["has_if"] = True
                    elif t.kind == "ident" and t.text == "contains":
                        head["multi_value"] = True
            prev = tokens[k2 - 1]
            k = k2
            continue

        if tok.kind == "op":
            if tok.text in _OPENERS:
                if tok.text == "{" and depth == 0 and head is not None and head["_open"]:
                    if _valueish(prev):
                        if not head["has_if"] and not head["is_default"]:
                            head["v0_body"] = True
                        head["_open"] = False
                depth += 1
            elif tok.text in _CLOSERS:
                depth = max(0, depth - 1)
        prev = tok
        k += 1

    finish_head()
    info.withs = _with_clauses(tokens)
    return info


def _with_clauses(tokens: list[Token]) -> list[WithClause]:
    out: list[WithClause] = []
    n = len(tokens)
    for k, tok in enumerate(tokens):
        if tok.kind != "ident" or tok.text != "with" or k + 1 >= n:
            continue
        if tokens[k + 1].kind != "ident":
            continue
        target, j = _dotted(tokens, k + 1)
        if j < n and tokens[j].kind == "ident" and tokens[j].text == "as" and j + 1 < n:
            value_tok = tokens[j + 1]
            value: str | None = None
            if value_tok.kind == "ident" and value_tok.text not in KEYWORDS:
                after = tokens[j + 2] if j + 2 < n else None
                if after is None or after.kind == "newline" or after.text not in (".", "[", "("):
                    value = value_tok.text
            out.append(WithClause(target, value, tok.line, tok.col))
    return out


def unbound_variables(text: str, known: set[str]) -> list[Token]:
    """Variables used but never bound anywhere in the module (OPA: "var x is unsafe").

    rego-cpp accepts such modules and evaluates the expression as undefined, which can
    silently drop a deny rule or a mask. This is a module-wide approximation, not OPA's
    per-rule safety check: a name counts as bound if it is assigned (``x :=``, ``x =``),
    declared (``some``/``every``), a function parameter, a reference index
    (``arr[i]``), or inside a destructuring pattern anywhere in the module. ``known``
    holds rule names of the package and import aliases. Returns the first use of each
    unbound name.
    """
    toks = tokenize(text)
    n = len(toks)
    bound: set[str] = set()
    uses: list[Token] = []

    def sig(k: int, step: int) -> Token | None:
        k += step
        while 0 <= k < n:
            if toks[k].kind != "newline":
                return toks[k]
            k += step
        return None

    # group stack: [kind, idents inside, opener index]
    groups: list[list] = []
    in_some = False
    line_start = True
    depth0_head_call = False
    skip_line = False
    k = 0
    while k < n:
        tok = toks[k]
        if tok.kind == "newline":
            in_some = False
            if not groups:
                line_start = True
                skip_line = False
            k += 1
            continue
        if line_start and not groups:
            line_start = False
            if tok.kind == "ident" and tok.text in ("package", "import"):
                skip_line = True
            depth0_head_call = False
            if tok.kind == "ident" and tok.text not in KEYWORDS:
                nxt = sig(k, 1)
                depth0_head_call = nxt is not None and nxt.text == "("
        if skip_line:
            k += 1
            continue
        if tok.kind == "op":
            if tok.text in _OPENERS:
                prev = sig(k, -1)
                if (
                    tok.text == "["
                    and prev is not None
                    and (
                        (prev.kind == "ident" and prev.text not in KEYWORDS)
                        or prev.text in ("]", ")")
                        or prev.kind == "string"
                    )
                ):
                    kind = "index"
                elif tok.text == "(" and depth0_head_call and not groups:
                    kind = "params"
                    depth0_head_call = False
                else:
                    kind = "group"
                groups.append([kind, [], k])
            elif tok.text in _CLOSERS and groups:
                kind, idents, _start = groups.pop()
                nxt = sig(k, 1)
                if kind in ("index", "params") or (
                    nxt is not None and nxt.kind == "op" and nxt.text in (":=", "=")
                ):
                    bound.update(t.text for t in idents)
                if groups:
                    groups[-1][1].extend(idents)
            elif tok.text in (";", "|"):
                in_some = False
            k += 1
            continue
        if tok.kind != "ident":
            k += 1
            continue
        word = tok.text
        if word in ("some", "every"):
            in_some = True
            k += 1
            continue
        if word == "in":
            in_some = False
            k += 1
            continue
        if word in KEYWORDS:
            k += 1
            continue
        prev = sig(k, -1)
        if prev is not None and prev.kind == "op" and prev.text == ".":
            k += 1
            continue
        # A dotted chain followed by "(" is a call: skip it whole.
        j = k + 1
        while j + 1 < n and toks[j].text == "." and toks[j + 1].kind == "ident":
            j += 2
        if j < n and toks[j].kind == "op" and toks[j].text == "(":
            k = j
            continue
        nxt = sig(k, 1)
        if in_some or (nxt is not None and nxt.kind == "op" and nxt.text in (":=", "=")):
            bound.add(word)
        else:
            uses.append(tok)
        if groups:
            groups[-1][1].append(tok)
        k += 1

    known_all = known | bound | {"input", "data", "_"}
    seen: set[str] = set()
    out: list[Token] = []
    for tok in uses:
        if tok.text in known_all or tok.text in seen:
            continue
        seen.add(tok.text)
        out.append(tok)
    return out


def variable_unifications(text: str) -> list[Token]:
    """Each bare name on either side of a unification ``=`` inside a rule body.

    regopy (rego-cpp 1.5.2) evaluates ``x = "read"`` as true whenever ``x`` is already
    bound -- a rule, or a variable assigned before -- whatever its value, where OPA
    compares: a deny rule written that way never fires, an allow rule always does.
    References (``input.k = "read"``) and heads (``x = 1 if ...``) are not affected.
    """
    tokens = [t for t in tokenize(text) if t.kind != "newline"]
    found: list[Token] = []
    depth = 0
    n = len(tokens)
    for k, tok in enumerate(tokens):
        if tok.kind == "op":
            if tok.text in _OPENERS:
                depth += 1
            elif tok.text in _CLOSERS:
                depth = max(0, depth - 1)
            elif tok.text == "=" and depth > 0:
                left = tokens[k - 1] if k else None
                right = tokens[k + 1] if k + 1 < n else None
                if left is not None and left.kind == "ident" and not (
                        k >= 2 and tokens[k - 2].kind == "op" and tokens[k - 2].text == "."):
                    found.append(left)
                elif right is not None and right.kind == "ident" and not (
                        k + 2 < n and tokens[k + 2].kind == "op"
                        and tokens[k + 2].text in (".", "[", "(")):
                    found.append(right)
    return found
