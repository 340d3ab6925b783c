"""Kernel configurations from command-line text: 'block_v=32,split_o=true' -> KernelConfig(block_v=32, ...)."""

from __future__ import annotations

import dataclasses


def _value(name: str, raw: str, default, flag: str):
  if raw.lower() == 'none':
    return None
  if isinstance(default, bool):
    if raw.lower() not in ('1', '0', 'true', 'false', 'yes', 'no'):
      raise SystemExit(f'{flag}: {name} takes true or false; got {raw!r}')
    return raw.lower() in ('1', 'true', 'yes')
  try:
    return int(raw) if default is None or isinstance(default, int) else type(default)(raw)
  except ValueError:
    raise SystemExit(f'{flag}: {name}={raw!r} is not a {type(default).__name__}') from None


def parse_config(cls, text: str | None, flag: str = '--config'):
  """cls (a frozen KernelConfig dataclass) with the comma-separated field=value overrides in text; None for
  empty text. Unknown fields and malformed values end the program with a message naming them."""
  if not text:
    return None
  fields = {f.name for f in dataclasses.fields(cls)}
  base = cls()
  values = {}
  for item in text.split(','):
    name, eq, raw = item.partition('=')
    if name not in fields or not eq:
      raise SystemExit(f'{flag}: {cls.__module__}.{cls.__name__} has no field {name!r} (write field=value); '
                       f'fields: {", ".join(sorted(fields))}')
    values[name] = _value(name, raw, getattr(base, name), flag)
  return dataclasses.replace(base, **values)
