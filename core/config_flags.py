"""Config as code: a dataclass whose fields carry their flag, so each option is written once.

A job's options are the fields of one typed config (e.g. model/train_config.TrainConfig).
Each field made with `option` carries its default, its help text, its flag's checks
(choices, bounds) and its role for quantization-aware training; from them come:

- the job's absl flags (`define_flags`), with the field's name, default and help;
- the config a job hands its library (`from_flags`);
- which options make a run's recipe (`names(cls, qat="recipe")`);
- the rows of BUILD.md's flag tables (`markdown_rows`), which a test compares.

TensorFlow-free (absl only): jobs define and check their flags before TensorFlow loads.
"""
import dataclasses
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import flags

# What a QAT run (cxr-train --qat --init_from) does with an option:
RECIPE = "recipe"  # takes the float run's value; passing the flag is refused
REFUSED = "refused"  # not for a QAT run (passing the flag is refused)


def option(default: Any = dataclasses.MISSING, *, help: str,  # pylint: disable=redefined-builtin
           default_factory: Any = dataclasses.MISSING, qat: Optional[str] = None,
           flag: bool = True, doc: Optional[str] = None, identity: bool = True,
           parse: Optional[Callable[[Any], Any]] = None, **flag_args: Any) -> Any:
  """A config field that is also a command-line flag.

  Args:
    default: the field's and the flag's default.
    help: the flag's help text (one or two sentences, why as well as what).
    default_factory: for mutable defaults, as dataclasses.field.
    qat: RECIPE, REFUSED or None (an ordinary option).
    flag: False for a field that is not a flag itself (built from other flags).
    doc: BUILD.md's wording where it says more than the help (default: the help).
    identity: False for an option that does not change what a run computes (where it
      writes, how it is fed): a rerun may differ in it and still be the same run.
    parse: the flag is then text (a tuple default is written comma-separated), which this
      turns into the field's value; its ValueError is the flag's error message.
    **flag_args: the flag's checks: `choices` (an enum; a callable is called when the
      flag is defined), `lower_bound`, `upper_bound`.
  """
  metadata = {"help": help, "qat": qat, "flag": flag, "doc": doc, "identity": identity,
              "parse": parse, "flag_args": flag_args}
  if default_factory is not dataclasses.MISSING:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def options(cls: type) -> List[dataclasses.Field]:
  """The fields of `cls` that are options (made with `option`), in declaration order."""
  return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _flags(cls: type, qat: Optional[str] = None) -> List[dataclasses.Field]:
  """The options of `cls` that are flags; with `qat`, only those with that QAT role."""
  return [f for f in options(cls)
          if f.metadata["flag"] and (qat is None or f.metadata["qat"] == qat)]


def default(field: dataclasses.Field) -> Any:
  if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
    return field.default_factory()  # type: ignore[misc]
  return None if field.default is dataclasses.MISSING else field.default


def names(cls: type, qat: Optional[str] = None) -> Sequence[str]:
  """The options' names; with `qat`, only those with that QAT role."""
  return tuple(f.name for f in options(cls) if qat is None or f.metadata["qat"] == qat)


def _kind(cls: type, field: dataclasses.Field) -> type:
  hint = typing.get_type_hints(cls)[field.name]
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) is typing.Union and len(args) == 1:
    hint = args[0]  # Optional[X] -> X
  return typing.get_origin(hint) or hint


def define_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS,
                 required: Sequence[str] = ()) -> None:
  """Defines one absl flag per option of `cls` (in the calling job's module)."""
  module = _caller_module()
  for f in _flags(cls):
    kind, args = _kind(cls, f), dict(f.metadata["flag_args"])
    value = None if f.name in required else default(f)
    common = dict(name=f.name, default=value, help=f.metadata["help"],
                  flag_values=flag_values, module_name=module)
    if "choices" in args:
      choices = args.pop("choices")
      flags.DEFINE_enum(enum_values=list(choices() if callable(choices) else choices),
                        **common, **args)
    elif kind is bool:
      flags.DEFINE_bool(**common)
    elif kind is int:
      flags.DEFINE_integer(**common, **args)
    elif kind is float:
      flags.DEFINE_float(**common, **args)
    elif f.metadata["parse"] is not None:  # a text flag the option parses
      text = None if value is None else ",".join(str(v) for v in value)
      flags.DEFINE_string(**dict(common, default=text), **args)
    elif kind in (tuple, list):
      flags.DEFINE_list(**dict(common, default=None if value is None else
                               [str(v) for v in value]), **args)
    else:
      flags.DEFINE_string(**common, **args)
    if f.metadata["parse"] is not None:
      flags.register_validator(f.name, _parses(f.name, f.metadata["parse"]),
                               flag_values=flag_values)


def _parses(name: str, parse: Callable[[Any], Any]) -> Callable[[Any], bool]:
  def valid(value: Any) -> bool:
    try:
      parse(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True
  return valid


def _caller_module() -> str:
  """The module calling define_flags, named as absl names it (a script by its path)."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  name = frame.f_globals.get("__name__", "__main__")
  return sys.argv[0] if name == "__main__" else name


def from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> Dict[str, Any]:
  """The flag values of `cls`'s options, as keyword arguments for `cls` (lists as tuples)."""
  values = {}
  for f in _flags(cls):
    value = flag_values[f.name].value
    if f.metadata["parse"] is not None and value is not None:
      value = f.metadata["parse"](value)
    values[f.name] = tuple(value) if isinstance(value, list) else value
  return values


def present(cls: type, qat_roles: Sequence[str],
            flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """The flags given on the command line whose option has one of `qat_roles`."""
  return [f"--{f.name}" for f in _flags(cls)
          if f.metadata["qat"] in qat_roles and flag_values[f.name].present]


def markdown_rows(cls: type, required: Sequence[str] = ()) -> List[str]:
  """BUILD.md's flag-table rows for `cls`: | `--name` | default | meaning |."""
  rows = []
  for f in _flags(cls):
    value = default(f)
    if f.name in required:
      shown = "required"
    elif value is None:
      shown = "unset"
    elif value == ():
      shown = "empty"
    elif isinstance(value, (tuple, list)):
      shown = f"`{','.join(str(v) for v in value)}`"
    else:
      shown = f"`{value}`"
    rows.append(f"| `--{f.name}` | {shown} | {f.metadata['doc'] or f.metadata['help']} |")
  return rows


def markdown_table(classes: Sequence[type], required: Sequence[str] = ()) -> str:
  """BUILD.md's flag table for a job whose flags are the options of `classes`."""
  rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
  for cls in classes:
    rows += markdown_rows(cls, required)
  recipe, refused = ([f"`--{f.name}`" for cls in classes for f in _flags(cls, role)]
                     for role in (RECIPE, REFUSED))
  if recipe:
    rows += ["", f"The recipe, which a `--qat` run takes from its float run (passing one of "
             f"these flags with `--qat` is refused, as is {', '.join(refused) or 'nothing else'}): "
             + ", ".join(recipe) + "."]
  return "\n".join(rows)
