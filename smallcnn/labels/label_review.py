"""Acting on `smallcnn check --label-issues`: a page to review the flags, and a corrected
copy of the data set with the relabels a person accepted.

    smallcnn check DATA --label-issues --html review.html
    smallcnn check DATA --label-issues --fix DATA-fixed --accept accepted.txt

The page is `review_page.py`'s, the copy `corrected_copy.py`'s; this module runs the
analysis between the refusals that need none and what is written after it.
"""

from pathlib import Path

from smallcnn.data.table import TableOptions
from smallcnn.errors import UsageError
from smallcnn.labels.corrected_copy import accepted_relabels, check_fix, read_listed, write_fixed
from smallcnn.labels.review_page import review_page
from smallcnn.progress import Reporter

__all__ = ["accepted_relabels", "check_fix", "check_labels", "read_listed", "review_page",
           "write_fixed"]


def check_labels(data, settings=None, table=None, folds=None, html_out=None, fix=None,
                 accept=None, reporter=None):
    """`smallcnn check DATA --label-issues`: finds likely label errors and outliers, and
    writes the review page (`html_out`) and the corrected copy (`fix`, with the paths
    listed in `accept`), each if asked. Every refusal of --fix and --accept that needs no
    analysis comes before it; files that could not be copied are the reporter's warnings.

    Returns:
        `(report, dataset, written)`: the `LabelReport`, the data set, and the paths written.
    """
    from smallcnn.labels.label_issues import FOLDS, find_label_issues

    if (fix is None) != (accept is None):
        raise UsageError("--fix DIR and --accept FILE go together: the copy takes the "
                         "relabels listed in FILE.")
    if html_out is not None and Path(html_out).is_dir():
        raise UsageError(f"--html {str(html_out)!r} is a folder; name a file, such as "
                         "review.html.")
    reporter = reporter or Reporter()
    plan = {}

    def refuse_early(session):
        if fix is not None:
            plan["table"] = TableOptions.of(session.settings)
            check_fix(session.dataset, fix, plan["table"])
            plan["listed"] = read_listed(accept, session.dataset)

    report, dataset = find_label_issues(data, settings, table, folds or FOLDS,
                                        reporter=AfterCheck(reporter), before_data=refuse_early)
    relabels = None if fix is None else accepted_relabels(plan["listed"], report, accept)
    written = []
    if html_out is not None:
        written.append(review_page(report, html_out))
    if fix is not None:
        copy, left_out = write_fixed(dataset, relabels, fix, plan["table"])
        written.append(copy)
        for path, reason in left_out:
            reporter.warning(f"not in the --fix copy: {path} ({reason})")
    return report, dataset, written


class AfterCheck:
    """A reporter for the analysis that follows `smallcnn check`'s own tables: the data
    set and its check are not shown twice."""

    def __init__(self, reporter):
        self._reporter = reporter

    def dataset(self, dataset):
        pass

    def check(self, report):
        pass

    def __getattr__(self, name):
        return getattr(self._reporter, name)