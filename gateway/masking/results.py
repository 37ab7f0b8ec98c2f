"""Applies mask plans to the upstream's answers. Sans-IO.

The relay reports every client message it forwards (`forwarded`, with the gate's plans)
and every observed backend message (`message`); this class follows which request each
answer belongs to (`ResponseTracker`) and returns the replacement for messages that carry
masked values: RowDescription (masked fields declared ``text``), DataRow, CopyData.

Plans reach results by the protocol's own names: a Query's plans are per statement; a
Parse's plan belongs to its prepared statement, a Bind hands it to its portal, and
Describe / Execute of that statement or portal use it — including Executes resumed after
PortalSuspended. SQL-level cursors and EXECUTE are statements of a Query and carry their
own plans.

While no request with a plan is outstanding, DataRow and CopyData need not be observed
at all (`needs_rows` is False): unmasked results cost no per-row work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.wire.codec import frame
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import RUN, Frame
from gateway.wire.frontend import Bind, Close, Describe, Execute, decode_frontend
from gateway.wire.pipeline import ResponseTracker

from .plan import MaskPlan
from .rows import (
    CopyOutMasker,
    FieldMasks,
    UnsupportedCopy,
    field_masks,
    rewrite_data_row,
    rewrite_data_rows,
    rewrite_row_description,
)

__all__ = ["ResultMasker"]

_Q, _P, _B, _D, _E, _C = (ord(c) for c in "QPBDEC")
_T, _DATA, _H, _COPY, _COPYDONE = (ord(c) for c in "TDHdc")
_DATA_RUN = RUN | _DATA  # consecutive DataRows as one event (BackendObserver.coalesce)

Lookup = Callable[[int, int], "tuple[str, str, str] | None"]


class ResultMasker:
    def __init__(self, lookup: Lookup,
                 on_result: Callable[[MaskPlan, dict[str, int]], None] | None = None) -> None:
        self.tracker = ResponseTracker()
        self.lookup = lookup
        self.on_result = on_result
        self._statements: dict[str, MaskPlan] = {}
        self._portals: dict[str, MaskPlan] = {}
        self._tagged = 0  # outstanding requests carrying a plan
        self._rows: FieldMasks | None = None  # masks for the DataRows of the current result
        self._rows_plan: MaskPlan | None = None
        self._copy: CopyOutMasker | None = None
        self.masked_values = 0

    @property
    def needs_rows(self) -> bool:
        """True while DataRow / CopyData must be shown to `message`."""
        return bool(self._tagged) or self._rows is not None or self._copy is not None

    # -- client side -------------------------------------------------------------------------

    def forwarded(self, frames: list[Frame], plans: Mapping[int, Any]) -> None:
        """Client messages as forwarded upstream; `plans[i]` is frame i's plan (a Query:
        a list with one plan or None per statement)."""
        registry = bool(self._statements)
        for i, (t, body) in enumerate(frames):
            tag: Any = None
            if t == _Q:
                tags = plans.get(i)
                if tags is not None and any(p is not None for p in tags):
                    tag = tags
            elif t == _P:
                plan = plans.get(i)
                name = _parse_name(body)
                if plan is not None:
                    self._statements[name] = plan
                    registry = True
                elif registry:
                    self._statements.pop(name, None)
            elif registry and t in (_B, _D, _E, _C):
                tag = self._registry(t, body)
            self._track(t, tag)

    def _registry(self, t: int, body: bytes) -> MaskPlan | None:
        msg = decode_frontend(t, body)
        if isinstance(msg, Bind):
            plan = self._statements.get(msg.statement)
            if plan is not None:
                self._portals[msg.portal] = plan
            else:
                self._portals.pop(msg.portal, None)
            return None
        if isinstance(msg, Describe):
            table = self._statements if msg.kind == "S" else self._portals
            return table.get(msg.name)
        if isinstance(msg, Execute):
            return self._portals.get(msg.portal)
        if isinstance(msg, Close):
            (self._statements if msg.kind == "S" else self._portals).pop(msg.name, None)
        return None

    def _track(self, t: int, tag: Any) -> None:
        req = self.tracker.request(t, tag)
        if req is not None and tag is not None:
            self._tagged += 1

    # -- upstream side -----------------------------------------------------------------------

    def message(self, mtype: int, body: bytes) -> bytes | None:
        """Accounts for one backend message (or a run of DataRows, raw, as type
        ``RUN | 'D'``); returns its replacement, or None to keep it.
        Raises ProtocolViolation when the stream cannot be followed (fail closed)."""
        if not self._tagged and self._rows is None and self._copy is None:
            self.tracker.response(mtype)  # nothing to mask: only keep the queue in step
            return None
        run = mtype == _DATA_RUN
        answer = self.tracker.response(_DATA if run else mtype)
        if answer is None:
            return None
        req = answer.request
        out: bytes | None = None
        if run or mtype == _DATA:
            if self._rows is None and req.type == _E and req.tag is not None:
                self._rows, self._rows_plan = self._portal_masks(req.tag), req.tag
            if self._rows:
                plan = self._rows_plan
                assert plan is not None
                if run:
                    out = rewrite_data_rows(body, self._rows, plan.counts)
                else:
                    out = rewrite_data_row(body, self._rows, plan.counts)
        elif mtype == _T:
            plan = req.current_tag
            if plan is not None:
                masks = field_masks(plan, body, self.lookup)
                plan.field_masks = masks
                if req.type == _Q:
                    self._rows, self._rows_plan = masks, plan
                out = rewrite_row_description(body, masks)
        elif mtype == _H:
            plan = req.current_tag
            if plan is not None and plan.positions:
                try:
                    self._copy = CopyOutMasker(plan.positions, plan.copy or {},
                                               binary=body[:1] == b"\x01", counts=plan.counts)
                except UnsupportedCopy as e:
                    raise ProtocolViolation(f"cannot mask this COPY: {e}") from None
                self._rows_plan = plan
        elif mtype == _COPY and self._copy is not None:
            try:
                payload = self._copy.feed(body)
            except UnsupportedCopy as e:
                raise ProtocolViolation(f"cannot mask this COPY: {e}") from None
            out = frame(b"d", payload) if payload else b""
        elif mtype == _COPYDONE and self._copy is not None and self._copy.pending():
            raise ProtocolViolation("COPY ended inside a row")
        if answer.ends_result:
            self._end_result()
        if answer.done and req.tag is not None:
            self._tagged -= 1
        return out

    @staticmethod
    def _portal_masks(plan: MaskPlan) -> FieldMasks:
        # An Execute's rows follow a Describe of the statement or portal (cross-checked
        # masks) or none at all (the analysis's positions).
        return plan.field_masks if plan.field_masks is not None else dict(plan.positions)

    def _end_result(self) -> None:
        plan = self._rows_plan
        self._rows = None
        self._rows_plan = None
        self._copy = None
        if plan is not None:
            counts, plan.counts = plan.counts, {}
            self.masked_values += sum(counts.values())
            if self.on_result is not None:
                self.on_result(plan, counts)


def _parse_name(body: bytes) -> str:
    end = body.find(b"\0")
    return body[:end].decode("utf-8", "replace")
