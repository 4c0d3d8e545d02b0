"""The users that may authenticate (#15.1), as the database holds them."""

from __future__ import annotations

from typing import NamedTuple


class Subscriber(NamedTuple):
    """One digest user: HA1 hashes, never the password."""

    username: str
    realm: str
    aor: str  # user@domain, the identity the user may act for
    ha1_md5: str
    ha1_sha256: str

    def as_json(self) -> dict[str, str]:
        """What the admin API shows: not the hashes."""
        return {"aor": self.aor, "username": self.username, "realm": self.realm}
