"""The study report of the 21-participant recovery study, as a reader opens it: in headless
Chromium from the file the ``study_report`` asset wrote beside the warehouse."""

import time

from kp_science.study_report import SECTIONS
from tests.system.browser import Browser


def test_the_report_opens_in_chromium_with_every_section_and_figure(recovery_study, tmp_path):
    study, warehouse = recovery_study
    report = warehouse / "study_report.html"  # written by the asset in the catalog run
    assert report.is_file()
    with Browser(width=1280, height=900) as browser:
        browser.watch_page()
        browser.open(report.as_uri())
        deadline = time.monotonic() + 60
        while browser.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, "the report never finished loading"
            time.sleep(0.2)
        text = browser.wait_for_text([heading for _, heading in SECTIONS])
        sections = browser.evaluate(
            "Array.from(document.querySelectorAll('section[id]')).map(s => s.id)"
        )
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
            "width: i.naturalWidth, src: i.src.slice(0, 22)}))"
        )
        # everything, folded sections too (innerText leaves closed <details> out)
        everything = browser.evaluate("document.body.textContent")
        browser.screenshot(tmp_path / "report.png")
        browser.evaluate("1")  # drain the events that arrived meanwhile
    assert sections == [section for section, _ in SECTIONS]
    assert browser.console_errors == []
    # self-contained: nothing but the page itself and its inline images was requested
    assert {url.split(":", 1)[0] for url in browser.requested_urls} <= {"file", "data"}
    # every figure is an image that loaded: the ROIs, each model's three plots, the DCM
    assert len(images) >= 8
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert all(i["src"] == "data:image/png;base64," for i in images)
    # the study's own participants and the paper's findings are on the page
    assert "126 runs of 21 participants" in text and "sub-21" in everything
    assert "improvement ~ increased vmPFC–amygdala connectivity during face viewing" in text
    assert (tmp_path / "report.png").stat().st_size > 10_000
