"""`manage.py ui_screenshots --url URL`: save a screenshot of each main page to docs/screenshots/.

Run against a server with `seed_demo` data and the four demo users (`user add NAME --role
NAME --password P` for scheduler, technologist, radiologist, admin). `--advance-demo` first
moves some of today's demo exams along (arrived, MPPS, images accepted, reports signed)
through the workflow core, so every page has something to show.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from web import browser

PAGES = [
    # (file, user, path, language)
    ("login.png", None, "/login/", "en"),
    ("day-board.png", "scheduler", "/board/", "en"),
    ("scheduling-calendar.png", "scheduler", "/schedule/", "en"),
    ("order-entry.png", "scheduler", "/orders/new/?patient=1", "en"),
    ("exam-list.png", "scheduler", "/exams/", "en"),
    ("reconciliation.png", "scheduler", "/reconciliation/", "en"),
    ("settings.png", "scheduler", "/settings/", "en"),
    ("technologist.png", "technologist", "/technologist/?room=CT1", "en"),
    ("reading-list.png", "radiologist", "/reading/", "en"),
    ("interfaces.png", "admin", "/interfaces/", "en"),
    ("statistics.png", "admin", "/statistics/", "en"),
    ("day-board-vi.png", "scheduler", "/board/", "vi"),
    ("patients-vi.png", "scheduler", "/patients/?q=nguyen", "vi"),
]


class Command(BaseCommand):
    help = "Save screenshots of the main pages (headless Debian Chromium) to docs/screenshots/."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", default=f"http://127.0.0.1:{settings.RIS_HTTP_PORT}")
        parser.add_argument("--password", default="demo-pass-1")
        parser.add_argument("--out", default=str(settings.BASE_DIR / "docs" / "screenshots"))
        parser.add_argument("--advance-demo", action="store_true")

    def handle(self, *args, **options) -> None:
        if not browser.chromium_available():
            raise CommandError(f"{browser.CHROMIUM} not found: apt-get install chromium")
        if options["advance_demo"]:
            from web.demo import advance_demo

            self.stdout.write(advance_demo())
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        from playwright.sync_api import sync_playwright

        pages = PAGES + self.exam_pages()  # database first: the ORM refuses to run inside Playwright's loop
        with sync_playwright() as playwright:
            chromium = browser.launch(playwright)
            for name, user, path, language in pages:
                self.capture(chromium, options, out / name, user, path, language)
            chromium.close()

    def capture(self, chromium, options, target: Path, user, path: str, language: str) -> None:
        context = chromium.new_context(viewport={"width": 1440, "height": 900}, locale=language)
        context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": options["url"]}])
        page = context.new_page()
        if user:
            browser.log_in(page, options["url"], user, options["password"])
        page.goto(options["url"] + path)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(target), full_page=False)
        context.close()
        self.stdout.write(f"saved {target}")

    @staticmethod
    def exam_pages() -> list[tuple]:
        from ris.models import ExamStatus, RequestedProcedure

        def first(*statuses):
            return RequestedProcedure.objects.filter(status__in=statuses).order_by("id").first()

        pages = []
        if exam := first(ExamStatus.FINAL):
            pages.append(("exam-detail.png", "scheduler", f"/exams/{exam.accession_number}/", "en"))
            pages.append(("exam-detail-vi.png", "scheduler", f"/exams/{exam.accession_number}/", "vi"))
        if exam := first(ExamStatus.READY_FOR_READING, ExamStatus.FINAL):
            pages.append(("report-editor.png", "radiologist", f"/reading/{exam.accession_number}/", "en"))
        if exam := first(ExamStatus.ORDERED):
            pages.append(("schedule-exam.png", "scheduler", f"/exams/{exam.accession_number}/schedule/", "en"))
        return pages
