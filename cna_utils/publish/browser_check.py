"""Open the built book in headless Chromium, as a reader would, and check every page.

Usage::

    python -m cna_utils.publish.browser_check _build/html              # screenshots in _build/screenshots

For the intro, every chapter and the generated pages, Chromium loads the page from disk, runs its
scripts and dumps the resulting DOM; the check fails on a page that does not load, an image that
does not exist, a Python traceback in the text, markdown table syntax left unrendered, a table
pandas truncated, math that MathJax did not typeset (the book ships MathJax: it must render offline),
an image with neither alt text nor a caption, or a link to a page or section of the book that does
not exist. It saves a screenshot of each page. Chromium is
Debian's ``chromium`` package; when it is missing the check installs it with apt-get (as root, or
through sudo) and says what to do if that is not possible.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["find_chromium", "pages", "check_page", "text_problems", "math_problems", "link_problems",
           "image_text_problems", "without_scripts", "page_height", "screenshot", "main"]

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(install: bool = True) -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` when none is found."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    if not install:
        raise FileNotFoundError("Chromium not found")
    apt = shutil.which("apt-get")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is None or prefix is None:
        raise FileNotFoundError(
            "Chromium is not installed and cannot be installed here (needs apt-get and root). Install it "
            "yourself (Debian/Ubuntu: `sudo apt-get install chromium`) or put a Chromium or Chrome binary on PATH.")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(prefix + [apt, "update", "-qq"], check=True, env=env)
    subprocess.run(prefix + [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"], check=True, env=env)
    return find_chromium(install=False)


def pages(html_dir: Path) -> list[Path]:
    """The pages a reader opens: the intro, every chapter and the generated pages."""
    found = [html_dir / "book" / "intro.html"]
    found += sorted((html_dir / "book" / "chapters").rglob("*.html"))        # appendix runs sit in subfolders
    found += sorted((html_dir / "book" / "_generated").glob("*.html"))
    return found


def shot_name(html_dir: Path, page: Path) -> str:
    """The screenshot's name: the page's path under book/, folders joined by "-" (chapters/second/01_x -> second-01_x)."""
    rel = page.relative_to(html_dir / "book").with_suffix("")
    return "-".join(rel.parts[1:] if rel.parts[0] in ("chapters", "_generated") else rel.parts)


WIDTH = 1280          # screenshot width (px): a laptop window
MAX_HEIGHT = 32000    # the tallest screenshot taken (px); a taller page is cut there, and said so


def _chromium(binary: str, *args: str, timeout: int = 120, tries: int = 2) -> subprocess.CompletedProcess:
    """Run headless Chromium once with ``args``. Chromium now and then hangs after its work is done
    (more often on a loaded machine): a run past ``timeout`` seconds is killed with all its child
    processes and run again, up to ``tries`` times; the last one's timeout is returned as exit code
    124 with what it printed, so the caller reports it as a problem of the page."""
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000"]
    for attempt in range(tries):
        proc = subprocess.Popen(base + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, 124, out or "",
                                       (err or "") + f"\nChromium did not finish in {timeout} s, {tries} times")


def text_problems(dom: str) -> list[str]:
    """Defects a reader sees in a page's rendered text (code blocks left out): markdown table
    syntax that was not rendered as a table, and a table pandas truncated."""
    prose = re.sub(r"<(pre|code)\b.*?</\1>", " ", dom, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", prose))
    found = []
    if re.search(r"\|\s*:?-{3,}:?\s*\|", text):
        found.append("raw markdown table syntax (|---|) in the text: a markdown output was not rendered")
    m = re.search(r"\d+ rows × \d+ columns", text)
    if m and re.search(r"<td>\s*(\.\.\.|…)\s*</td>", prose):
        found.append(f"a truncated table ({m.group(0)}): set pandas display options")
    return found


def image_text_problems(dom: str) -> list[str]:
    """Images a reader who cannot see them learns nothing from: no alt text, and no caption."""
    found = []
    for m in re.finditer(r"<img\b[^>]*>", dom):
        tag = m.group(0)
        alt = re.search(r"\balt=\"([^\"]*)\"", tag)
        if alt and alt.group(1).strip():
            continue
        start = dom.rfind("<figure", 0, m.start())
        inside = start >= 0 and dom.rfind("</figure>", 0, m.start()) < start and \
            "<figcaption" in dom[m.end():dom.find("</figure>", m.end())]
        if not inside:
            src = re.search(r"\bsrc=\"([^\"]{0,60})", tag)
            found.append(f"an image without alt text or caption ({src.group(1) if src else tag[:60]})")
    return found


def math_problems(dom: str) -> list[str]:
    """Math the page has (Sphinx marks it class="math") that MathJax did not typeset (no mjx-container)."""
    n_math = len(re.findall(r"class=\"math[ \"]", dom))
    if n_math and "<mjx-container" not in dom:
        return [f"{n_math} math elements not typeset: MathJax did not run (is _static/mathjax in the build?)"]
    return []


def without_scripts(dom: str) -> str:
    """The page's markup with the bodies of <script> and <style> elements left out: code such as the
    inline plotly.js holds strings that look like tags and links but are not part of the page."""
    return re.sub(r"<(script|style)\b.*?</\1\s*>", " ", dom, flags=re.S | re.I)


def link_problems(dom: str, page: Path) -> list[str]:
    """Links to files of the build that do not exist, or to a section id their page does not have
    (links written inside scripts are not links of the page and are skipped)."""
    found = []
    for href in sorted(set(re.findall(r"<a\b[^>]*\bhref=\"([^\"]+)\"", without_scripts(dom)))):
        parsed = urlparse(html.unescape(href))
        if parsed.scheme or href.startswith(("//", "mailto:", "javascript:")):
            continue
        target = (page.parent / unquote(parsed.path)).resolve() if parsed.path else page.resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            found.append(f"link {href}: {target.name} is not in the build")
        elif parsed.fragment and target.suffix == ".html" and \
                not re.search(rf"\bid=\"{re.escape(unquote(parsed.fragment))}\"", target.read_text(errors="replace")):
            found.append(f"link {href}: no section #{parsed.fragment} on {target.name}")
    return found


# Written into the probe copy's title once the page and its math have settled: the document's height
# and the code blocks (cells' code and printed output) wider than the column they sit in.
_PROBE = ("<script>window.addEventListener('load', () => setTimeout(() => {"
          "const cut = [...document.querySelectorAll('div.cell_input pre, div.cell_output pre, div.highlight pre')]"
          ".filter(e => e.scrollWidth > e.clientWidth + 1)"
          ".map(e => e.textContent.split('\\n').sort((a, b) => b.length - a.length)[0].slice(0, 60));"
          "document.title = 'page-height:' + document.documentElement.scrollHeight + ';cut:' + JSON.stringify(cut);"
          "}, 2000));</script>")


def page_layout(binary: str, page: Path, width: int = WIDTH) -> tuple[int | None, list[str] | None]:
    """The rendered height (px) of ``page`` at ``width`` and the start of the longest line of each
    code block cut at the column's edge, read by loading a copy of the page (beside it, so that its
    links resolve) with one added script. (None, None) when they cannot be read."""
    probe = page.with_name(f".height-probe-{page.name}")
    probe.write_text(page.read_text(errors="replace").replace("</body>", _PROBE + "</body>", 1))
    try:
        dom = _chromium(binary, f"--window-size={width},1000", "--dump-dom", probe.resolve().as_uri()).stdout
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r"page-height:(\d+);cut:(\[.*?\])</title>", dom, flags=re.S)
    if not m:
        return None, None
    return int(m.group(1)), json.loads(html.unescape(m.group(2)))


def page_height(binary: str, page: Path, width: int = WIDTH) -> int | None:
    """The rendered height (px) of ``page`` at ``width`` (``page_layout``); None when it cannot be read."""
    return page_layout(binary, page, width)[0]


def screenshot(binary: str, page: Path, shot: Path, width: int = WIDTH, height: int | None = None,
               dark: bool = False) -> tuple[int, int]:
    """A full-height screenshot of ``page`` (cut at MAX_HEIGHT) into ``shot``, in the dark mode with
    ``dark`` (the theme follows the browser's preference); returns (width, height)."""
    height = min(height or page_height(binary, page, width) or 2400, MAX_HEIGHT)
    shot.parent.mkdir(parents=True, exist_ok=True)
    run = _chromium(binary, *(["--force-dark-mode"] if dark else []), f"--screenshot={shot.resolve()}",
                    f"--window-size={width},{height}", page.resolve().as_uri())
    if run.returncode == 124:
        shot.unlink(missing_ok=True)      # a hung run may have left a partial file
    return width, height


def check_page(binary: str, page: Path, shot: Path, dark: bool = False) -> list[str]:
    """Problems found on one page (empty list: the page is fine); ``dark``: a second screenshot in
    the dark mode beside the first (``NAME-dark.png``)."""
    if not page.exists():
        return [f"{page}: page missing from the build"]
    url = page.resolve().as_uri()
    run = _chromium(binary, "--dump-dom", url)
    dom = run.stdout
    problems = []
    if run.returncode != 0 or "<body" not in dom:
        return [f"{page.name}: Chromium could not load it (exit {run.returncode}): {run.stderr.strip()[-300:]}"]
    dom = without_scripts(dom)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    if "Traceback (most recent call last)" in text or re.search(r"\b\w+Error\s*Traceback", text):
        problems.append(f"{page.name}: a Python traceback is in the page")
    problems += [f"{page.name}: {p}" for p in text_problems(dom) + math_problems(dom) + link_problems(dom, page)]
    problems += [f"{page.name}: {p}" for p in image_text_problems(dom)]
    for src in re.findall(r"<img[^>]+src=\"([^\"]+)\"", dom):
        if src.startswith(("data:", "http://", "https://")):
            continue
        target = (page.parent / unquote(urlparse(src).path)).resolve()
        if not target.exists() or target.stat().st_size == 0:
            problems.append(f"{page.name}: image {src} does not exist")
    measured, cut = page_layout(binary, page)
    problems += [f"{page.name}: a code block is cut at the column's edge: {line!r}" for line in cut or []]
    _, height = screenshot(binary, page, shot, height=measured)
    if not shot.exists() or shot.stat().st_size == 0:
        problems.append(f"{page.name}: no screenshot could be taken")
    elif height >= MAX_HEIGHT:
        print(f"    {page.name}: taller than {MAX_HEIGHT} px, the screenshot shows its top {MAX_HEIGHT} px", flush=True)
    if dark:
        screenshot(binary, page, shot.with_name(shot.stem + "-dark.png"), height=measured, dark=True)
    return problems


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG file's header."""
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", nargs="?", default="_build/html")
    ap.add_argument("--screenshots", default=None, help="folder for the screenshots (default: <html_dir>/../screenshots)")
    ap.add_argument("--dark", action="store_true", help="also a screenshot of every page in the dark mode (NAME-dark.png)")
    args = ap.parse_args(argv)
    html_dir = Path(args.html_dir)
    shots = Path(args.screenshots) if args.screenshots else html_dir.parent / "screenshots"
    if not (html_dir / "index.html").exists():
        print(f"no built book at {html_dir}: run `make book` first", file=sys.stderr)
        return 2
    binary = find_chromium()
    todo = pages(html_dir)
    problems = []
    for page in todo:
        shot = shots / (shot_name(html_dir, page) + ".png")
        found = check_page(binary, page, shot, dark=args.dark)
        size = " ({}x{} px)".format(*_png_size(shot)) if shot.exists() else ""
        print(f"{'ok ' if not found else 'BAD'} {page.relative_to(html_dir)}{size}", flush=True)
        problems += found
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{len(todo)} pages load in Chromium with every image, no traceback and no code cut at the column's "
          f"edge; screenshots{' (light and dark)' if args.dark else ''} in {shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
