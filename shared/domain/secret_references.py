"""Secret values in connection profiles: a literal, or a reference resolved only at dispatch time.

A reference reaches only what the operator allows (:class:`SecretReferencePolicy`): ``env:NAME`` an
environment variable whose name starts with an allowed prefix (``EXPORT_ALLOWED_SECRET_ENV_PREFIXES``,
by default ``PARTNER_`` and ``EXPORT_SECRET_``), never one of the services' own ``EXPORT_`` settings
(the catalog URL, the SMTP password, the encryption keys); ``file:PATH`` a file inside an allowed
directory (``EXPORT_ALLOWED_SECRET_DIRS``, by default ``/var/run/secrets/member-export``), also once
symbolic links are followed. The same rule refuses a reference when a profile is saved and again when
the dispatcher resolves it; no message ever holds a secret value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

from pydantic import SecretStr

from shared.errors import PermanentError

ENV_REFERENCE = "env:"
FILE_REFERENCE = "file:"
#: The settings of the rule, and their defaults (``shared.settings`` declares and documents them).
ENV_PREFIXES_VARIABLE = "EXPORT_ALLOWED_SECRET_ENV_PREFIXES"
DIRECTORIES_VARIABLE = "EXPORT_ALLOWED_SECRET_DIRS"
DEFAULT_ENV_PREFIXES = "PARTNER_,EXPORT_SECRET_"
DEFAULT_DIRECTORIES = "/var/run/secrets/member-export"
#: The services' own settings: never reachable by a reference, whatever the prefixes allow ...
SETTINGS_NAMESPACE = "EXPORT_"
#: ... except this namespace, kept for partner secrets (no setting is named in it; a test holds that).
SECRETS_NAMESPACE = "EXPORT_SECRET_"
#: Where Kubernetes mounts a pod's service-account credentials (its API token): never reachable by a reference, nor
#: an allowed directory that is, holds or lies in one of them (``/var/run`` is often a link to ``/run``).
KUBERNETES_SECRETS = ("/var/run/secrets/kubernetes.io", "/run/secrets/kubernetes.io")


def _normal_path(path: str) -> str:
    """``path`` normalised as Linux reads it: ``os.path.normpath`` keeps two leading slashes (POSIX leaves their
    meaning to the system), which Linux reads as one, so ``//var/run/secrets/kubernetes.io`` is that directory."""
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


#: A secret file larger than this is refused rather than read (a key or a token is a few hundred bytes).
MAX_FILE_BYTES = 64 * 1024

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnresolvableSecret(PermanentError):
    """A secret reference that is not allowed, or names an environment variable or file that is not there."""


def is_reference(value: str) -> bool:
    """Whether a secret value is an ``env:`` or ``file:`` reference (anything else is the secret itself)."""
    return value.startswith((ENV_REFERENCE, FILE_REFERENCE))


