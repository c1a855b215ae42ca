"""Apply the ACL plan to a cluster: add what the policies imply, remove what they no longer imply.

``acl apply`` runs as the admin (kafka-python's admin client). Its scope is the deployment's
own rules: ALLOW rules of the deployment's principals (processor, screening system, operators,
agencies) on resources named with the deployment's topic prefix. Rules of other principals
(the registry, people) or of another prefix sharing the cluster are never touched. What is not
in the plan is denied by the broker (``allow.everyone.if.no.acl.found=false``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaError

from streams.assembly import PolicySet
from streams.domain.geography import DEFAULT_GEOGRAPHY, Geography
from streams.errors import ScreeningStreamsError
from streams.kafka.acl import AGENCY_PREFIX, OPERATOR, PROCESSOR, PRODUCER, AclBinding, acl_plan
from streams.kafka.topics import admin_client
from streams.settings import Settings


class AclError(ScreeningStreamsError):
    """ACLs could not be read or changed on the cluster."""


@dataclass(frozen=True)
class AclChange:
    """What one ``acl apply`` did (or, with ``dry_run``, would do)."""

    added: list[AclBinding]
    removed: list[AclBinding]
    kept: int
    foreign: list[str] = field(default_factory=list)  # rules outside the plan that still grant access


#: The names a deployment gives its resources, after its topic prefix (``{app}``: its app id).
_TOPIC_NAMES = (
    r"screening\.results\.v1|screening\.results\.dlq(\.keys|\.replays)?\.v1|screening\.audit\.v1"
    r"|screening\.[a-z][a-z0-9_]*\.hold\.v1"
    r"|(tracing|surveillance)\.[a-z][a-z0-9_]*(\.[0-9]{2})?\.(results|keys)\.v[1-9][0-9]*"
)
# (formatted with the app id: literal braces doubled)
_GROUP_NAMES = r"{app}(-audit-tail|-hold-rebuild)?|agency-[a-z][a-z0-9_]*(\.[0-9]{{2}})?"
_TXN_NAMES = r"{app}-"


def _ours(principal: str) -> bool:
    return principal in (PROCESSOR, PRODUCER, OPERATOR) or principal.startswith(AGENCY_PREFIX)


def managed(binding: AclBinding, prefix: str, app_id: str = "screening-streams", planned: Iterable[str] = ()) -> bool:
    """Whether ``binding`` is in a deployment's scope: one of its principals, on a resource it names.

    A resource is the deployment's when its name is the prefix followed by one of the names the
    deployment gives (or one of ``planned``), so a prefix that begins another (``prod.`` and
    ``prod.eu.``), or the empty one, never claims the other deployment's rules.
    """
    if not _ours(binding.principal) or not binding.name.startswith(prefix):
        return False
    if binding.name in planned:
        return True
    rest, app = binding.name[len(prefix) :], re.escape(app_id)
    names = {
        "TOPIC": _TOPIC_NAMES,
        "GROUP": _GROUP_NAMES.format(app=app),
        "TRANSACTIONAL_ID": _TXN_NAMES.format(app=app),
    }
    pattern = names.get(binding.resource_type)
    return pattern is not None and re.fullmatch(pattern, rest) is not None


def foreign_grants(acls: Iterable[Any], plan: Iterable[AclBinding]) -> list[str]:
    """ALLOW rules outside the plan that still reach the plan's resources for a deployment principal.

    A wildcard principal (``User:*``), the wildcard resource (``*``), a prefixed rule covering a
    planned resource, or a rule for one host only: ``acl apply`` does not remove them (they may be
    someone else's) but names them, and fails unless told to accept them.
    """
    plan = list(plan)
    planned = set(plan)
    resources = {(b.resource_type, b.name) for b in plan}
    ranges = {(b.resource_type, b.name) for b in plan if b.pattern == "PREFIXED"}
    found = []
    for acl in acls:
        if acl.permission_type != ACLPermissionType.ALLOW:
            continue
        principal, pattern = str(acl.principal), acl.resource_pattern
        kind, name, how = pattern.resource_type.name, str(pattern.resource_name), pattern.pattern_type.name
        binding = AclBinding(principal, kind, name, acl.operation.name, how)
        if binding in planned and acl.host == "*":
            continue
        if not (_ours(principal) or principal == "User:*"):
            continue
        reaches = (
            kind == "CLUSTER"
            or any(  # a cluster grant (ALTER: manage ACLs) reaches everything
                k == kind and (name == "*" or n == name or (how == "PREFIXED" and n.startswith(name)))
                for k, n in resources
            )
            or any(k == kind and name.startswith(n) for k, n in ranges)
        )  # inside a planned prefixed range
        if reaches:
            found.append(f"{principal} {acl.operation.name} {kind} {name} ({how}, host {acl.host})")
    return sorted(found)


def to_acl(binding: AclBinding) -> ACL:
    """The kafka-python ACL of an :class:`AclBinding` (any host)."""
    return ACL(
        binding.principal,
        "*",
        ACLOperation[binding.operation],
        ACLPermissionType.ALLOW,
        ResourcePattern(ResourceType[binding.resource_type], binding.name, ACLResourcePatternType[binding.pattern]),
    )


def from_acl(acl: Any) -> AclBinding | None:
    """The :class:`AclBinding` of a described ALLOW rule on any host (None for any other rule)."""
    if acl.permission_type != ACLPermissionType.ALLOW or acl.host != "*":
        return None
    pattern = acl.resource_pattern
    return AclBinding(
        str(acl.principal),
        pattern.resource_type.name,
        str(pattern.resource_name),
        acl.operation.name,
        pattern.pattern_type.name,
    )


def current(admin: KafkaAdminClient) -> list[Any]:
    """Every ACL on the cluster (as kafka-python describes them)."""
    everything = ACLFilter(
        principal=None,
        host=None,
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ANY,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
    )
    try:
        acls, error = admin.describe_acls(everything)
    except KafkaError as exc:
        raise AclError(f"cannot list the cluster's ACLs (the admin needs DESCRIBE on the cluster): {exc}") from exc
    if getattr(error, "errno", 0):
        raise AclError(f"cannot list the cluster's ACLs: {error}")
    return list(acls)


def plan_changes(
    plan: Iterable[AclBinding], existing: Iterable[AclBinding], prefix: str, app_id: str = "screening-streams"
) -> tuple[list[AclBinding], list[AclBinding], int]:
    """``(to add, to remove, kept)``: the plan minus what exists; what exists in scope minus the plan."""
    wanted = set(plan)
    names = {b.name for b in wanted}
    have = {b for b in existing if managed(b, prefix, app_id, names)}
    return sorted(wanted - have), sorted(have - wanted), len(wanted & have)


def apply_plan(
    settings: Settings,
    policy_set: PolicySet,
    geography: Geography = DEFAULT_GEOGRAPHY,
    *,
    dry_run: bool = False,
) -> AclChange:
    """Reconcile the cluster's ACLs with the plan of ``policy_set`` (as ``settings.kafka_auth``, the admin)."""
    plan = acl_plan(settings, policy_set, geography)
    admin = admin_client(settings.bootstrap_servers, auth=settings.kafka_auth)
    try:
        described = [(acl, from_acl(acl)) for acl in current(admin)]
        existing = [binding for _, binding in described if binding is not None]
        add, remove, kept = plan_changes(plan, existing, settings.topic_prefix, settings.app_id)
        gone = set(remove)
        foreign = foreign_grants([acl for acl, binding in described if binding not in gone], plan)
        if dry_run:
            return AclChange(add, remove, kept, foreign)
        if add:
            try:
                result = admin.create_acls([to_acl(b) for b in add])
            except KafkaError as exc:
                raise AclError(f"cannot create ACLs: {exc}") from exc
            if result.get("failed"):
                raise AclError(f"the broker refused {len(result['failed'])} ACLs, first: {result['failed'][0]}")
        if remove:
            try:
                outcome = admin.delete_acls([_exact(b) for b in remove])
            except KafkaError as exc:
                raise AclError(f"cannot delete ACLs: {exc}") from exc
            for _filter, _acls, error in outcome:
                if getattr(error, "errno", 0):
                    raise AclError(f"cannot delete an ACL: {error}")
        return AclChange(add, remove, kept, foreign)
    finally:
        admin.close()


def _exact(binding: AclBinding) -> ACLFilter:
    """A filter matching exactly ``binding`` (nothing broader)."""
    return ACLFilter(
        principal=binding.principal,
        host="*",
        operation=ACLOperation[binding.operation],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePatternFilter(
            ResourceType[binding.resource_type], binding.name, ACLResourcePatternType[binding.pattern]
        ),
    )
