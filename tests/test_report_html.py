"""The Snakemake HTML report as a reader sees it: built over a finished run's tables and figures
(the committed default run's, with every other output an empty file) and rendered in headless
Chromium, whose page text must show every table, the figures and the claims that exist.
"""

from __future__ import annotations

import csv
import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, copy_workflow, planned_outputs, snakemake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COMMITTED = REPO / "docs/results/synthetic"
TABLES = [f"A{i}" for i in range(1, 9)]
CLAIM = "every table of the default run is in this report"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (`apt-get install chromium`; .ci/run does)"
)


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def finished_run(root: Path, *targets: str) -> None:
    """The outputs of `targets` as after a run: the committed tables and figures, a claims
    report with one claim, every other output an empty file, then `--touch` (Snakemake's
    record of a finished job)."""
    planned = snakemake(root, "-n", *targets)
    assert planned.returncode == 0, planned.stderr[-3000:]
    for path in planned_outputs(planned.stdout):
        target = root / path
        committed = COMMITTED / Path(path).parent.name / Path(path).name
        if path == "results/synthetic/data":
            target.mkdir(parents=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if committed.is_file() and Path(path).parent.name in ("tables", "figures"):
            shutil.copy(committed, target)
        elif path.endswith("claims.md"):
            target.write_text(f"# Claims\n\n- {CLAIM}\n")
        else:
            target.touch()
    assert snakemake(root, "--touch", *targets).returncode == 0


def page_text(root: Path, *targets: str) -> str:
    """`snakemake --report` over `targets` (as documented: no --cores), opened in Chromium: the
    text of the rendered page."""
    result = snakemake(root, "--report", "report.html", *targets, cores=None)
    assert result.returncode == 0, result.stderr[-3000:]
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
    dom = subprocess.run(
        [*browser, (root / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # What the page shows: the rendered elements, not the data the scripts carry.
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_report_shows_every_table_the_figures_and_the_claims(workflow_copy: Path) -> None:
    finished_run(workflow_copy, "tables", "figures")
    text = page_text(workflow_copy, "tables", "figures")
    for table in TABLES:
        title = yaml.safe_load((REPO / f"ablations/{table}.yaml").read_text())["title"]
        assert f"Table {table}. {title}" in text
        with (COMMITTED / f"tables/{table}.csv").open() as handle:
            first_row = list(csv.reader(handle))[1]
        assert " ".join(cell for cell in first_row if cell) in text, table
    assert "tables and figures" in text
    assert all(f"{name}.png" in text for name in ("A1", "A2", "A3"))
    assert "Claims" in text and CLAIM in text


def test_report_promises_no_figures_it_does_not_have(workflow_copy: Path) -> None:
    finished_run(workflow_copy, "tables")
    text = page_text(workflow_copy, "tables")
    assert "Table A3. Zero-shot Text-to-video Retrieval" in text
    assert "figures" not in text.lower().split("see docs/workflow.md")[0]
    assert ".png" not in text
    assert "Claims" in text and CLAIM in text  # `tables` builds the claims report