@dataclass(frozen=True)
class SecretReferencePolicy:
    """Which environment variables and files secret references may name."""

    env_prefixes: tuple[str, ...] = tuple(DEFAULT_ENV_PREFIXES.split(","))
    directories: tuple[str, ...] = (DEFAULT_DIRECTORIES,)

    @classmethod
    def parse(
        cls, env_prefixes: str = DEFAULT_ENV_PREFIXES, directories: str = DEFAULT_DIRECTORIES
    ) -> SecretReferencePolicy:
        """From the comma-separated settings; ValueError naming a malformed prefix or directory."""
        prefixes = tuple(p.strip() for p in env_prefixes.split(",") if p.strip())
        for prefix in prefixes:
            if not _ENV_NAME.match(prefix):
                raise ValueError(f"'{prefix}' is not the beginning of an environment variable name")
        dirs = tuple(_normal_path(d.strip()) for d in directories.split(",") if d.strip())
        for directory in dirs:
            if not directory.startswith("/") or directory == "/":
                raise ValueError(f"'{directory}' must be an absolute directory other than /")
            kubernetes = _kubernetes_overlap(directory)
            if kubernetes is not None:
                raise ValueError(
                    f"{DIRECTORIES_VARIABLE}: '{directory}' would let file: references read {kubernetes} (the pod's "
                    "Kubernetes service-account token): name a directory outside it, such as "
                    f"{DEFAULT_DIRECTORIES}"
                )
        return cls(prefixes, dirs)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SecretReferencePolicy:
        """The policy the process's settings give (``EXPORT_ALLOWED_SECRET_ENV_PREFIXES`` and ``_DIRS``).

        Read like pydantic-settings reads them (names in any case), defaults when unset; UnresolvableSecret
        when malformed (the services refuse to start with them anyway).
        """
        environ = os.environ if environ is None else environ
        found = {name.upper(): value for name, value in environ.items()}
        try:
            return _parsed(
                found.get(ENV_PREFIXES_VARIABLE, DEFAULT_ENV_PREFIXES),
                found.get(DIRECTORIES_VARIABLE, DEFAULT_DIRECTORIES),
            )
        except ValueError as exc:
            raise UnresolvableSecret(f"secret references cannot be resolved: {exc}") from None

    def refusal(self, value: str) -> str | None:
        """Why the reference ``value`` is not allowed, or None (also for a literal, which is no reference).

        Judged on the reference as written, as a profile is saved; :meth:`resolve` judges files again once
        their symbolic links are followed.
        """
        if value.startswith(ENV_REFERENCE):
            return self._env_refusal(value[len(ENV_REFERENCE) :])
        if value.startswith(FILE_REFERENCE):
            return self._file_refusal(value[len(FILE_REFERENCE) :])
        return None

    def _env_refusal(self, name: str) -> str | None:
        if not _ENV_NAME.match(name):
            return f"secret reference env:{name} is not allowed: not an environment variable name"
        upper = name.upper()
        if upper.startswith(SETTINGS_NAMESPACE) and not upper.startswith(SECRETS_NAMESPACE):
            return (
                f"secret reference env:{name} is not allowed: {SETTINGS_NAMESPACE} variables are the services' own "
                f"settings (name partner secrets {' or '.join(p + '…' for p in self.env_prefixes) or 'nothing'})"
            )
        if not self.env_prefixes:
            return f"secret reference env:{name} is not allowed: {ENV_PREFIXES_VARIABLE} allows no variable"
        if not name.startswith(self.env_prefixes):
            allowed = " or ".join(self.env_prefixes)
            return (
                f"secret reference env:{name} is not allowed: environment variables must start with {allowed} "
                f"({ENV_PREFIXES_VARIABLE})"
            )
        return None

    def _file_refusal(self, path: str) -> str | None:
        where = " or ".join(self.directories) or "no directory"
        if not path.startswith("/") or ".." in PurePosixPath(path).parts:
            return f"secret reference file:{path} is not allowed: the path must be absolute, without '..'"
        if self._containing(_normal_path(path), self.directories) is None:
            return f"secret reference file:{path} is not allowed: files must be inside {where} ({DIRECTORIES_VARIABLE})"
        if _in_kubernetes_secrets(_normal_path(path)):
            return f"secret reference file:{path} is not allowed: the pod's Kubernetes credentials are never read"
        return None

    @staticmethod
    def _containing(path: str, directories: tuple[str, ...]) -> str | None:
        pure = PurePosixPath(path)
        return next((d for d in directories if pure != PurePosixPath(d) and pure.is_relative_to(d)), None)

    def resolve(self, value: SecretStr) -> str:
        """The secret ``value`` stands for: the literal itself, or what an allowed reference names.

        :class:`UnresolvableSecret` naming the reference (never a value) when it is not allowed, names an
        unset variable, or a file that cannot be read, lies outside the allowed directories once its links
        are followed, or is larger than 64 KiB.
        """
        raw = value.get_secret_value()
        refusal = self.refusal(raw)
        if refusal is not None:
            raise UnresolvableSecret(refusal)
        if raw.startswith(ENV_REFERENCE):
            name = raw[len(ENV_REFERENCE) :]
            if name not in os.environ:
                raise UnresolvableSecret(f"secret reference env:{name} names an unset environment variable")
            return os.environ[name]
        if raw.startswith(FILE_REFERENCE):
            return self._read(raw[len(FILE_REFERENCE) :])
        return raw

    def _read(self, path: str) -> str:
        real = os.path.realpath(path)
        if self._containing(real, tuple(os.path.realpath(d) for d in self.directories)) is None:
            where = " or ".join(self.directories)
            raise UnresolvableSecret(f"secret reference file:{path} is not allowed: it leads outside {where}")
        if _in_kubernetes_secrets(real):
            raise UnresolvableSecret(
                f"secret reference file:{path} is not allowed: it leads to the pod's Kubernetes credentials"
            )
        try:
            with open(real, "rb") as file:
                content = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise UnresolvableSecret(f"secret reference file:{path} cannot be read ({exc.strerror})") from None
        if len(content) > MAX_FILE_BYTES:
            raise UnresolvableSecret(f"secret reference file:{path} names a file larger than {MAX_FILE_BYTES} bytes")
        try:
            return content.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UnresolvableSecret(f"secret reference file:{path} names a file that is not UTF-8 text") from None


def _kubernetes_overlap(directory: str) -> str | None:
    """The Kubernetes credentials directory that ``directory`` is, holds or lies in, if any."""
    pure = PurePosixPath(directory)
    return next(
        (k for k in KUBERNETES_SECRETS if PurePosixPath(k).is_relative_to(pure) or pure.is_relative_to(k)), None
    )


def _in_kubernetes_secrets(path: str) -> bool:
    """Whether ``path`` (normalised) lies in a Kubernetes credentials directory (the links of /var/run followed)."""
    pure = PurePosixPath(path)
    kubernetes = {*KUBERNETES_SECRETS, *(os.path.realpath(k) for k in KUBERNETES_SECRETS)}
    return any(pure.is_relative_to(k) for k in kubernetes)


@lru_cache(maxsize=16)
def _parsed(env_prefixes: str, directories: str) -> SecretReferencePolicy:
    return SecretReferencePolicy.parse(env_prefixes, directories)


def resolve_secret(value: SecretStr, policy: SecretReferencePolicy | None = None) -> str:
    """Resolve ``env:NAME`` and ``file:PATH`` references allowed by ``policy``; any other value is the secret.

    Without ``policy``, the one the process's settings give (:meth:`SecretReferencePolicy.from_environment`):
    the dispatcher resolves with its own settings. The error names the reference, never a secret value.
    """
    return (policy or SecretReferencePolicy.from_environment()).resolve(value)
