"""The run report (`momentumgs report RUN`): one self-contained HTML page with the training curves, the
partition, per-block figures, every test view beside its photo with an error map, and the evaluation.

`build.write_report` assembles it; `blocks` (the per-block table, also shown by the viewer), `curves`
(matplotlib figures), `views` (renders, error maps) and `page` (the HTML) are its parts. Importing this
package loads none of them, so the viewer can use `blocks` without matplotlib.
"""
