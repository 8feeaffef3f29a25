"""The API's operations: one table that both the router and the OpenAPI document read."""

from __future__ import annotations

from broker.http.api import access, evidence, inventory, vendors
from broker.http.api import schemas as s
from broker.http.api.framework import Operation
from broker.services.api_tokens import Role

ANYONE = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
APPROVER = frozenset({Role.APPROVER})
READERS = frozenset({Role.ADMIN, Role.AUDITOR})

OPERATIONS: tuple[Operation, ...] = (
    # -- requests and decisions
    Operation("GET", "/requests", "listRequests", "List access requests, oldest first",
              "requests", ANYONE, access.list_requests, s.RequestList, query=s.RequestQuery),
    Operation("POST", "/requests", "createRequest", "File an access request for a technician",
              "requests", ADMIN, access.create_request, s.RequestOut, status=201,
              body=s.RequestCreate, body_required=True),
    Operation("GET", "/requests/{id}", "getRequest", "One request and its decisions",
              "requests", ANYONE, access.show_request, s.RequestOut, path_params=s.IdPath,
              errors=(404,)),
    Operation("POST", "/requests/{id}/approve", "approveRequest",
              "Approve, as the approver the token is bound to", "requests", APPROVER,
              access.approve_request, s.DecisionOut, path_params=s.IdPath, body=s.DecisionIn,
              errors=(404, 409)),
    Operation("POST", "/requests/{id}/deny", "denyRequest",
              "Deny, as the approver the token is bound to", "requests", APPROVER,
              access.deny_request, s.DecisionOut, path_params=s.IdPath, body=s.DecisionIn,
              errors=(404, 409)),
    Operation("POST", "/requests/{id}/cancel", "cancelRequest", "Cancel a pending request",
              "requests", ADMIN, access.cancel_request, s.RequestOut, path_params=s.IdPath,
              errors=(404, 409)),
    # -- grants
    Operation("GET", "/grants", "listGrants", "List grants", "grants", ANYONE,
              access.list_grants, s.GrantList, query=s.GrantQuery),
    Operation("GET", "/grants/{id}", "getGrant", "One grant", "grants", ANYONE,
              access.show_grant, s.GrantOut, path_params=s.IdPath, errors=(404,)),
    Operation("POST", "/grants/{id}/revoke", "revokeGrant",
              "Revoke a grant now: its live sessions are cut", "grants", ADMIN,
              access.revoke_grant, s.GrantOut, path_params=s.IdPath, body=s.RevokeIn,
              errors=(404, 409)),
    # -- devices
    Operation("GET", "/devices", "listDevices", "List devices by name", "devices", ANYONE,
              inventory.list_devices, s.DeviceList, query=s.NamePage),
    Operation("GET", "/devices/{name}", "getDevice", "A device's trust record", "devices",
              ANYONE, inventory.show_device, s.DeviceOut, path_params=s.NamePath,
              errors=(404,)),
    # -- live sessions
    Operation("GET", "/sessions", "listSessions", "Live sessions on every node, newest first",
              "sessions", READERS, inventory.list_sessions, s.SessionList, query=s.SessionPage),
    Operation("POST", "/sessions/{id}/kill", "killSession",
              "Cut a live session, on whichever node holds it", "sessions", ADMIN,
              inventory.kill, s.SessionOut, path_params=s.SessionPath, body=s.KillIn,
              errors=(404, 409)),
    # -- recordings
    Operation("GET", "/recordings", "listRecordings", "Recorded sessions, oldest first",
              "recordings", READERS, evidence.list_recordings, s.RecordingList,
              query=s.RecordingQuery, errors=(409,)),
    Operation("GET", "/recordings/{id}", "getRecording",
              "A recorded session with its verification and request", "recordings", READERS,
              evidence.show_recording, s.RecordingDetail, path_params=s.SessionPath,
              errors=(404, 409)),
    Operation("GET", "/recordings/{id}/verify", "verifyRecording",
              "Check a session's signed manifest (ok, or exactly what was altered)",
              "recordings", READERS, evidence.verify_recording, s.RecordingVerify,
              path_params=s.SessionPath, errors=(404, 409)),
    # -- vendors and technicians' self-service onboarding
    Operation("GET", "/vendors", "listVendors",
              "Vendors with contract state, technicians and those waiting for approval",
              "vendors", READERS, vendors.list_vendors, s.VendorList),
    Operation("GET", "/vendors/{name}", "getVendor", "One vendor", "vendors", READERS,
              vendors.show_vendor, s.VendorOut, path_params=s.VendorPath, errors=(404,)),
    Operation("POST", "/vendors/{name}/invitations", "createInvitation",
              "E-mail a technician a single-use onboarding link (the link is never returned)",
              "vendors", ADMIN, vendors.create_invitation, s.InvitationOut, status=201,
              path_params=s.VendorPath, body=s.InvitationCreate, body_required=True,
              errors=(404, 409)),
    Operation("GET", "/invitations", "listInvitations", "Invitations, oldest first", "vendors",
              READERS, vendors.list_invitations, s.InvitationList, query=s.InvitationQuery,
              errors=(404,)),
    Operation("POST", "/invitations/{id}/withdraw", "withdrawInvitation",
              "Take back an invitation whose link was not used yet (the link stops working)",
              "vendors", ADMIN, vendors.withdraw_invitation, s.InvitationOut,
              path_params=s.InvitationPath, errors=(404, 409)),
    Operation("POST", "/technicians/{name}/approve", "approveTechnician",
              "Approve a technician who enrolled by invitation (enables it)", "vendors",
              ADMIN, vendors.approve_technician, s.InvitationOut, path_params=s.NamePath,
              errors=(404, 409)),
    Operation("POST", "/technicians/{name}/reject", "rejectTechnician",
              "Reject a technician who enrolled by invitation (it stays disabled)", "vendors",
              ADMIN, vendors.reject_technician, s.InvitationOut, path_params=s.NamePath,
              errors=(404, 409)),
    # -- audit
    Operation("GET", "/audit", "listAudit", "Audit events in chain order", "audit", READERS,
              evidence.list_audit, s.AuditList, query=s.AuditQuery),
    Operation("GET", "/audit/verify", "verifyAudit", "Check every link of the audit chain",
              "audit", READERS, evidence.verify_audit, s.AuditVerify),
)
