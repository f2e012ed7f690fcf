"""The committed CPU evidence (``results/cpu-evidence/``) is what ``aletheia report`` makes of its
``results.csv``, and every number the README's results section quotes is in it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from aletheia.campaign.report import write_report

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "results" / "cpu-evidence"
DOCS = ("REPORT.md", "FORGETTING_DELTAS_ANALYSIS.md", "COMPUTE_MATCHED_ANALYSIS.md")
pytestmark = pytest.mark.skipif(not (BUNDLE / "results.csv").is_file(), reason="no evidence bundle committed")


def _tables(text: str) -> str:
    """The document without its generation time stamp."""
    return re.sub(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d \w+", "Generated <time>", text)


def test_the_bundle_regenerates_from_results_csv(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("figures", *DOCS))
    files = write_report(copy)
    for name in DOCS:
        assert _tables((copy / name).read_text()) == _tables((BUNDLE / name).read_text()), name
    assert {"speedup", "speedup_cost_aware", "compute_matched", "layer_budget"} <= set(files)
    assert (copy / "results.csv").read_text() == (BUNDLE / "results.csv").read_text()


def test_every_number_in_the_readme_results_is_in_the_bundle():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Results: CPU evidence campaign", 1)[1].split("\n## ", 1)[0]
    ours = re.sub(r"<!-- paper -->.*?<!-- /paper -->", "", section, flags=re.S)  # the paper's own numbers
    ours = re.sub(r"`[^`]*`", "", ours)  # commands and paths
    bundle = " ".join((BUNDLE / name).read_text() for name in (*DOCS, "RUN.md"))
    numbers = set(re.findall(r"(?<![\w.])[-+]?\d+\.\d+", ours))
    assert len(numbers) >= 10  # the section does quote the campaign
    missing = sorted(n for n in numbers if n not in bundle)
    assert not missing, f"README numbers not in results/cpu-evidence: {missing}"
