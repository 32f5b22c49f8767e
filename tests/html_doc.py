"""A small HTML reader for tests that check a page's structure without a browser (headings,
labels, `lang`, ARIA references): the standard library's parser turned into a tree."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = frozenset(
    "area base br col embed hr img input link meta source track wbr".split()  # noqa: SIM905
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element | str] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def iter(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.iter()
            if (tag is None or e.tag == tag) and all(e.get(k) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, **attrs: str) -> Element | None:
        found = self.find_all(tag, **attrs)
        return found[0] if found else None

    @property
    def text(self) -> str:
        parts: list[str] = []
        for child in self.children:
            parts.append(child if isinstance(child, str) else child.text)
        return re.sub(r"\s+", " ", "".join(parts)).strip()

    def ancestors(self) -> Iterator[Element]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


class Document:
    def __init__(self, html: str) -> None:
        builder = _Builder()
        builder.feed(html)
        builder.close()
        self.root = builder.root

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return self.root.find_all(tag, **attrs)

    def find(self, tag: str | None = None, **attrs: str) -> Element | None:
        return self.root.find(tag, **attrs)

    def by_id(self, id_: str) -> Element | None:
        return self.root.find(id=id_)

    @property
    def lang(self) -> str | None:
        html = self.find("html")
        return html.get("lang") if html else None

    @property
    def title(self) -> str:
        title = self.find("title")
        return title.text if title else ""

    def described_by(self, element: Element) -> str:
        """The text of every element that `element`'s aria-describedby names."""
        ids = (element.get("aria-describedby") or "").split()
        return " ".join(self.by_id(i).text for i in ids if self.by_id(i) is not None)

    def label_of(self, control: Element) -> str:
        """A form control's label: <label for>, an enclosing <label>, or aria-label(ledby)."""
        if control.get("aria-label"):
            return control.get("aria-label") or ""
        if control.get("aria-labelledby"):
            return " ".join(
                self.by_id(i).text  # type: ignore[union-attr]
                for i in (control.get("aria-labelledby") or "").split()
                if self.by_id(i) is not None
            )
        if control.get("id"):
            label = self.find("label", **{"for": control.get("id") or ""})
            if label is not None:
                return label.text
        for ancestor in control.ancestors():
            if ancestor.tag == "label":
                return ancestor.text
        return ""
