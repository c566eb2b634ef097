"""A real headless Chromium (Debian's `chromium`) for tests that check what a person sees,
and a small reader for the DOM it dumps: the text of table rows and the links."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# As the machine notes say: no sandbox (root in CI), nothing that reaches the network on its own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium is required: apt-get install chromium (.ci/run installs it)")
    return found


def _run(profile: Path, *args: str) -> str:
    profile.mkdir(parents=True, exist_ok=False)  # a new empty profile for every page load
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page loaded, serialized by the browser."""
    return _run(profile, "--dump-dom", url)


def screenshot(url: str, profile: Path, path: Path, size: str = "1500,900") -> None:
    _run(profile, f"--screenshot={path}", f"--window-size={size}", "--hide-scrollbars", url)
    assert path.stat().st_size > 10_000, "the screenshot is (nearly) empty"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)
    """(text, href) of every link inside."""


class Page(HTMLParser):
    """What a DOM dump shows: rows (`tr`), links and every element with an id, with their text."""

    def __init__(self, dom: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self._link: list[str] | None = None
        self.feed(dom)

    _VOID = frozenset({"br", "img", "input", "meta", "link", "hr", "col", "source", "wbr"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag == "a":
            self._link = [element.attrs.get("href", ""), ""]
        if tag not in self._VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            for element in self._open:
                element.links.append((self._link[1].strip(), self._link[0]))
            self._link = None
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data
        if self._link is not None:
            self._link[1] += data

    def find(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Element:
        [element] = [e for e in self.elements if e.attrs.get("id") == element_id]
        return element


def text(element: Element) -> str:
    return " ".join(element.text.split())
