"""The broker's tables. Schema changes go through Alembic (``broker/store/migrations``).

One module per area; every table is importable from here."""

from broker.store.models.access import (
    AccessRequest,
    Approval,
    Approver,
    ApproverGroup,
    Device,
    DeviceCredential,
    FirmwareReading,
    Grant,
    Invitation,
    SamePerson,
    Session,
    Technician,
    TechnicianKey,
    Vendor,
    VendorLogin,
)
from broker.store.models.records import (
    AuditCheckpoint,
    AuditEvent,
    IssuedCertificate,
    Notification,
    NotificationCursor,
    SiemCursor,
    UsedApprovalToken,
)
from broker.store.models.staff import (
    ApiToken,
    OIDCLogin,
    StaffSession,
    StaffUser,
)
from broker.store.models.web import (
    DeviceWeb,
    WebSession,
    WebSignin,
)

__all__ = [
    "AccessRequest",
    "ApiToken",
    "Approval",
    "Approver",
    "ApproverGroup",
    "AuditCheckpoint",
    "AuditEvent",
    "Device",
    "DeviceCredential",
    "DeviceWeb",
    "FirmwareReading",
    "Grant",
    "Invitation",
    "IssuedCertificate",
    "Notification",
    "NotificationCursor",
    "OIDCLogin",
    "SamePerson",
    "Session",
    "SiemCursor",
    "StaffSession",
    "StaffUser",
    "Technician",
    "TechnicianKey",
    "UsedApprovalToken",
    "Vendor",
    "VendorLogin",
    "WebSession",
    "WebSignin",
]
