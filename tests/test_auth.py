"""Roles from settings, the trusted-header rule, no sign-in only on loopback, conversations per user."""
from __future__ import annotations

import pytest

from kb.auth import (
    ADMIN,
    EDITOR,
    VIEWER,
    AccessDenied,
    Identity,
    check_no_sign_in,
    identity_from_claims,
    identity_from_headers,
    require,
    role_of,
)
from kb.conversations import Conversations
from kb.errors import NotFound
from kb.types import Chunk, Hit


def test_roles_come_from_emails_domains_and_groups(make_settings):
    settings = make_settings(admins="Alice@Example.com", editors="@example.com, group:writers", viewers="")
    assert role_of(Identity("alice@example.com"), settings) == ADMIN
    assert role_of(Identity("bob@example.com"), settings) == EDITOR
    assert role_of(Identity("carol@elsewhere.org", groups=("Writers",)), settings) == EDITOR
    assert role_of(Identity("dave@elsewhere.org"), settings) == VIEWER  # no viewer list: signed in is enough
    closed = make_settings(admins="alice@example.com", viewers="@example.com")
    assert role_of(Identity("dave@elsewhere.org"), closed) is None  # a viewer list names who may look
    assert role_of(Identity("eve@example.com.evil.org"), closed) is None
    with pytest.raises(AccessDenied, match="needs the editor role; you are viewer"):
        require(VIEWER, EDITOR, "delete")


def test_oidc_claims_give_email_name_and_groups():
    who = identity_from_claims({"sub": "42", "email": "vera@example.com", "name": "Vera", "groups": ["staff"]})
    assert (who.email, who.name, who.groups) == ("vera@example.com", "Vera", ("staff",))
    assert identity_from_claims({"sub": "42", "preferred_username": "vera"}).email == "vera"


def test_the_sign_in_header_is_believed_only_from_a_trusted_proxy_or_with_the_secret(make_settings):
    settings = make_settings(auth="header", auth_trusted_proxies="10.0.0.0/8, 192.168.1.5",
                             auth_header_secret="s3cret-s3cret")
    headers = {"X-Seekframe-User": "bob@example.com", "X-Seekframe-Groups": "writers, ops"}
    assert identity_from_headers(headers, "10.1.2.3", settings) == Identity("bob@example.com",
                                                                            groups=("writers", "ops"))
    assert identity_from_headers(headers, "192.168.1.5", settings).email == "bob@example.com"
    with pytest.raises(AccessDenied, match="came from 203.0.113.9, which is not a trusted proxy"):
        identity_from_headers(headers, "203.0.113.9", settings)
    with pytest.raises(AccessDenied):
        identity_from_headers({**headers, "X-Seekframe-Secret": "guess"}, "203.0.113.9", settings)
    with_secret = {**headers, "x-seekframe-secret": "s3cret-s3cret"}
    assert identity_from_headers(with_secret, "203.0.113.9", settings).email == "bob@example.com"
    with pytest.raises(AccessDenied, match="no X-Seekframe-User header"):
        identity_from_headers({}, "10.1.2.3", settings)


def test_no_sign_in_only_on_a_loopback_address():
    check_no_sign_in("127.0.0.1")
    check_no_sign_in("::1")
    check_no_sign_in("localhost")
    for address in ("0.0.0.0", "", "192.168.1.10"):
        with pytest.raises(AccessDenied, match="anyone who reaches it could delete the library"):
            check_no_sign_in(address)


def test_conversations_are_kept_per_user_and_shown_to_their_owner_only(tmp_path):
    kept = Conversations(tmp_path / "kb")
    hit = Hit(Chunk(id="c1", text="The heron waits.", rel="birds.pdf", path="/srv/birds.pdf", sha256="s",
                    modality="pdf_text", page=3), 0.9)
    mine = kept.start("vera@example.com", "Where does the heron wait?")
    kept.add(mine, "vera@example.com", [{"role": "user", "text": "Where does the heron wait?"},
                                        {"role": "assistant", "text": "In the shallows [1].", "hits": [hit],
                                         "question": "Where does the heron wait?", "timing": "ocr · 0.1 s"}])
    kept.close()
    reopened = Conversations(tmp_path / "kb")  # another app replica, or after a restart
    assert [c["title"] for c in reopened.of("vera@example.com")] == ["Where does the heron wait?"]
    turns = reopened.turns(mine, "vera@example.com")
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["hits"] == [hit]
    assert reopened.of("bob@example.com") == []
    with pytest.raises(NotFound):
        reopened.turns(mine, "bob@example.com")
    with pytest.raises(NotFound):
        reopened.add(mine, "bob@example.com", [{"role": "user", "text": "mine now"}])
