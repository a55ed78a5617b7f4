"""Safe YAML reading shared by every CLI: no python/* tags, duplicate keys refused, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, describe


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no python/* tags) that also refuses a mapping key written twice."""


def _unique_key_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """SafeLoader's mapping constructor, refusing a key written twice (plain YAML silently keeps the last)."""
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *defaults" may be overridden by explicit keys, as YAML intends
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: the base constructor reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {key!r}", key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_key_mapping)


def read_yaml(path: str | Path, flag: str) -> Any:
    """Parse a YAML file the user named with ``flag`` (safe_load: no python tags; duplicate keys refused).

    Raises:
        ConfigError: the file is missing, a directory, unreadable, not UTF-8 or not valid YAML (named by ``flag``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory; give the YAML file itself") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {path}: not valid YAML (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read it ({e.strerror or e}); check its permissions") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: python/* tags are refused, never run
    except yaml.YAMLError as e:
        problem = " ".join(e.problem.split()) if getattr(e, "problem", None) else describe(e, 120, with_type=False)
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{flag} {path}: not valid YAML ({problem}{where})") from None
    except (ValueError, RecursionError) as e:  # e.g. a date-like value such as 2024-13-01; absurd nesting
        raise ConfigError(f"{flag} {path}: not valid YAML ({describe(e, with_type=False)})") from None
