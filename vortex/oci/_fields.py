"""Reading config.json with the JSON path of every value at hand.

Every error the OCI layer raises names the field it is about
(``config.json: linux.namespaces[2].path: ...``), so each value is read
through a :class:`Field` that knows where it came from.  An object member
the reader does not list is an error, never skipped: a field Vortex does not
know might have strengthened or weakened the container.
"""

from __future__ import annotations

from collections.abc import Collection

from vortex.errors import OciConfigError

UNKNOWN_FIELD = "unknown field: Vortex reads runtime-spec 1.0 to 1.2 (see docs/oci.md)"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


class Field:
    """One value of config.json and its JSON path (``process.user.uid``)."""

    __slots__ = ("path", "value")

    def __init__(self, value: object, path: str = "") -> None:
        self.value = value
        self.path = path

    def error(self, message: str) -> OciConfigError:
        where = f"{self.path}: " if self.path else ""
        return OciConfigError(f"config.json: {where}{message}")

    def unsupported(self, why: str) -> OciConfigError:
        return self.error(f"not supported: {why}")

    def member_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def members(self, known: Collection[str]) -> dict[str, Field]:
        """An object's members that are present and not null.  An unknown one is an error."""
        if not isinstance(self.value, dict):
            raise self.error(f"must be an object, not {_kind(self.value)}")
        found: dict[str, Field] = {}
        for name, value in self.value.items():
            member = Field(value, self.member_path(name))
            if name not in known:
                raise member.error(UNKNOWN_FIELD)
            if value is not None:
                found[name] = member
        return found

    def require(self, members: dict[str, Field], name: str) -> Field:
        """``members[name]``, or an error naming the missing field."""
        try:
            return members[name]
        except KeyError:
            raise Field(None, self.member_path(name)).error("missing (it is required)") from None

    def items(self) -> list[Field]:
        if not isinstance(self.value, list):
            raise self.error(f"must be a list, not {_kind(self.value)}")
        return [Field(value, f"{self.path}[{i}]") for i, value in enumerate(self.value)]

    def string(self) -> str:
        if not isinstance(self.value, str):
            raise self.error(f"must be a string, not {_kind(self.value)}")
        return self.value

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"must be true or false, not {_kind(self.value)}")
        return self.value

    def integer(self, low: int, high: int) -> int:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be a whole number, not {_kind(value)}")
        if not low <= value <= high:
            raise self.error(f"{value} is out of range {low}..{high}")
        return value

    def strings(self) -> list[str]:
        return [item.string() for item in self.items()]


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
