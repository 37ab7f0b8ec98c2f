"""The identity/connection/session parts of the policy input (DESIGN §4)."""

from __future__ import annotations

import ipaddress

from gateway.enforce.input_doc import SessionFacts, networks_for
from gateway.identity.model import Identity

NETWORKS = {
    "ci-runners": (ipaddress.ip_network("10.20.0.0/16"),),
    "loopback": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
    "office-v6": (ipaddress.ip_network("2001:db8::/32"),),
}


def test_networks_for_names_every_matching_set() -> None:
    assert networks_for("10.20.3.4", NETWORKS) == ["ci-runners"]
    assert networks_for("127.0.0.1", NETWORKS) == ["loopback"]
    assert networks_for("::1", NETWORKS) == ["loopback"]
    assert networks_for("2001:db8::7", NETWORKS) == ["office-v6"]
    assert networks_for("::ffff:10.20.0.9", NETWORKS) == ["ci-runners"]  # v4-mapped
    assert networks_for("192.0.2.1", NETWORKS) == []
    assert networks_for("local", NETWORKS) == []  # unix socket peers have no address


def test_input_document_shape() -> None:
    ident = Identity("ci-bot", "https://issuer", ("ci",), {"repo": "payments"}, "jwt", None)
    facts = SessionFacts.build(
        ident, session_id="abc", started_at=0.5, name="cardholder", database="payments",
        user="ci-bot", application_name="psql", client_addr="10.20.1.1", tls=True,
        networks=NETWORKS)
    doc = facts.input_for({"kind": "read"})
    assert doc["identity"] == {"subject": "ci-bot", "issuer": "https://issuer",
                               "groups": ["ci"], "claims": {"repo": "payments"},
                               "method": "jwt"}
    assert doc["connection"]["networks"] == ["ci-runners"]
    assert doc["connection"]["tls"] is True and doc["connection"]["name"] == "cardholder"
    assert doc["session"] == {"id": "abc", "started_at": "1970-01-01T00:00:00.500000Z"}
    assert doc["statement"] == {"kind": "read"}
    assert doc["approval"] == {"granted": False, "id": None}
