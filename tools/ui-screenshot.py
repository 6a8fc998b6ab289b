"""Screenshot the MLflow UI as a person sees it (the assistant panel closed), for reports/.

    pip install playwright          # a separate venv is fine; it drives the system Chromium
    mqvq ui ablation-mask --port 5078 &
    python tools/ui-screenshot.py "URL that mqvq ui printed" reports/smoke/mlflow-ui-runs.png [WIDTH HEIGHT]
"""
import sys

from playwright.sync_api import sync_playwright


def main(url: str, out: str, width: int = 1400, height: int = 720, chromium: str = "/usr/bin/chromium") -> None:
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
        page.wait_for_timeout(1500)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 5):
        sys.exit("usage: python tools/ui-screenshot.py URL OUT.png [WIDTH HEIGHT]")
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5]))
