"""A tenant's desensitisation policy: what a write does with each type of sensitive value, and who may see
pseudonymised originals again.

``keep``: stored as told. ``mask``: replaced by ``<TYPE>`` for good. ``pseudonymise``: replaced by a
placeholder stable within the subject (``<TYPE_N>``), the original sealed under the subject's data key and shown
again only to the roles in ``reveal_roles``. ``reject``: the write fails (422 naming the types), nothing stored.

Defaults: secrets are masked (never stored in clear), personal data is pseudonymised, and originals are shown
to the app's keys and the subject's own tokens, not to readers or admins (exports show placeholders).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from memory_store.errors import ValidationError
from memory_store.sensitive.detector import ENTITY_TYPES, Category

Action = Literal["keep", "mask", "pseudonymise", "reject"]
ACTIONS: tuple[Action, ...] = ("keep", "mask", "pseudonymise", "reject")
DEFAULT_ACTIONS: dict[Category, Action] = {"pii": "pseudonymise", "secret": "mask"}
ROLES = ("admin", "app", "reader", "subject")
DEFAULT_REVEAL_ROLES = frozenset({"app", "subject"})


def _defaults() -> dict[str, Action]:
    return {name: DEFAULT_ACTIONS[category] for name, category in ENTITY_TYPES.items()}


@dataclass(frozen=True)
class SensitivePolicy:
    actions: Mapping[str, Action] = field(default_factory=_defaults)  # every type of ENTITY_TYPES
    reveal_roles: frozenset[str] = DEFAULT_REVEAL_ROLES
    revision: int = 0  # the tenant's policy revision this was read at (writes re-check it in their transaction)

    @classmethod
    def stored(cls, raw: Mapping[str, Any] | None, revision: int) -> SensitivePolicy:
        """The policy a tenant row holds (``None``: the defaults); types added since it was set get defaults."""
        if not raw:
            return cls(revision=revision)
        actions = _defaults()
        for name, action in dict(raw.get("actions") or {}).items():
            if name in actions and action in ACTIONS:
                actions[name] = cast(Action, action)
        roles = frozenset(r for r in raw.get("reveal_roles", DEFAULT_REVEAL_ROLES) if r in ROLES)
        return cls(actions=actions, reveal_roles=roles, revision=revision)

    def to_stored(self) -> dict[str, Any]:
        return {"actions": dict(self.actions), "reveal_roles": sorted(self.reveal_roles)}

    def changed(
        self, *, actions: Mapping[str, str] | None = None, reveal_roles: Iterable[str] | None = None
    ) -> SensitivePolicy:
        """This policy with ``actions`` (some types) and ``reveal_roles`` (the whole set) replaced; a bad type,
        action or role is a ValidationError naming it."""
        merged = dict(self.actions)
        for name, action in (actions or {}).items():
            if name not in ENTITY_TYPES:
                raise ValidationError(f"actions: unknown type '{name}' (known: {', '.join(ENTITY_TYPES)})")
            if action not in ACTIONS:
                raise ValidationError(f"actions.{name}: must be one of {', '.join(ACTIONS)}")
            merged[name] = action
        roles = self.reveal_roles
        if reveal_roles is not None:
            roles = frozenset(reveal_roles)
            unknown = sorted(roles - set(ROLES))
            if unknown:
                raise ValidationError(f"reveal_roles: unknown role '{unknown[0]}' (known: {', '.join(ROLES)})")
        return SensitivePolicy(actions=merged, reveal_roles=roles, revision=self.revision)

    def action(self, entity_type: str) -> Action:
        return self.actions.get(entity_type, "keep")

    @property
    def screens(self) -> bool:
        """Whether writes need detection at all (not when every type is kept)."""
        return any(action != "keep" for action in self.actions.values())

    def reveals_to(self, role: str) -> bool:
        return role in self.reveal_roles
