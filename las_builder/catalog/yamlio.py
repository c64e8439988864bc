"""The YAML loader of hand-edited files: catalog legends, mappings, the taxonomy and recipes.

A safe loader (libyaml's where PyYAML has it, so no tag can build a Python object) that also
turns two quiet surprises of plain YAML into errors with a line number:

* a key repeated in one mapping: PyYAML keeps the last one silently, so a second ``labels:``
  section or a copy-pasted ``10: trees`` would replace the first without a word. Keys merged in
  with ``<<: *anchor`` may still be overridden, as YAML intends;
* an impossible date such as ``2021-02-30``: PyYAML's date constructor raises a bare
  ``ValueError`` that callers expecting ``yaml.YAMLError`` let escape as a traceback;
* an integer that YAML 1.1 (PyYAML) and YAML 1.2 read differently: ``010`` is octal 8 to one
  and 10 to the other, ``1:30`` is 90 (base 60) to one and text to the other. A zero-padded
  legend code or mapping key would silently become another class.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from las_builder._yaml import SafeLoader
from las_builder.security import check_yaml_node, check_yaml_text

__all__ = ["StrictLoader", "load_yaml", "yaml_error_text"]

_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_INT = "tag:yaml.org,2002:int"
_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")


class StrictLoader(SafeLoader):
    """A safe loader that refuses repeated mapping keys, impossible dates and alias bombs."""

    def get_single_node(self) -> Any:  # noqa: D102 - checked before anything walks the data
        node = super().get_single_node()
        check_yaml_node(node)
        return node


def _construct_unique(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Only the keys written in this mapping count: merged keys (<<) may be overridden.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
        except TypeError:  # an unhashable key fails in construct_mapping with its own message
            continue
        if repeated:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"key {key!r} is repeated (YAML would keep only the last one silently)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except ValueError as err:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.value!r} looks like a date but is not one ({err}); write a real date "
            "YYYY-MM-DD, or quote the text",
            node.start_mark,
        ) from None


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    value = yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)
    text = str(node.value)
    digits = text.replace("_", "")
    if ":" in text:
        problem = "YAML 1.1 reads it in base 60, YAML 1.2 as text: quote it, or write"
    elif _OCTAL.match(text) and int(digits, 10) != value:
        problem = f"YAML 1.1 reads a leading 0 as octal, YAML 1.2 as {int(digits, 10)}: write"
    else:
        return value
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"{text!r} is ambiguous ({problem} the number in base 10 without leading zeros)",
        node.start_mark,
    )


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)
StrictLoader.add_constructor(_INT, _construct_int)
StrictLoader.add_constructor(_TIMESTAMP, _construct_timestamp)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`StrictLoader`.

    Raises:
        yaml.YAMLError: The text is not valid YAML, repeats a key or holds an impossible date;
            the message gives the line and column.

    """
    check_yaml_text(text)
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_error_text(err: yaml.YAMLError) -> str:
    """The message of a YAML error, its positions written ``line L, column C``.

    Text parsed from a string is named ``"<unicode string>"`` by PyYAML; callers name the
    file themselves.
    """
    return str(err).replace('in "<unicode string>", line', "at line")
