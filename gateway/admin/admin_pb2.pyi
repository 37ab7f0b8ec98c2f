# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Vote(_message.Message):
    __slots__ = ("subject", "issuer", "decision", "reason", "at")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    issuer: str
    decision: str
    reason: str
    at: str
    def __init__(self, subject: _Optional[str] = ..., issuer: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "status", "subject", "issuer", "groups", "connection", "session_id", "sql", "fingerprint", "approvers", "min_approvals", "approvals", "grant_ttl", "requested_at", "expires_at", "resolved_at", "resolved_by", "reason", "votes", "grant_id", "holder")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    MIN_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    GRANT_TTL_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    subject: str
    issuer: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    connection: str
    session_id: str
    sql: str
    fingerprint: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    min_approvals: int
    approvals: int
    grant_ttl: float
    requested_at: str
    expires_at: str
    resolved_at: str
    resolved_by: str
    reason: str
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    grant_id: str
    holder: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., connection: _Optional[str] = ..., session_id: _Optional[str] = ..., sql: _Optional[str] = ..., fingerprint: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., min_approvals: _Optional[int] = ..., approvals: _Optional[int] = ..., grant_ttl: _Optional[float] = ..., requested_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., resolved_at: _Optional[str] = ..., resolved_by: _Optional[str] = ..., reason: _Optional[str] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., grant_id: _Optional[str] = ..., holder: _Optional[str] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("id", "request_id", "subject", "issuer", "connection", "fingerprint", "approvers", "granted_by", "created_at", "expires_at", "revoked_at", "revoked_by", "revoke_reason", "uses")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKE_REASON_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    subject: str
    issuer: str
    connection: str
    fingerprint: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    granted_by: _containers.RepeatedScalarFieldContainer[str]
    created_at: str
    expires_at: str
    revoked_at: str
    revoked_by: str
    revoke_reason: str
    uses: int
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., connection: _Optional[str] = ..., fingerprint: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., granted_by: _Optional[_Iterable[str]] = ..., created_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., revoked_at: _Optional[str] = ..., revoked_by: _Optional[str] = ..., revoke_reason: _Optional[str] = ..., uses: _Optional[int] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class WatchApprovalsRequest(_message.Message):
    __slots__ = ("include_existing",)
    INCLUDE_EXISTING_FIELD_NUMBER: _ClassVar[int]
    include_existing: bool
    def __init__(self, include_existing: _Optional[bool] = ...) -> None: ...

class ApprovalEvent(_message.Message):
    __slots__ = ("kind", "approval")
    KIND_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    approval: Approval
    def __init__(self, kind: _Optional[str] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("approval", "resolved", "grant")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    resolved: bool
    grant: Grant
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., resolved: _Optional[bool] = ..., grant: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "subject", "issuer", "connection", "client_addr", "application_name", "started_at", "statements", "state", "worker")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    id: str
    subject: str
    issuer: str
    connection: str
    client_addr: str
    application_name: str
    started_at: str
    statements: int
    state: str
    worker: int
    def __init__(self, id: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., connection: _Optional[str] = ..., client_addr: _Optional[str] = ..., application_name: _Optional[str] = ..., started_at: _Optional[str] = ..., statements: _Optional[int] = ..., state: _Optional[str] = ..., worker: _Optional[int] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class TerminateSessionRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TerminateSessionResponse(_message.Message):
    __slots__ = ("terminated",)
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    terminated: bool
    def __init__(self, terminated: _Optional[bool] = ...) -> None: ...

class BundleStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleStatusResponse(_message.Message):
    __slots__ = ("location", "revision", "sha256", "activated_at", "activations", "rejections", "not_modified", "failures")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    location: str
    revision: str
    sha256: str
    activated_at: str
    activations: int
    rejections: int
    not_modified: int
    failures: int
    def __init__(self, location: _Optional[str] = ..., revision: _Optional[str] = ..., sha256: _Optional[str] = ..., activated_at: _Optional[str] = ..., activations: _Optional[int] = ..., rejections: _Optional[int] = ..., not_modified: _Optional[int] = ..., failures: _Optional[int] = ...) -> None: ...

class ReloadBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadBundleResponse(_message.Message):
    __slots__ = ("status", "trigger", "revision", "sha256", "reason", "file")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    status: str
    trigger: str
    revision: str
    sha256: str
    reason: str
    file: str
    def __init__(self, status: _Optional[str] = ..., trigger: _Optional[str] = ..., revision: _Optional[str] = ..., sha256: _Optional[str] = ..., reason: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...
