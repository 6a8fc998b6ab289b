"""Screenshot the MLflow UI as a person sees it (the assistant panel closed), for reports/.

    pip install playwright          # a separate venv is fine; it drives the system Chromium
    mqvq ui ablation-mask --port 5078 &
    python tools/ui-screenshot.py "URL that mqvq ui printed" reports/smoke/mlflow-ui-runs.png [--size 1400x720]
    python tools/ui-screenshot.py URL out.png --click Datasets --click "procedural train" --press Escape   # a filter chosen

`--click TEXT` (repeatable) clicks the first visible element showing exactly TEXT (else titled TEXT),
in order, before the screenshot: a dropdown, then the entry in it.
"""

import argparse

from playwright.sync_api import sync_playwright


def main(
    url: str,
    out: str,
    width: int = 1400,
    height: int = 720,
    clicks: tuple[str, ...] = (),
    keys: tuple[str, ...] = (),
    chromium: str = "/usr/bin/chromium",
) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_timeout(6000)  # the runs table loads after the page
        close = page.locator("[aria-label='Close']")  # the assistant panel opens itself on a first visit
        for i in range(close.count()):
            try:
                close.nth(i).click(timeout=1000)
            except Exception:  # noqa: BLE001  (a button that went away meanwhile)
                pass
        for text in clicks:
            target = page.get_by_text(text, exact=True).locator("visible=true")
            if target.count() == 0:  # a list entry whose text is split (a name and its digest) is titled by its name
                target = page.get_by_title(text, exact=True).locator("visible=true")
            target.first.click(timeout=10000)
            page.wait_for_timeout(2000)
        for key in keys:
            page.keyboard.press(key)
        page.mouse.move(0, height - 1)  # no hover tooltip in the picture
        page.wait_for_timeout(1500)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--size", default="1400x720", help="WIDTHxHEIGHT of the window")
    ap.add_argument(
        "--click", action="append", default=[], help="text of an element to click first (repeatable, in order)"
    )
    ap.add_argument(
        "--press", action="append", default=[], help="a key to press after the clicks, e.g. Escape to close a dropdown"
    )
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    main(a.url, a.out, w, h, tuple(a.click), tuple(a.press))
