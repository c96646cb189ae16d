"""The labels themselves: likely label errors, outliers, and the review page and fix.

Owns confident learning on out-of-fold predictions (`label_issues`) and the review page and
corrected copy of `check --label-issues` (`label_review`, which runs `review_page` and
`corrected_copy`), and which unlabelled images to label next (`strategies`, on features
alone; `pool`, their features; `suggest`, with its page `suggest_page`). It may import everything below it
(`inference`, `runtime`, `data`, `model`, `train`'s feature source); not the CLI or the
server.
"""
