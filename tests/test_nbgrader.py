"""The labs as an nbgrader course (notebooks/labs/): every student version is generated from its
source, the committed one equals a fresh generation and holds no solution, and autograding scores
the source (the instructor's solutions, handed in as a submission) with every autograded point and
the student version as released with none, without crashing.

All of it runs in a temporary copy of the course folder: nothing is written into the repository.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from adnotes.paths import cache_dir, data_dir

COURSE = Path(__file__).resolve().parents[1] / "notebooks" / "labs"
LABS = sorted(p.name for p in (COURSE / "source").iterdir() if (p / f"{p.name}.ipynb").is_file())


def _nbgrader(course: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"], cwd=course,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


class Course:
    """A copy of the course folder (its config and sources only) in which nbgrader runs."""

    def __init__(self, root: Path):
        self.root, self.generated = root, set()
        shutil.copy(COURSE / "nbgrader_config.py", root)
        shutil.copytree(COURSE / "source", root / "source")

    def generate(self, lab: str) -> Path:
        """The lab's student version, generated once."""
        if lab not in self.generated:
            _nbgrader(self.root, "generate_assignment", lab, "--force", timeout=300)
            self.generated.add(lab)
        return self.root / "release" / lab / f"{lab}.ipynb"


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return Course(tmp_path_factory.mktemp("course"))


def test_every_lab_is_a_source_folder_with_a_committed_release():
    assert len(LABS) >= 3
    for lab in LABS:
        assert (COURSE / "release" / lab / f"{lab}.ipynb").is_file(), f"release/{lab}: run nbgrader generate_assignment"


@pytest.mark.parametrize("lab", LABS)
def test_committed_release_is_a_fresh_generation_without_solutions(course, lab):
    fresh = course.generate(lab)
    committed = COURSE / "release" / lab / f"{lab}.ipynb"
    assert json.loads(committed.read_text()) == json.loads(fresh.read_text()), (
        f"release/{lab} differs from the source: cd notebooks/labs && nbgrader generate_assignment {lab} --force")
    text = committed.read_text()
    for secret in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "Model answer"):
        assert secret not in text, f"release/{lab} shows {secret!r}"
    nb = nbformat.read(committed, as_version=4)
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert answers and all("NotImplementedError()" in c.source or c.source == "YOUR ANSWER HERE" for c in answers)


def _autograde_env(home: Path) -> dict:
    """Quick mode, one thread, a home of its own whose data and feature cache are the real ones (no
    second extraction) but whose runs/ is fresh."""
    home.mkdir()
    for name, real in (("data", data_dir()), ("cache", cache_dir())):
        real.mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(real, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "ADNOTES_LABS_STRICT"}
    return env | {"ADNOTES_HOME": str(home), "ADNOTES_QUICK": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def _streams(nb) -> dict[str, str]:
    """Each code cell's printed text, by grade id (or cell id)."""
    return {c.metadata.get("nbgrader", {}).get("grade_id", c.get("id")):
            "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            for c in nb.cells if c.cell_type == "code"}


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS)
def test_autograde_gives_the_solutions_every_point_and_the_release_none(course, lab, tmp_path):
    from nbgrader.api import Gradebook

    release = course.generate(lab)
    for student, notebook in (("solution", course.root / "source" / lab / f"{lab}.ipynb"), ("blank", release)):
        (course.root / "submitted" / student / lab).mkdir(parents=True, exist_ok=True)
        shutil.copy(notebook, course.root / "submitted" / student / lab / f"{lab}.ipynb")
    env = _autograde_env(tmp_path / "home")
    result = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", lab, "--force", "--log-level=WARN"],
                            cwd=course.root, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"nbgrader autograde {lab} crashed:\n{result.stdout}\n{result.stderr}"

    with Gradebook(f"sqlite:///{course.root / 'gradebook.db'}") as gradebook:
        grades = {student: {g.name: (g.auto_score, g.max_score, g.needs_manual_grade)
                            for nb in gradebook.find_submission(lab, student).notebooks for g in nb.grades}
                  for student in ("solution", "blank")}
    written = {name for name, (_, _, manual) in grades["solution"].items() if manual}
    assert written, "the written answers wait for the instructor"
    lost = {name: (auto, top) for name, (auto, top, _) in grades["solution"].items()
            if name not in written and auto != top}
    assert not lost, f"the solutions lose autograded points: {lost}"
    assert {name: auto for name, (auto, _, _) in grades["blank"].items() if auto != 0} == {}, \
        "the release as handed out earns points"

    def autograded(student):
        return nbformat.read(course.root / "autograded" / student / lab / f"{lab}.ipynb", as_version=4)

    solved, blank = autograded("solution"), autograded("blank")
    errors = [(c.metadata.get("nbgrader", {}).get("grade_id", c.get("id")), o.ename)
              for c in solved.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"errors with the solutions: {errors}"
    checks = [name for name, text in _streams(solved).items() if text.startswith(("✓", "✗"))]
    assert checks and all(_streams(solved)[name].startswith("✓") for name in checks)
    assert all("not implemented yet" in _streams(blank)[name] for name in checks), \
        "every self-check of the release says 'not implemented yet'"
