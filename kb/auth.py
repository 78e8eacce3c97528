"""Who is asking, and what they may do: roles from settings, identities from OIDC claims or a trusted header.

Roles: viewer (ask, browse), editor (also add, re-index, delete), admin (also the System page and server
folders). `KB_ADMINS`, `KB_EDITORS`, `KB_VIEWERS` list e-mail addresses, `@domain`s or `group:NAME` (a value of
the provider's groups claim); the highest role that matches wins. A signed-in user who matches none is a viewer
while `KB_VIEWERS` is empty, and is refused once it names anyone.

Modes (`KB_AUTH`): `oidc` (Streamlit's st.login against the provider in .streamlit/secrets.toml), `header`
(an auth proxy sets X-Seekframe-User; believed only from `KB_AUTH_TRUSTED_PROXIES` or with the shared secret
`KB_AUTH_HEADER_SECRET` in X-Seekframe-Secret), `none` (no sign-in: everyone is admin, so only when the app
listens on a loopback address), `auto` (oidc when secrets.toml has an [auth] section, else none).
"""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from kb.config import Settings
from kb.errors import SeekframeError

VIEWER, EDITOR, ADMIN = "viewer", "editor", "admin"
RANK = {VIEWER: 1, EDITOR: 2, ADMIN: 3}
USER_HEADER, GROUPS_HEADER, SECRET_HEADER = "X-Seekframe-User", "X-Seekframe-Groups", "X-Seekframe-Secret"
LOCAL_USER = "local"


class AccessDenied(SeekframeError):
    exit_code = 3


@dataclass(frozen=True)
class Identity:
    email: str
    name: str = ""
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def user(self) -> str:
        """The key conversations and jobs are filed under."""
        return self.email.lower()


def _entries(text: str) -> list[str]:
    return [e.strip().lower() for e in text.replace(";", ",").split(",") if e.strip()]


def _matches(identity: Identity, entry: str) -> bool:
    email = identity.email.lower()
    if entry.startswith("group:"):
        return entry[len("group:"):] in {g.lower() for g in identity.groups}
    if entry.startswith("@"):
        return email.endswith(entry)
    return email == entry


def role_of(identity: Identity, settings: Settings) -> str | None:
    """The highest role whose list names this identity; viewer when no viewer list is set; else None."""
    for role, listed in ((ADMIN, settings.admins), (EDITOR, settings.editors), (VIEWER, settings.viewers)):
        if any(_matches(identity, e) for e in _entries(listed)):
            return role
    return None if _entries(settings.viewers) else VIEWER


def allows(role: str | None, needed: str) -> bool:
    return role is not None and RANK[role] >= RANK[needed]


def require(role: str | None, needed: str, action: str) -> None:
    """Raise AccessDenied unless `role` reaches `needed` (checked where the action happens, not only in menus)."""
    if not allows(role, needed):
        raise AccessDenied(f"{action} needs the {needed} role; you are {role or 'not allowed in'}",
                           f"ask an admin to add you to KB_{needed.upper()}S", code="access.role",
                           params={"action": action, "needed": needed, "role": role or "not allowed in",
                                   "setting": f"KB_{needed.upper()}S"})


def identity_from_claims(claims: Mapping[str, object]) -> Identity:
    """An OIDC user (st.user): e-mail (or preferred_username, or sub), name, and the groups claim if sent."""
    email = str(claims.get("email") or claims.get("preferred_username") or claims.get("sub") or "")
    claimed = claims.get("groups") or ()
    groups = [claimed] if isinstance(claimed, str) else claimed if isinstance(claimed, (list, tuple)) else []
    return Identity(email=email, name=str(claims.get("name") or ""), groups=tuple(str(g) for g in groups))


def _trusted(address: str, proxies: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in proxies:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def identity_from_headers(headers: Mapping[str, str], remote_address: str | None, settings: Settings) -> Identity:
    """The user an auth proxy names in X-Seekframe-User, if the request is from a trusted proxy address or
    carries the shared secret; AccessDenied otherwise (the header is then just something a browser typed)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    user = lowered.get(USER_HEADER.lower(), "").strip()
    if not user:
        raise AccessDenied(f"no {USER_HEADER} header: this app expects to be reached through its sign-in proxy",
                           "open the team's address, not the app's port", code="access.no_header",
                           params={"header": USER_HEADER})
    secret = lowered.get(SECRET_HEADER.lower(), "")
    by_secret = bool(settings.auth_header_secret) and hmac.compare_digest(secret.encode(),
                                                                           settings.auth_header_secret.encode())
    by_address = bool(remote_address) and _trusted(remote_address or "", _entries(settings.auth_trusted_proxies))
    if not (by_secret or by_address):
        raise AccessDenied(f"{USER_HEADER} came from {remote_address or 'an unknown address'}, which is not a "
                           "trusted proxy, and without the shared secret: refused",
                           "set KB_AUTH_TRUSTED_PROXIES to the proxy's address, or KB_AUTH_HEADER_SECRET on both",
                           code="access.untrusted",
                           params={"header": USER_HEADER, "address": remote_address or "?"})
    groups = tuple(g.strip() for g in lowered.get(GROUPS_HEADER.lower(), "").split(",") if g.strip())
    return Identity(email=user, groups=groups)


def is_loopback(address: str) -> bool:
    if address in ("localhost", ""):
        return address == "localhost"
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_no_sign_in(address: str) -> None:
    """No sign-in gives everyone the admin role: refuse it unless the app listens on loopback only."""
    if not is_loopback(address):
        raise AccessDenied(f"no sign-in (KB_AUTH=none, or auto with no [auth] provider) while the app listens on "
                           f"{address or 'every address'}: anyone who reaches it could delete the library",
                           "listen on 127.0.0.1 only (server.address), or set KB_AUTH=oidc with a provider in "
                           ".streamlit/secrets.toml, or KB_AUTH=header behind an auth proxy",
                           code="access.open_no_sign_in", params={"address": address or "0.0.0.0"})
