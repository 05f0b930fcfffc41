"""nbgrader's configuration for the adnotes labs. Run nbgrader from this folder (notebooks/labs/):
source/<lab>/ holds the instructor's notebooks, release/<lab>/ the student versions (see README.md)."""
c = get_config()  # noqa: F821 (nbgrader provides get_config)

c.CourseDirectory.course_id = "adnotes-labs"
# Lab 3 trains its models in one cell (about two minutes on a 2-core CPU): nbgrader's default cell
# timeout, 30 s, would cut it off during autograding.
c.Execute.timeout = 600
