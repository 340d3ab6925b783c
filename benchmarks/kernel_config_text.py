"""Kernel configurations from command-line text: 'block_v=32,split_o=true' -> KernelConfig(block_v=32, ...)."""

from __future__ import annotations

import dataclasses


def _annotation(field: dataclasses.Field) -> str:
  """The field's annotation as text (annotations are strings under `from __future__ import annotations`)."""
  return field.type if isinstance(field.type, str) else getattr(field.type, '__name__', str(field.type))


def _kind(field: dataclasses.Field, default) -> type:
  """The field's value type: its default's, or for a None default the non-None type of its annotation
  ('str | None' -> str)."""
  if default is not None:
    return type(default)
  annotation = _annotation(field)
  for kind in (bool, int, float, str):
    if kind.__name__ in annotation:
      return kind
  return int


def _value(name: str, raw: str, kind: type, nullable: bool, flag: str):
  if nullable and raw.lower() == 'none':  # where None is a value; elsewhere 'none' is text (a str field's mode)
    return None
  if kind is bool:
    if raw.lower() not in ('1', '0', 'true', 'false', 'yes', 'no'):
      raise SystemExit(f'{flag}: {name} takes true or false; got {raw!r}')
    return raw.lower() in ('1', 'true', 'yes')
  try:
    return kind(raw)
  except ValueError:
    raise SystemExit(f'{flag}: {name}={raw!r} is not a {kind.__name__}') from None


def parse_config(cls, text: str | None, flag: str = '--config'):
  """cls (a frozen KernelConfig dataclass) with the comma-separated field=value overrides in text; None for
  empty text. Unknown fields and malformed values end the program with a message naming them."""
  if not text:
    return None
  fields = {f.name: f for f in dataclasses.fields(cls)}
  base = cls()
  values = {}
  for item in text.split(','):
    name, eq, raw = item.partition('=')
    if name not in fields or not eq:
      raise SystemExit(f'{flag}: {cls.__module__}.{cls.__name__} has no field {name!r} (write field=value); '
                       f'fields: {", ".join(sorted(fields))}')
    values[name] = _value(name, raw, _kind(fields[name], getattr(base, name)), 'None' in _annotation(fields[name]),
                          flag)
  return dataclasses.replace(base, **values)
