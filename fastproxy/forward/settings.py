"""What the configuration says about a forward listener (built by config.load, read by
the forward handler): access rules, authentication, anonymity and the resolver."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastproxy.forward.acl import AclConfig
from fastproxy.forward.anonymity import AnonymityConfig
from fastproxy.forward.auth import AuthConfig
from fastproxy.forward.resolver import ResolverConfig

# The listener keys a forward listener reads into its ForwardSettings.
KEYS = ("acl", "auth", "anonymity", "resolver", "connect_ports", "allow_private",
        "header_rules")


@dataclass(frozen=True)
class ForwardSettings:
    """Everything a forward listener needs, validated at configuration time."""

    acl: AclConfig
    auth: AuthConfig
    anonymity: AnonymityConfig
    resolver: ResolverConfig
    deny_detail: bool = True     # name the rule in 403 bodies


def build_settings(tables: dict[str, Any]) -> ForwardSettings:
    """ForwardSettings from a forward listener's tables; ValueError names the key."""
    def section(name: str, cls: Any) -> Any:
        raw = tables.get(name, {})
        try:
            return cls.from_table(raw)
        except ValueError as exc:
            raise ValueError(f"{name}.{exc}") from None

    acl_raw = dict(tables.get("acl", {})) if isinstance(tables.get("acl", {}), dict) else None
    if acl_raw is None:
        raise ValueError("acl: expected a table")
    # Listener-level shorthands (also flags): allow_private, connect_ports.
    for key in ("allow_private", "connect_ports"):
        if key in tables:
            if key in acl_raw:
                raise ValueError(f"{key}: given twice (here and in acl.{key})")
            acl_raw[key] = tables[key]
    deny_detail = acl_raw.pop("deny_detail", True)
    if not isinstance(deny_detail, bool):
        raise ValueError(f"acl.deny_detail: expected true or false, got {deny_detail!r}")
    try:
        acl = AclConfig.from_table(acl_raw)
    except ValueError as exc:
        raise ValueError(f"acl.{exc}") from None
    anon_raw = tables.get("anonymity", {})
    if "header_rules" in tables:
        if not isinstance(anon_raw, dict) or "rules" in anon_raw:
            raise ValueError("header_rules: given twice (here and in anonymity.rules)")
        anon_raw = dict(anon_raw, rules=tables["header_rules"])
    try:
        anonymity = AnonymityConfig.from_table(anon_raw)
    except ValueError as exc:
        raise ValueError(f"anonymity.{exc}") from None
    return ForwardSettings(
        acl=acl,
        auth=section("auth", AuthConfig),
        anonymity=anonymity,
        resolver=section("resolver", ResolverConfig),
        deny_detail=deny_detail,
    )
