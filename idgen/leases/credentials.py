"""Credentials of a coordination service (ZooKeeper, etcd) from the environment, never from the command line.

One reader for every backend, so that each refuses the same way: ``user:password`` from ``$<NAME>_AUTH`` or the file
named by ``$<NAME>_AUTH_FILE``; no credentials at all only with the operator's double opt-out (a command-line flag
and ``$<NAME>_INSECURE_NO_AUTH=1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from idgen.errors import InvalidInput
from idgen.files import read_bounded

MAX_CREDENTIALS_BYTES = 4096  # user:password, with room to spare


@dataclass(frozen=True)
class CredentialSource:
    """Where one service's credentials come from: ``engine`` names it in messages (``"ZooKeeper"``, ``"etcd"``)."""

    engine: str
    auth_env: str
    auth_file_env: str
    insecure_env: str
    insecure_flag: str

    def from_env(self) -> str | None:
        """``user:password`` from the environment, ``None`` if none is set; :class:`InvalidInput` if malformed."""
        if os.environ.get(self.auth_env):
            auth = os.environ[self.auth_env]
        elif os.environ.get(self.auth_file_env):
            path = os.environ[self.auth_file_env]
            what = f"the {self.engine} credentials file {path} ({self.auth_file_env})"
            try:
                auth = read_bounded(path, MAX_CREDENTIALS_BYTES, what).decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
                raise InvalidInput(
                    f"cannot read {self.engine} credentials from {self.auth_file_env}: {reason}"
                ) from None
        else:
            return None
        user, _, password = auth.partition(":")
        if not user or not password or not auth.isprintable():  # "user:" would be a user with an empty password
            raise InvalidInput(
                f"{self.engine} credentials must look like user:password (from {self.auth_env} or {self.auth_file_env})"
            )
        return auth

    def insecure_opted_out(self, insecure_flag: bool) -> bool:
        """The operator asked for no access control twice: the flag and the environment variable."""
        return insecure_flag and os.environ.get(self.insecure_env) == "1"

    def required(self, insecure_flag: bool) -> str | None:
        """The credentials; ``None`` only with the double opt-out. Otherwise no credentials is :class:`InvalidInput`:
        without them anyone who reaches the service can delete a claim or a fence."""
        auth = self.from_env()
        if auth is not None or self.insecure_opted_out(insecure_flag):
            return auth
        raise InvalidInput(self.missing())

    def missing(self) -> str:
        return (
            f"{self.engine} credentials are required: set {self.auth_env}=user:password or {self.auth_file_env}=FILE"
            f" (to run without access control, letting anyone delete claims and fences, pass {self.insecure_flag}"
            f" and set {self.insecure_env}=1)"
        )
