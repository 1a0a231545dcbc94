"""Parse one small, untrusted annotation XML file safely.

The parser never resolves entities, never loads a DTD and never touches the network; on top of
that any document that declares a DOCTYPE (internal or external DTD, entity definitions) is
refused outright: ILSVRC/VOC annotations never need one, and refusing it stops external-entity
(XXE) reads and entity-expansion ("billion laughs") attacks before the parser sees them.
"""

from __future__ import annotations

import os
from pathlib import Path

from lxml import etree

MAX_XML_BYTES = 4 * 1024 * 1024
"""Largest annotation file accepted (a real ILSVRC XML is about 1 KB, 100 objects about 30 KB)."""

DTD_REFUSED = "XML declares a DTD/entities; refused"


class XMLRefused(ValueError):
    """The file is not a usable annotation XML (empty, too large, malformed, declares a DTD)."""


def make_parser() -> etree.XMLParser:
    """A parser that resolves nothing: no entities, no DTD, no network, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


def read_xml(path: Path, parser: etree.XMLParser,
             max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Read and parse ``path``; its root element, or ``XMLRefused`` saying why not."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(min(size, max_bytes) + 1)  # +1: notice a file that grew past the limit
    if len(data) > max_bytes:
        raise XMLRefused(f"XML file is larger than {max_bytes} bytes; refused")
    return parse_xml(data, parser)


def parse_xml(data: bytes, parser: etree.XMLParser) -> etree._Element:
    """Parse annotation bytes; ``XMLRefused`` for empty, malformed or DTD-declaring documents."""
    if not data.strip():
        raise XMLRefused("empty XML file")
    # Fast refusal before parsing (covers ASCII/UTF-8 documents); the docinfo check below
    # covers the other encodings, which the non-resolving parser has read harmlessly.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XMLRefused(DTD_REFUSED)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise XMLRefused(f"malformed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XMLRefused(DTD_REFUSED)
    return root
