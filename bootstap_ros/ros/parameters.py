"""What the nodes' parameter tables share (`settings.py` for the tracker, `adapter_settings.py`
for the adapter): a parameter's spec, the config checked from the values ROS gives back, and the
declaration of a table on a node. rclpy is imported only by `declare_parameters`, which only a
node calls.
"""

from __future__ import annotations

import array
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Type, TypeVar

Config = TypeVar("Config")

RELIABILITIES = ("best_effort", "reliable", "system_default")
TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class ParameterSpec:
    name: str  # the ROS parameter name
    field: str  # the config field it fills
    description: str
    read_only: bool = True  # changing it needs a restart
    swap: bool = False  # a change loads a new model in the background and swaps it in
    choices: Optional[Sequence[str]] = None
    integer_range: Optional[Tuple[int, int]] = None
    integer_step: int = 0  # 0: any integer in the range
    float_range: Optional[Tuple[float, float]] = None
    dynamic_typing: bool = False
    default: Any = None  # the config's default; parameter_table fills it in

    def __post_init__(self):
        if self.swap and self.read_only:
            raise ValueError(f"parameter {self.name}: a swap parameter changes at runtime")

    @property
    def constraints(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.integer_range:
            return f"integer in [{self.integer_range[0]}, {self.integer_range[1]}]"
        if self.float_range:
            return f"number in [{self.float_range[0]}, {self.float_range[1]}]"
        return ""


def parameter_table(config_cls: Type[Config], *specs: ParameterSpec) -> Tuple[ParameterSpec, ...]:
    """`specs` with each one's default read from `config_cls`, so that the defaults live in one
    place; a spec naming no field of it is a programming error and raises at import."""
    defaults = config_cls()
    fields = {f.name for f in dataclasses.fields(config_cls)}
    missing = [spec.name for spec in specs if spec.field not in fields]
    if missing:
        raise TypeError(f"{config_cls.__name__} has no field for the parameters {missing}")
    return tuple(dataclasses.replace(spec, default=getattr(defaults, spec.field)) for spec in specs)


def config_from_values(values: Dict[str, Any], specs: Sequence[ParameterSpec], config_cls: Type[Config],
                       error_cls: Type[Exception]) -> Config:
    """A `config_cls` holding `values` ({parameter name: value}; a parameter not in it keeps its
    default), once each choice parameter's value is one of its choices (else `error_cls`).
    Ranges and types are ROS's to check (the descriptor); checks across fields are the caller's."""
    changes = {}
    for spec in specs:
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.choices and value not in spec.choices:
            raise error_cls(f"parameter {spec.name}={value!r} is not {spec.constraints}")
        changes[spec.field] = value
    return dataclasses.replace(config_cls(), **changes)


def plain_value(value: Any) -> Any:
    """A parameter's value as the configs hold it: ROS gives integer and double arrays back as
    array.array (or tuples); they become lists, anything else stays as it is."""
    return list(value) if isinstance(value, (array.array, list, tuple)) else value


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number with a decimal point (1.0, not 1)",
             str: "a string"}


def declare_parameters(node, specs: Sequence[ParameterSpec], error_cls: Type[Exception]) -> Dict[str, Any]:
    """Declares `specs` on `node` (description, read-only, range, choices in the constraints) and
    returns {name: value} as ROS resolved them (overrides, YAML), arrays as lists. A value of the
    wrong type or out of range raises `error_cls` saying what the parameter expects."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(
            description=spec.description, read_only=spec.read_only,
            additional_constraints=spec.constraints, dynamic_typing=spec.dynamic_typing)
        if spec.integer_range:
            descriptor.integer_range = [IntegerRange(
                from_value=spec.integer_range[0], to_value=spec.integer_range[1], step=spec.integer_step)]
        if spec.float_range:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.float_range[0]), to_value=float(spec.float_range[1]), step=0.0)]
        try:
            value = node.declare_parameter(spec.name, spec.default, descriptor).value
        except Exception as error:  # rclpy's type/range exceptions have no common base
            expected = _EXPECTED.get(type(spec.default), "a list of integers")
            raise error_cls(f"parameter {spec.name}: {error}. Expected {expected}"
                            f"{' (' + spec.constraints + ')' if spec.constraints else ''}") from None
        values[spec.name] = plain_value(value)
    return values
