"""Screenshots of the Dagster UI as a data team sees it, for docs/ (not a test, not a project dependency).

Playwright drives the system Chromium (`apt-get install chromium`), from its own environment:

    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    DAGSTER_HOME=$OUT/dagster_home EMBED_PIPELINE_ARTIFACTS=$OUT .venv/bin/dagster dev -w workspace.yaml -p 3333 &
    /tmp/pw/bin/python bench/ui_screenshots.py CORPUS_VERSION docs/

where $OUT is a demo's `--out` folder. Dagster's first-visit community dialog is dismissed; a Markdown plot is
opened in its dialog."""

import sys

from playwright.sync_api import sync_playwright

BASE = "http://127.0.0.1:3333"
# (file, page, viewport height, metadata key whose Markdown dialog to open; None: the full page)
PAGES = [
    ("ui_runs", "/runs", 700, None),
    ("ui_finetuned_model", "/assets/finetuned_model?partition={v}", 2600, None),
    ("ui_training_curves", "/assets/finetuned_model?partition={v}", 900, "training_curves"),
    ("ui_synthetic_qa", "/assets/synthetic_qa?partition={v}", 2600, None),
    ("ui_beir_report_checks", "/assets/beir_report?view=checks", 900, None),
    ("ui_beir_report_plot", "/assets/beir_report?partition={v}", 900, "plot"),
    ("ui_onnx_int8_checks", "/assets/onnx_int8_model?view=checks", 900, None),
]


def main(version: str, out: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.goto(BASE + "/runs")
        page.wait_for_timeout(4000)
        if page.get_by_role("button", name="Skip").count():
            page.get_by_role("button", name="Skip").click()
        for name, path, height, markdown_key in PAGES:
            page.set_viewport_size({"width": 1400, "height": height})
            page.goto(BASE + path.format(v=version))
            page.wait_for_timeout(6000)
            if markdown_key:
                page.locator("tr", has_text=markdown_key).first.get_by_text("Show Markdown").first.click()
                page.wait_for_timeout(2000)
            page.screenshot(path=f"{out}/{name}.png", full_page=markdown_key is None)
            print(name)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
