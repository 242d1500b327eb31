"""Records: small value classes, declared like dataclasses, without their start-up cost.

Vortex's specs, setup operations, security policy, cgroup limits and results are
value classes: fields with defaults, a readable ``repr``, equality, most of them
immutable. :func:`dataclasses.dataclass` would do, but a cold ``vortex run`` defines
about 25 of them before the container starts, and ``dataclasses`` writes the
``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and
``__delattr__`` of every class as source text and compiles it with ``exec`` (0.6 ms
per frozen class here), after importing ``inspect`` (with ``ast``, ``dis`` and
``tokenize``, ~7 ms). Records instead made a cold start ~20 ms faster, a fifth of
it (docs/performance.md).

A record gets the same behaviour from functions written once in this module: they
read the class's field table (``__record_fields__``) instead of being generated for
it. Constructing a record is a few microseconds slower than a dataclass, which
nothing here notices.

    @record
    class Mount:
        target: str
        options: tuple[str, ...] = ()
        extra: dict[str, str] = field(default_factory=dict)

Differences from ``@dataclass(frozen=True)`` a user may meet: records are not
dataclasses (use :func:`replace`, :func:`fields` and :func:`as_dict` from here), and
there is no ``__post_init__``, ``InitVar``, ``kw_only`` or ordering. Type checkers
see records as dataclasses (:pep:`681`), so constructor calls are checked.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms of a cold start)
if not TYPE_CHECKING:
    # At run time, stand-ins with the same call shapes. Type checkers take any
    # TYPE_CHECKING as true and read the other branch, so they still see
    # ``record`` as a dataclass_transform (PEP 681) and check constructor calls.
    # (This branch comes first so that linters, too, resolve ``overload`` to
    # typing's.)

    def dataclass_transform(**kwargs):
        return lambda decorated: decorated

    def overload(function):
        return function

else:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform, overload

    _T = TypeVar("_T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""No default: the argument is required."""


class FrozenInstanceError(AttributeError):
    """An attempt to change a field of an immutable record."""


class Field:
    """One field of a record: its name, its default (:data:`MISSING` when required)
    or default factory, and its annotation as written in the class (a string
    under ``from __future__ import annotations``)."""

    # Not a NamedTuple: creating one costs as much as the dataclass it replaces.
    __slots__ = ("annotation", "default", "default_factory", "name")

    def __init__(
        self,
        name: str,
        default: Any,
        default_factory: Callable[[], Any] | None,
        annotation: object = None,
    ) -> None:
        self.name = name
        self.default = default
        self.default_factory = default_factory
        self.annotation = annotation

    def __repr__(self) -> str:
        return f"Field({self.name!r}, default={self.default!r})"


class _FieldDefault:
    """What :func:`field` leaves in the class body until :func:`record` reads it."""

    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None) -> None:
        self.default = default
        self.default_factory = default_factory


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None) -> Any:
    """A field's default given as a factory (a new list per record, say)."""
    if default is not MISSING and default_factory is not None:
        raise TypeError("field() takes a default or a default_factory, not both")
    return _FieldDefault(default, default_factory)


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, frozen: bool = True) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T] | None = None, /, *, frozen: bool = True) -> Any:
    """Make ``cls`` a record: ``@record`` (immutable) or ``@record(frozen=False)``."""

    def make(cls: type[_T]) -> type[_T]:
        target: Any = cls  # its methods are assigned here, which type checkers forbid
        table = _collect_fields(cls)
        target.__record_fields__ = table
        target.__match_args__ = tuple(f.name for f in table)  # type: ignore[misc]
        target.__init__ = _init
        target.__signature__ = _SIGNATURE
        if "__repr__" not in cls.__dict__:
            target.__repr__ = _repr
        if "__eq__" not in cls.__dict__:
            target.__eq__ = _eq
        if frozen:
            target.__setattr__ = _refuse_setattr
            target.__delattr__ = _refuse_delattr
            if cls.__dict__.get("__hash__") is None:
                target.__hash__ = _hash
        elif cls.__dict__.get("__hash__") is None:
            target.__hash__ = None  # mutable and comparable: unhashable, as a dataclass
        return cls

    return make if cls is None else make(cls)


def _collect_fields(cls: type) -> tuple[Field, ...]:
    table: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for inherited in getattr(base, "__record_fields__", ()):
            table[inherited.name] = inherited
    # With ``from __future__ import annotations`` (everywhere in Vortex) the
    # annotations are strings; nothing here needs them evaluated. Not
    # inspect.get_annotations: importing inspect is part of what records avoid.
    annotations: dict[str, object] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in annotations.items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        default = cls.__dict__.get(name, MISSING)
        factory = None
        if isinstance(default, _FieldDefault):
            default, factory = default.default, default.default_factory
            if default is MISSING:
                delattr(cls, name)  # no class attribute for a factory-made default
            else:
                setattr(cls, name, default)
        table[name] = Field(name, default, factory, annotation)
    required_after_default = False
    for f in table.values():
        has_default = f.default is not MISSING or f.default_factory is not None
        if required_after_default and not has_default:
            raise TypeError(
                f"{cls.__name__}: field {f.name!r} without a default follows one with a default"
            )
        required_after_default = required_after_default or has_default
    return tuple(table.values())


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    table: tuple[Field, ...] = cls.__record_fields__
    if len(args) > len(table):
        raise TypeError(f"{cls.__name__}() takes {len(table)} arguments, {len(args)} were given")
    for position, f in enumerate(table):
        name, default, factory = f.name, f.default, f.default_factory
        if position < len(args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            value = args[position]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif factory is not None:
            value = factory()
        elif default is not MISSING:
            value = default
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
        object.__setattr__(self, name, value)
    if kwargs:
        raise TypeError(
            f"{cls.__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}"
        )


class _Signature:
    """The constructor's signature for ``inspect.signature`` and ``help()``, built when
    asked: the shared ``__init__`` itself only says ``(*args, **kwargs)``."""

    def __get__(self, obj: object, cls: type) -> Any:
        import inspect  # only for the caller who asks

        if obj is not None:
            raise AttributeError("__signature__")  # an instance is not callable
        parameters = []
        for f in fields(cls):
            default: object
            if f.default_factory is not None:
                default = _FACTORY
            else:
                default = inspect.Parameter.empty if f.default is MISSING else f.default
            parameters.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=default,
                    annotation=f.annotation,
                )
            )
        return inspect.Signature(parameters, return_annotation=None)


class _Factory:
    def __repr__(self) -> str:
        return "<factory>"  # what dataclasses show for a default_factory


_FACTORY = _Factory()
_SIGNATURE = _Signature()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, f.name) for f in self.__record_fields__])


def _repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__record_fields__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to {name!r}: a {type(self).__name__} is immutable")


def _refuse_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete {name!r}: a {type(self).__name__} is immutable")


def is_record(obj: object) -> bool:
    """Whether ``obj`` is a record class or an instance of one."""
    return hasattr(obj, "__record_fields__")


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in declaration order."""
    if not is_record(obj):
        raise TypeError(f"{obj!r} is not a record")
    table: tuple[Field, ...] = obj.__record_fields__  # type: ignore[attr-defined]
    return table


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with the given fields changed."""
    names = {f.name for f in fields(obj)}
    for name in changes:
        if name not in names:
            raise TypeError(f"{type(obj).__name__} has no field {name!r}")
    values = {name: changes[name] if name in changes else getattr(obj, name) for name in names}
    return type(obj)(**values)


def as_dict(obj: object) -> dict[str, Any]:
    """The fields of the record ``obj`` as a dict, one level deep (values are not copied)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
