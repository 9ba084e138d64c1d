"""A client generated from keygate's /openapi.json by openapi-python-client drives a real `keygate serve`:
create, show, list, rotate, verify, reveal, revoke and the audit log, each with an error case that the
generated types must model. The client raises on any status the document does not list, so an
undocumented answer fails the test, and each error must parse as the document's ErrorBody.

Run by scripts/api-contract.sh, which starts the server and generates the client:
KEYGATE_BASE_URL, KEYGATE_ADMIN_KEY, and the generated package on PYTHONPATH.
"""

import os

from keygate_client import AuthenticatedClient, Client
from keygate_client.api.audit import audit_log
from keygate_client.api.keys import create_key, list_keys, reveal_key, revoke_key, rotate_key, show_key
from keygate_client.api.verify import verify
from keygate_client.models import (
    AuditPage,
    CreatedResponse,
    CreateKeyRequest,
    ErrorBody,
    KeyDetail,
    KeyPage,
    KeyResponse,
    RevealedResponse,
    RevokeRequest,
    RotatedResponse,
    RotateRequest,
    VerifyRequest,
    VerifyResponse,
)

BASE = os.environ["KEYGATE_BASE_URL"]
ADMIN = AuthenticatedClient(base_url=BASE, token=os.environ["KEYGATE_ADMIN_KEY"], raise_on_unexpected_status=True)
ANONYMOUS = Client(base_url=BASE, raise_on_unexpected_status=True)
UNKNOWN_ID = "0358bDY0PCucfD3l6UaKT2"


def error_code(response, status):
    """The answer is `status` and the generated ErrorBody type, whose code is returned."""
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, ErrorBody), type(response.parsed)
    return response.parsed.error.code


def test_a_key_through_its_whole_life():
    created = create_key.sync_detailed(
        client=ADMIN, body=CreateKeyRequest(name="generated client", permissions=["query:read"], tier="default")
    )
    assert created.status_code == 201 and isinstance(created.parsed, CreatedResponse)
    key_id, first_key = created.parsed.api_key_id, created.parsed.api_key
    assert error_code(create_key.sync_detailed(client=ADMIN, body=CreateKeyRequest(name=" ", permissions=[])), 422) == "invalid_name"
    assert error_code(create_key.sync_detailed(client=ANONYMOUS, body=CreateKeyRequest(name="x", permissions=[])), 401) == "unauthorized"

    shown = show_key.sync_detailed(key_id, client=ADMIN)
    assert isinstance(shown.parsed, KeyDetail) and shown.parsed.api_key_id == key_id and len(shown.parsed.generations) == 1
    assert error_code(show_key.sync_detailed(UNKNOWN_ID, client=ADMIN), 404) == "key_not_found"

    page = list_keys.sync_detailed(client=ADMIN, limit=1000)
    assert isinstance(page.parsed, KeyPage) and key_id in [k.api_key_id for k in page.parsed.items]
    assert error_code(list_keys.sync_detailed(client=ADMIN, limit=0), 422) == "invalid_query"

    rotated = rotate_key.sync_detailed(key_id, client=ADMIN, body=RotateRequest(grace_period_secs=60))
    assert isinstance(rotated.parsed, RotatedResponse) and rotated.parsed.generation == 2
    assert error_code(rotate_key.sync_detailed(key_id, client=ADMIN, body=RotateRequest(grace_period_secs=-1)), 422) == "invalid_grace_period"

    for presented in (first_key, rotated.parsed.api_key):
        verdict = verify.sync_detailed(client=ANONYMOUS, body=VerifyRequest(api_key=presented))
        assert isinstance(verdict.parsed, VerifyResponse) and verdict.parsed.valid, presented[:12]
    refused = verify.sync_detailed(client=ANONYMOUS, body=VerifyRequest(api_key="not a key"))
    assert isinstance(refused.parsed, VerifyResponse) and not refused.parsed.valid

    revealed = reveal_key.sync_detailed(key_id, client=ADMIN)
    assert isinstance(revealed.parsed, RevealedResponse) and revealed.parsed.api_key == rotated.parsed.api_key
    assert error_code(reveal_key.sync_detailed(UNKNOWN_ID, client=ADMIN), 404) == "key_not_found"

    revoked = revoke_key.sync_detailed(key_id, client=ADMIN, body=RevokeRequest(reason="generated client test"))
    assert isinstance(revoked.parsed, KeyResponse) and revoked.parsed.status == "revoked"
    assert error_code(revoke_key.sync_detailed(key_id, client=ADMIN, body=RevokeRequest(reason="x" * 501)), 422) == "invalid_reason"
    assert error_code(rotate_key.sync_detailed(key_id, client=ADMIN, body=RotateRequest()), 409) == "key_revoked"

    audit = audit_log.sync_detailed(client=ADMIN, key_id=key_id)
    assert isinstance(audit.parsed, AuditPage)
    actions = [entry.action for entry in audit.parsed.entries]
    for action in ("key.create", "key.rotate", "key.reveal", "key.revoke"):
        assert action in actions, actions
    assert error_code(audit_log.sync_detailed(client=ADMIN, limit=1001), 422) == "invalid_query"
    assert error_code(audit_log.sync_detailed(client=ANONYMOUS), 401) == "unauthorized"
